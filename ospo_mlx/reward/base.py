"""The `Reward` interface and `CombinedReward`, the weighted sum the trainer optimizes.

Segment credit needs only v(S) = reward(text of coalition S), so any reward that can score a
batch of texts can be attributed. A reward scores full responses (`score`), scores every
coalition of a batch in one call (`coalition_values`), and says which answer rule applies
(`scored`: the text it scores and a format status). NaN in `score` means "not applicable to
this task" (TRL's None): the weighted sum skips it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ospo_mlx.data.schema import Task
from ospo_mlx.errors import ConfigError


@dataclass
class CoalitionBatch:
    """Every coalition text of a batch; `rows[j]` is the response (and task) of text j."""

    texts: list[str | None]
    rows: np.ndarray
    responses: Sequence[str]
    tasks: Sequence[Task]


class Reward:
    """What the trainer, `ospo attribute` and `ospo eval` need from a reward.

    Subclass it (or duck-type the same methods). Subclasses implement `score`, `scored` and
    the two coalition hooks; `coalition_values` then evaluates every coalition of a batch with
    one `_coalition_scores` call.
    """

    name: str = "reward"  # metrics are logged as rewards/<name>/mean and rewards/<name>/std

    def score(self, responses: Sequence[str], tasks: Sequence[Task]) -> np.ndarray:
        """(B,) reward of each full response; NaN where the reward does not apply to the task."""
        raise NotImplementedError

    def scored(self, response: str) -> tuple[str | None, str]:
        """(scored text or None when the format rule gives 0, status: ok/missing_tags/unclosed)."""
        raise NotImplementedError

    def counts(self) -> dict[str, float]:
        """Counters since the last call (e.g. non-finite values), reset on read."""
        return {}

    def coalition_texts(
        self, response: str, spans: Sequence[tuple[int, int]], masks: np.ndarray, task: Task
    ) -> list[str | None]:
        """The text the reward scores for each coalition row of `masks (C, n)`."""
        raise NotImplementedError

    def _coalition_scores(self, batch: CoalitionBatch) -> np.ndarray:
        """Values of all coalition texts of a batch, in one evaluation."""
        raise NotImplementedError

    def coalition_values(
        self,
        responses: Sequence[str],
        segments: Sequence[Sequence[tuple[int, int]]],
        coalition_masks: Sequence[np.ndarray],
        tasks: Sequence[Task],
    ) -> list[np.ndarray]:
        """v(S) (C_i,) for every coalition row of every response, evaluated in one batch."""
        if not (len(responses) == len(segments) == len(coalition_masks) == len(tasks)):
            raise ValueError(
                "responses, segments, coalition_masks and tasks must have the same length"
            )
        texts: list[str | None] = []
        rows: list[int] = []
        sizes = []
        for i, (resp, spans, masks, task) in enumerate(
            zip(responses, segments, coalition_masks, tasks, strict=True)
        ):
            got = self.coalition_texts(resp, spans, masks, task)
            texts += got
            rows += [i] * len(got)
            sizes.append(len(got))
        if not sizes:
            return []
        batch = CoalitionBatch(texts, np.array(rows, dtype=np.int64), responses, tasks)
        values = self._coalition_scores(batch)
        return np.split(values, np.cumsum(sizes)[:-1])


class CombinedReward(Reward):
    """sum_k w_k * reward_k, for full responses and for coalitions alike.

    Rewards returning NaN for a row (not applicable) are left out of that row's sum; a row
    where every reward is NaN gets NaN (the trainer counts it in reward/nonfinite and uses 0).
    Coalition values of such rows are 0 (counted in `counts()['none_coalitions']`).
    """

    name = "reward"

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float] | None = None):
        if not rewards:
            raise ConfigError("no reward to train with: enable the retrieval reward or a function")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        if len(weights) != len(rewards):
            raise ConfigError(f"{len(weights)} reward weights for {len(rewards)} rewards")
        names = [r.name for r in rewards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(
                f"two rewards are named {dupes[0]!r}; give each function a distinct name"
            )
        self.rewards, self.weights = list(rewards), weights
        self._none_coalitions = 0

    def __getitem__(self, name: str) -> Reward:
        return next(r for r in self.rewards if r.name == name)

    @property
    def retrieval(self):
        """The RetrievalReward among the parts, or None (ndcg@10 is logged only with one)."""
        from ospo_mlx.reward.retrieval import RetrievalReward

        return next((r for r in self.rewards if isinstance(r, RetrievalReward)), None)

    def scored(self, response: str) -> tuple[str | None, str]:
        # Every part is built from the same reward section, so they share one answer rule.
        return self.rewards[0].scored(response)

    def combine(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """Weighted sum over the parts that apply (non-NaN) per row; NaN where none applies."""
        stack = np.stack([np.asarray(p, dtype=np.float64) for p in parts])
        w = np.asarray(self.weights, dtype=np.float64)[:, None]
        applies = ~np.isnan(stack)
        total = np.where(applies, stack * w, 0.0).sum(axis=0)
        return np.where(applies.any(axis=0), total, np.nan)

    def score_parts(self, responses: Sequence[str], tasks: Sequence[Task]) -> dict[str, np.ndarray]:
        """Each part's (B,) scores by name (NaN = not applicable)."""
        return {
            r.name: np.asarray(r.score(responses, tasks), dtype=np.float64) for r in self.rewards
        }

    def score(self, responses: Sequence[str], tasks: Sequence[Task]) -> np.ndarray:
        return self.combine(list(self.score_parts(responses, tasks).values()))

    def coalition_values(self, *batch: Sequence[Any]) -> list[np.ndarray]:
        """sum_k w_k v_k(S) per coalition; arguments as `Reward.coalition_values`."""
        per_reward = [r.coalition_values(*batch) for r in self.rewards]
        out = []
        for i in range(len(batch[0])):
            v = self.combine([values[i] for values in per_reward])
            none = np.isnan(v)
            self._none_coalitions += int(none.sum())
            out.append(np.where(none, 0.0, v))
        return out

    def surrogate_values(self, *batch: Sequence[Any]) -> list[np.ndarray | None]:
        """sum_k w_k v~_k(S): the parts' stand-in games (arguments as `coalition_values`, the
        masks being the stand-in coalitions); None for a response where a part has none."""
        per_reward = []
        for r in self.rewards:
            get = getattr(r, "surrogate_values", None)
            if get is None:
                return [None] * len(batch[0])
            per_reward.append(get(*batch))
        out: list[np.ndarray | None] = []
        for i in range(len(batch[0])):
            parts = [values[i] for values in per_reward]
            out.append(None if any(p is None for p in parts) else np.nan_to_num(self.combine(parts)))
        return out

    def metrics(self, responses: Sequence[str], tasks: Sequence[Task]) -> dict[str, np.ndarray]:
        """Each part's evaluation metrics (the retrieval reward's ndcg@10, ...), plus each score."""
        out: dict[str, np.ndarray] = {}
        for r in self.rewards:
            get = getattr(r, "metrics", None)
            out.update(get(responses, tasks) if get else {r.name: r.score(responses, tasks)})
        return out

    def counts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.rewards:
            get = getattr(r, "counts", None)
            out.update({f"rewards/{r.name}/{k}": v for k, v in (get() if get else {}).items()})
        out["rewards/none_coalitions"], self._none_coalitions = float(self._none_coalitions), 0
        return out


def part_metrics(parts: dict[str, np.ndarray]) -> dict[str, float]:
    """rewards/<name>/mean and /std over the rows each part applies to, /none: rows it skipped."""
    out: dict[str, float] = {}
    for name, values in parts.items():
        values = np.asarray(values, dtype=np.float64)
        applies = values[np.isfinite(values)]  # inf is counted by the trainer (reward/nonfinite)
        out[f"rewards/{name}/mean"] = float(applies.mean()) if applies.size else 0.0
        out[f"rewards/{name}/std"] = float(applies.std()) if applies.size else 0.0
        out[f"rewards/{name}/none"] = float(np.isnan(values).sum())
    return out
