"""Plain Python reward functions with TRL's calling convention, as `Reward`s.

    def my_reward(prompts, completions, **kwargs) -> list[float | None]: ...

`completions` are answer texts: the part of a response its answer rule scores (inside the
answer tags), or the text of a coalition of its segments; `prompts` are the tasks' user texts;
the keyword arguments carry the task's fields as lists (task_id, kind, query, targets, pool,
history) plus `responses`, the full generated texts. None means "not applicable to this
task". Every full response of a step goes to a function in one call and every coalition text
of the step in one more (deduplicated), so a function is called twice per step, not once per
coalition. Loading a function runs the code of its file: only list files you trust.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ospo_mlx.attribution.segment import scored_answer
from ospo_mlx.data.schema import Task
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward.base import CoalitionBatch, Reward
from ospo_mlx.reward.config import RewardConfig
from ospo_mlx.reward.retrieval import coalition_text

RewardFn = Callable[..., Sequence[Any]]


def load_function(spec: str) -> RewardFn:
    """The callable named by 'pkg.module:fn' or 'path/to/file.py:fn' (relative to the cwd)."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ConfigError(f"reward.functions: {spec!r} is not 'pkg.module:fn' or 'path/file.py:fn'")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(
                    f"reward.functions: {path} not found (relative paths start at {Path.cwd()})"
                )
            name = f"ospo_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses and pickling inside the file need it
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(f"reward.functions: cannot import {where!r} ({exc})") from None
    except Exception as exc:  # the user's module failed while loading: name it, one line
        first = (str(exc).splitlines() or [""])[0]
        raise OspoError(
            f"reward.functions: loading {where} raised {type(exc).__name__}: {first}"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward.functions: {where} has no function {attr!r}")
    return fn


def task_fields(tasks: Sequence[Task]) -> dict[str, list[Any]]:
    """The task columns passed as keyword arguments (one list entry per completion, as in TRL)."""
    return {
        "task_id": [t.id for t in tasks],
        "kind": [t.kind for t in tasks],
        "query": [t.query for t in tasks],
        "targets": [dict(t.targets) for t in tasks],
        "pool": [None if t.pool is None else list(t.pool) for t in tasks],
        "history": [[asdict(h) for h in t.history] for t in tasks],
    }


class FunctionReward(Reward):
    """A TRL-style reward function as a `Reward`; non-finite values count and score 0."""

    def __init__(
        self,
        fn: RewardFn,
        config: RewardConfig | None = None,
        *,
        name: str | None = None,
        prompt_of: Callable[[Task], str] | None = None,
    ):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.config = config or RewardConfig()
        # The prompt a function sees: the task's user text (the trainer passes its own renderer).
        self.prompt_of = prompt_of or (lambda task: task.query or "")
        self.calls = 0
        self._nonfinite = 0

    def scored(self, response: str) -> tuple[str | None, str]:
        c = self.config
        return scored_answer(response, c.answer_tags, c.missing_tags, c.unclosed_answer)

    def counts(self) -> dict[str, float]:
        out, self._nonfinite = {"nonfinite": float(self._nonfinite)}, 0
        return out

    def _call(self, completions: list[str], tasks: list[Task], responses: list[str]) -> np.ndarray:
        """One call of the function over unique (completion, task) rows; NaN where it says None."""
        key = [(c, t.id) for c, t in zip(completions, tasks, strict=True)]
        unique = list(dict.fromkeys(key))
        at = {k: i for i, k in enumerate(unique)}
        first = {}
        for i, k in enumerate(key):
            first.setdefault(k, i)
        rows = [first[k] for k in unique]
        utasks = [tasks[i] for i in rows]
        if not unique:
            return np.zeros(0)
        self.calls += 1
        try:
            got = self.fn(
                prompts=[self.prompt_of(t) for t in utasks],
                completions=[completions[i] for i in rows],
                responses=[responses[i] for i in rows],
                **task_fields(utasks),
            )
        except Exception as exc:  # the user's code: one line naming the function, no traceback
            first_line = (str(exc).splitlines() or [""])[0]
            raise OspoError(
                f"reward function '{self.name}' raised {type(exc).__name__}: {first_line}"
            ) from None
        values = self._check(got, len(unique))
        return values[[at[k] for k in key]]

    def _check(self, got: Any, n: int) -> np.ndarray:
        if isinstance(got, np.ndarray):
            got = got.tolist()
        if not isinstance(got, (list, tuple)) or len(got) != n:
            size = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
            raise OspoError(
                f"reward function '{self.name}' returned {size} for {n} completions; "
                "return a list with one float (or None) per completion"
            )
        out = np.empty(n, dtype=np.float64)
        for i, v in enumerate(got):
            if v is None:
                out[i] = np.nan
            elif isinstance(v, numbers.Real) and not isinstance(v, bool):
                if math.isfinite(float(v)):
                    out[i] = float(v)
                else:  # counted (rewards/<name>/nonfinite) and scored 0, never dropped
                    self._nonfinite += 1
                    out[i] = 0.0
            else:
                raise OspoError(
                    f"reward function '{self.name}' returned a {type(v).__name__} at row {i}; "
                    "return a float (or None: not applicable) per completion"
                )
        return out

    def score(self, responses: Sequence[str], tasks: Sequence[Task]) -> np.ndarray:
        """Scores of full responses; a response the answer rule zeroes gets 0 without a call."""
        if len(responses) != len(tasks):
            raise ValueError(f"{len(responses)} responses but {len(tasks)} tasks")
        answers = [self.scored(r)[0] for r in responses]
        out = np.zeros(len(responses))
        todo = [i for i, a in enumerate(answers) if a is not None]
        if todo:
            out[todo] = self._call(
                [answers[i] for i in todo], [tasks[i] for i in todo], [responses[i] for i in todo]
            )
        return out

    def coalition_texts(
        self, response: str, spans: Sequence[tuple[int, int]], masks: np.ndarray, task: Task
    ) -> list[str | None]:
        """The answer text of each coalition (no query prefix); "" for the empty coalition."""
        masks = np.asarray(masks, dtype=bool).reshape(-1, len(spans))
        return [coalition_text(response, spans, m, self.config.coalition_text) for m in masks]

    def _coalition_scores(self, batch: CoalitionBatch) -> np.ndarray:
        """v(S) = fn(text of S) for every coalition of the batch, in one call; v(empty) = fn("")."""
        rows = batch.rows
        return self._call(
            [t or "" for t in batch.texts],
            [batch.tasks[i] for i in rows],
            [batch.responses[i] for i in rows],
        )

    def metrics(self, responses: Sequence[str], tasks: Sequence[Task]) -> dict[str, np.ndarray]:
        return {self.name: self.score(responses, tasks)}
