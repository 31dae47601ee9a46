"""Sampled groups and the DAPO group filter (`optim.dynamic_sampling`).

A `Groups` holds one rank's sampled and scored completions, prompt-major (G per group). The
`GroupFilter` collects them over sampling passes: groups whose rewards are all equal have
zero advantage under every scaling (no signal), so dynamic sampling drops them and draws more
prompts until the generation batch is full, up to a cap of passes. Pure bookkeeping over
lists and NumPy arrays (no model), so each rule is tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ospo_mlx.train.bookkeeping import sanitize_rewards, zero_std_groups


@dataclass
class Groups:
    """Scored groups of one rank: per-group prompts, per-completion samples and raw rewards."""

    group_size: int
    task_indices: list[int] = field(default_factory=list)  # per group
    prompts: list[list[int]] = field(default_factory=list)  # per group
    texts: list[str] = field(default_factory=list)  # per completion, from here on
    ids: list[list[int]] = field(default_factory=list)
    offsets: list[Any] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    raw_rewards: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # each reward's per-completion scores by name (CombinedReward.score_parts), kept alongside
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_groups(self) -> int:
        return len(self.task_indices)

    def flat(self) -> np.ndarray:
        """(num_groups,) bool: groups whose (sanitized) rewards are all equal."""
        if not self.num_groups:
            return np.zeros(0, dtype=bool)
        return zero_std_groups(sanitize_rewards(self.raw_rewards)[0], self.group_size)

    def select(self, groups: Sequence[int]) -> Groups:
        """These groups, in this order."""
        g = self.group_size
        rows = [i * g + m for i in groups for m in range(g)]
        return Groups(
            g,
            [self.task_indices[i] for i in groups],
            [self.prompts[i] for i in groups],
            [self.texts[r] for r in rows],
            [self.ids[r] for r in rows],
            [self.offsets[r] for r in rows],
            [self.finished[r] for r in rows],
            np.asarray(self.raw_rewards, dtype=np.float64)[rows],
            {name: np.asarray(v, dtype=np.float64)[rows] for name, v in self.parts.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Groups], group_size: int) -> Groups:
        out = Groups(group_size)
        for p in parts:
            out.task_indices += p.task_indices
            out.prompts += p.prompts
            out.texts += p.texts
            out.ids += p.ids
            out.offsets += p.offsets
            out.finished += p.finished
        rewards = [np.asarray(p.raw_rewards, dtype=np.float64) for p in parts]
        out.raw_rewards = np.concatenate(rewards) if rewards else np.zeros(0)
        names = list(dict.fromkeys(name for p in parts for name in p.parts))
        # a part without a reward's scores (not scored by it) reads as "not applicable": NaN
        out.parts = {
            name: np.concatenate([
                np.asarray(p.parts.get(name, np.full(len(p.texts), np.nan)), dtype=np.float64)
                for p in parts
            ])
            for name in names
        }  # fmt: skip
        return out


@dataclass
class GroupFilter:
    """Collects `need` groups over sampling passes; with `enabled`, groups with signal first.

    Disabled, it keeps every group of the first pass (one pass is all a step draws). Enabled,
    flat groups are set aside; `finish` returns the first `need` groups with signal, filled up
    with set-aside flat groups (in draw order) when the passes ran out, plus the counts.
    """

    need: int
    group_size: int
    enabled: bool = True
    draws: int = 0
    _kept: list[Groups] = field(default_factory=list)
    _flat: list[Groups] = field(default_factory=list)

    def add(self, groups: Groups) -> None:
        self.draws += 1
        if not self.enabled:
            self._kept.append(groups)
            return
        flat = groups.flat()
        self._kept.append(groups.select(np.flatnonzero(~flat).tolist()))
        self._flat.append(groups.select(np.flatnonzero(flat).tolist()))

    @property
    def kept(self) -> int:
        return sum(p.num_groups for p in self._kept)

    @property
    def full(self) -> bool:
        return self.kept >= self.need

    def finish(self) -> tuple[Groups, dict[str, float]]:
        """(the generation batch of exactly `need` groups, dynamic_sampling/* counts)."""
        kept = Groups.concat(self._kept, self.group_size)
        flat = Groups.concat(self._flat, self.group_size)
        take = min(kept.num_groups, self.need)
        refill = self.need - take
        if refill > flat.num_groups:
            raise ValueError(
                f"{self.need} groups needed, only {kept.num_groups + flat.num_groups} drawn"
            )
        batch = Groups.concat(
            [kept.select(range(take)), flat.select(range(refill))], self.group_size
        )
        metrics = {
            "dynamic_sampling/draws": float(self.draws),
            "dynamic_sampling/dropped_groups": float(flat.num_groups - refill),
            "dynamic_sampling/refilled_groups": float(refill),
            "dynamic_sampling/unused_groups": float(kept.num_groups - take),
        }
        return batch, metrics
