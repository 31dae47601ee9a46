"""One step's credit assignment: segments, coalitions, their values, segment values, weights.

A pure function of the completions, their advantages, the reward and a random generator; the
trainer calls it on the completions of its own rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import budget, estimate, sample_coalitions
from ospo_mlx.attribution.segment import SegmenterConfig, segment
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
    unpaired: int = 0  # segments whose value no evaluated pair measured (left at 0)
    budget_raised: int = 0  # completions whose coalition budget was raised to n + 2
    exact: int = 0  # completions whose values are exact (all 2^n coalitions evaluated)

    def concentration(self) -> float:
        """Mean share of the top segment in each attributed completion's segment weights.

        1 means all the credit went to one segment; 1/n means it was spread evenly.
        """
        shares = [
            float(np.max(w) / w.sum())
            for w, v in zip(self.segment_weights(), self.values, strict=True)
            if len(v) and w.sum() > 0
        ]
        return float(np.mean(shares)) if shares else 0.0

    def segment_weights(self) -> list[np.ndarray]:
        """|phi| per segment (a scale-free view of where the credit went)."""
        return [np.abs(np.asarray(o, dtype=np.float64)) for o in self.owen]


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
    raised = 0
    for i, s in enumerate(spans):
        if active[i] and s:
            masks.append(sample_coalitions(len(s), a, rng))
            raised += int(budget(len(s), a) > a.max_coalitions)
        else:
            masks.append(np.zeros((0, len(s)), dtype=bool))
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
    owen, weights, in_segments = [], [], []
    unpaired = exact = 0
    for i, s in enumerate(spans):
        token_spans = np.asarray(offsets[i]).reshape(-1, 2)
        if len(masks[i]):
            est = estimate(masks[i], values[i], a)
            phi, unpaired, exact = est.phi, unpaired + est.unpaired, exact + int(est.exact)
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
    )  # fmt: skip
