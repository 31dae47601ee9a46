"""One step's credit assignment: segments, coalitions, their values, Owen values, token weights.

A pure function of the completions, the reward and a random generator; the trainer calls it
on the completions of its own rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.reference import contiguous_coalitions, owen_contiguous
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


def attribute(
    texts: list[str],
    offsets: list[Any],
    tasks: list[Task],
    active: np.ndarray,
    *,
    segmenter: SegmenterConfig,
    reward: Any,
    config: Any,
    rng: np.random.Generator,
) -> Attribution:
    """Segments, coalitions, values, Owen values and token weights for each completion.

    Completions with `active` False (zero advantage: nothing to redistribute) keep their
    segments but evaluate no coalitions; their weights are uniform.
    """
    a = config
    spans = [segment(t, config=segmenter) for t in texts]
    masks = []
    for i, s in enumerate(spans):
        if active[i] and s:
            masks.append(contiguous_coalitions(len(s), a.max_width, a.max_coalitions, rng))
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
    for i, s in enumerate(spans):
        phi = owen_contiguous(masks[i], values[i]) if len(masks[i]) else np.ones(len(s))
        owen.append(np.asarray(phi, dtype=np.float64))
        token_spans = np.asarray(offsets[i]).reshape(-1, 2)
        weights.append(credit.token_weights(s, token_spans, phi, a.floor))
        in_segments.append(credit.segment_token_mask(s, token_spans))
    evaluated = sum(len(masks[i]) for i in todo)
    return Attribution(spans, masks, values, owen, weights, in_segments, evaluated=evaluated)
