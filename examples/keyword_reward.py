"""A custom reward for `ospo train`: query-keyword coverage, length-aware.

TRL's calling convention: `fn(prompts, completions, **kwargs) -> list[float | None]`, where the
keyword arguments carry the task's fields as lists (`query`, `kind`, `targets`, `task_id`, ...).
ospo calls it with the answer text of each completion (inside <answer> tags) and, for OSPO's
credit, with the text of every coalition of answer segments, so the inspector shows which
words earned it.

    ospo train -c configs/demo.yaml \
        --set reward.functions=examples/keyword_reward.py:keyword_coverage \
        --set reward.weights=[0.5]

Loading this file runs it: list only reward files you trust (docs/reliability.md).
"""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+")


def keyword_coverage(prompts, completions, query=None, **kwargs):
    """Share of the query's words the answer keeps, divided by 1 + 0.1 x words beyond 3x the query.

    None (not applicable) for tasks without a query, e.g. shopper profiles.
    """
    queries = query or [None] * len(completions)
    out = []
    for text, q in zip(completions, queries, strict=True):
        terms = set(WORD.findall((q or "").lower()))
        if not terms:
            out.append(None)
            continue
        words = WORD.findall(text.lower())
        covered = len(terms & set(words)) / len(terms)
        extra = max(len(words) - 3 * len(terms), 0)  # rambling dilutes the answer
        out.append(covered / (1.0 + 0.1 * extra))
    return out
