"""One step's credit assignment: segments, coalitions, their values, segment values, weights.

A pure function of the completions, their advantages, the reward and a random generator; the
trainer calls it on the completions of its own rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import budget, estimate, sample_coalitions
from ospo_mlx.attribution.segment import SegmenterConfig, segment
from ospo_mlx.attribution.surrogate import stand_in_games
from ospo_mlx.data.schema import Task


@dataclass
class Attribution:
    """Per-completion credit: segments, evaluated coalitions and their values, Owen values, weights."""

    segments: list[list[tuple[int, int]]]
    coalitions: list[np.ndarray]
    values: list[np.ndarray]
    owen: list[np.ndarray]
    weights: list[np.ndarray]
    in_segments: list[np.ndarray]  # (T_i,) bool: tokens that overlap a segment
    evaluated: int = 0
    unpaired: list[int] = field(default_factory=list)  # per completion: segments left at 0
    budget_raised: list[bool] = field(default_factory=list)  # budget raised to n + 2
    exact: list[bool] = field(default_factory=list)  # all 2^n coalitions evaluated
    surrogate: list[bool] = field(default_factory=list)  # stand-in game as control variate

    def select(self, rows: slice) -> Attribution:
        """The credit of the completions in `rows` (one optimizer step of a generation)."""
        coalitions = self.coalitions[rows]
        return Attribution(
            self.segments[rows], coalitions, self.values[rows], self.owen[rows],
            self.weights[rows], self.in_segments[rows],
            evaluated=sum(len(m) for m in coalitions), unpaired=self.unpaired[rows],
            budget_raised=self.budget_raised[rows], exact=self.exact[rows],
            surrogate=self.surrogate[rows],
        )  # fmt: skip

    @staticmethod
    def empty_metrics() -> dict[str, float]:
        """The credit metrics of a step without attribution (GRPO): all zero."""
        return Attribution([], [], [], [], [], []).metrics()

    def metrics(self, rows: slice = slice(None)) -> dict[str, float]:
        """The credit metrics of the completions in `rows` (all by default)."""
        return {
            "ospo/unpaired_segments": float(sum(self.unpaired[rows])),
            "ospo/budget_raised": float(sum(self.budget_raised[rows])),
            "ospo/exact_values": float(sum(self.exact[rows])),
            "ospo/surrogate_values": float(sum(self.surrogate[rows])),
            "ospo/credit_concentration": self.concentration(rows),
        }

    def concentration(self, rows: slice = slice(None)) -> float:
        """Mean share of the top segment in sum |phi| over the attributed completions.

        1 means all the credit went to one segment; 1/n means it was spread evenly.
        """
        shares = [
            float(np.max(np.abs(o)) / np.abs(o).sum())
            for o, v in zip(self.owen[rows], self.values[rows], strict=True)
            if len(v) and np.abs(o).sum() > 0
        ]
        return float(np.mean(shares)) if shares else 0.0


def attribute(
    texts: list[str],
    offsets: list[Any],
    tasks: list[Task],
    advantages: np.ndarray,
    active: np.ndarray,
    *,
    segmenter: SegmenterConfig,
    reward: Any,
    config: AttributionConfig,
    rng: np.random.Generator,
) -> Attribution:
    """Segments, coalitions, values, segment values and token weights for each completion.

    Completions with `active` False (zero advantage, a zero reward, or a format-zeroed answer:
    nothing to redistribute) keep their segments but evaluate no coalitions; their weights are
    uniform. The sign of `advantages` picks the weights under `config.negative_advantage`.
    """
    a = config
    spans = [segment(t, config=segmenter) for t in texts]
    masks = []
    raised = []
    for i, s in enumerate(spans):
        if active[i] and s:
            masks.append(sample_coalitions(len(s), a, rng))
            raised.append(budget(len(s), a) > a.max_coalitions)
        else:
            masks.append(np.zeros((0, len(s)), dtype=bool))
            raised.append(False)
    todo = [i for i, m in enumerate(masks) if len(m)]
    values: list[np.ndarray] = [np.zeros(0) for _ in texts]
    if todo:
        got = reward.coalition_values(
            [texts[i] for i in todo],
            [spans[i] for i in todo],
            [masks[i] for i in todo],
            [tasks[i] for i in todo],
        )
        for i, v in zip(todo, got, strict=True):
            values[i] = np.asarray(v, dtype=np.float64)
    games = stand_in_games(reward, texts, spans, masks, tasks, a, rng)
    owen, weights, in_segments = [], [], []
    unpaired, exact, surrogate = [0] * len(texts), [False] * len(texts), [False] * len(texts)
    for i, s in enumerate(spans):
        token_spans = np.asarray(offsets[i]).reshape(-1, 2)
        if len(masks[i]):
            est = estimate(masks[i], values[i], a, games[i])
            phi, unpaired[i], exact[i], surrogate[i] = est.phi, est.unpaired, est.exact, est.surrogate
            signed = credit.signed_values(phi, float(advantages[i]), a.negative_advantage)
            w = credit.token_weights(s, token_spans, signed, a.floor, a.normalize, a.temperature)
        else:
            phi = np.ones(len(s))
            w = credit.token_weights(s, token_spans, phi, a.floor, "minmax")  # uniform
        owen.append(np.asarray(phi, dtype=np.float64))
        weights.append(w)
        in_segments.append(credit.segment_token_mask(s, token_spans))
    evaluated = sum(len(masks[i]) for i in todo)
    return Attribution(
        spans, masks, values, owen, weights, in_segments,
        evaluated=evaluated, unpaired=unpaired, budget_raised=raised, exact=exact,
        surrogate=surrogate,
    )  # fmt: skip
