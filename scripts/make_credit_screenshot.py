"""Write docs/credit_planted.svg: one planted answer's credit, with the old and the fixed baseline.

A synthetic task whose relevance is decided by a hidden attribute; the answer names that
attribute among distractors. The segment tables and the credit check line are the ones
`ospo attribute` and `ospo inspect` print. Left as it was: v(empty) = 0 while the query is
prepended (the old default) with the paper's contiguous estimator at 16 coalitions; right: the
defaults now.

    python scripts/make_credit_screenshot.py [--out docs/credit_planted.svg]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
import numpy as np
from rich.console import Console, Group
from rich.text import Text

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import estimate, sample_coalitions
from ospo_mlx.attribution.segment import segment
from ospo_mlx.data.synthetic import SyntheticConfig, generate
from ospo_mlx.reward.coalitions import token_counts
from ospo_mlx.reward.retrieval import RewardConfig, build_reward
from ospo_mlx.ui.renderables import credit_check, segment_table
# isort: on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/credit_planted.svg")
    args = parser.parse_args()
    products, tasks, report = generate(SyntheticConfig(n_train=1, n_test=0, seed=7))
    task, hidden = tasks[0], report.extra["hidden_intents"][tasks[0].id]
    response = (
        f"<answer>great price, {hidden['material']}, fast delivery, carbon fiber plate, "
        "gift idea</answer>"
    )
    reward = build_reward({p.product_id: p for p in products}, RewardConfig())
    spans = segment(response, "phrase")
    texts = [response[s:e] for s, e in spans]
    counts = token_counts(reward, texts)
    views = [Text.assemble(("query ", "dim"), task.query or ""), Text(response)]
    settings = [
        ("before: v(∅) = 0, contiguous, 16 coalitions", AttributionConfig(
            estimator="contiguous", max_coalitions=16), True),
        ("now: v(∅) = the query's score, exact Shapley", AttributionConfig(), False),
    ]  # fmt: skip
    for title, config, empty_zero in settings:
        masks = sample_coalitions(len(spans), config, np.random.default_rng(0))
        values = reward.coalition_values([response], [spans], [masks], [task])[0]
        if empty_zero:
            values[~masks.any(1)] = 0.0
        phi = estimate(masks, values, config).phi
        members = [np.flatnonzero(m).tolist() for m in masks]
        views += [
            Text(),
            segment_table(texts, phi, counts, sort_by="owen", title=title),
            credit_check(phi, members, values),
        ]
    console = Console(record=True, width=110, force_terminal=True)
    console.print(Group(*views))
    console.save_svg(args.out, title="ospo: credit of a planted answer")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
