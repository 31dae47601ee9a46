"""Attribute one response: segments -> coalitions -> v(S) (one batched pass) -> segment values.

The library side of `ospo attribute`; the trainer does the same for whole batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ospo_mlx.attribution import segment
from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import estimate, sample_coalitions
from ospo_mlx.attribution.surrogate import stand_in_games
from ospo_mlx.data.schema import Task
from ospo_mlx.errors import OspoError
from ospo_mlx.reward.retrieval import RetrievalReward


@dataclass
class Attribution:
    """One response's attribution game, evaluated."""

    response: str
    spans: list[tuple[int, int]]
    segment_texts: list[str]
    masks: np.ndarray  # (C, n) bool
    coalition_texts: list[str]  # retrieval text of each coalition ("" where v is 0 by definition)
    values: np.ndarray  # (C,)
    owen: np.ndarray  # (n,)
    unpaired: int  # players with no evaluated (S, S u {j}) pair: their Owen value is 0
    reward: float  # the full response's reward
    exact: bool = False  # every coalition was evaluated: exact Shapley values
    surrogate: bool = False  # the stand-in game served as a control variate

    @property
    def baseline(self) -> float:
        """v(empty): the score with no answer (the query alone when it is prepended)."""
        empty = ~self.masks.any(1)
        return float(self.values[empty][0]) if empty.any() else 0.0

    @property
    def members(self) -> list[list[int]]:
        return [np.flatnonzero(m).tolist() for m in self.masks]


def attribute_response(
    reward: RetrievalReward,
    response: str,
    task: Task,
    config: AttributionConfig | None = None,
    *,
    seed: int = 0,
) -> Attribution:
    """Segment `response`, evaluate its coalitions and estimate each segment's value."""
    config = (config or AttributionConfig()).validate()
    spans = [
        tuple(s)
        for s in segment(response, config.segmenter, answer_tags=reward.config.answer_tags)
    ]
    if not spans:
        raise OspoError("the response has no segments to attribute; pass a non-empty --response")
    rng = np.random.default_rng(seed)
    masks = sample_coalitions(len(spans), config, rng)
    values = reward.coalition_values([response], [spans], [masks], [task])[0]
    texts = [t or "" for t in reward.coalition_texts(response, spans, masks, task)]
    game = stand_in_games(reward, [response], [spans], [masks], [task], config, rng)[0]
    est = estimate(masks, values, config, game)
    return Attribution(
        response=response,
        spans=spans,
        segment_texts=[response[s:e] for s, e in spans],
        masks=masks,
        coalition_texts=texts,
        values=values,
        owen=est.phi,
        unpaired=est.unpaired,
        reward=float(reward.score([response], [task])[0]),
        exact=est.exact,
        surrogate=est.surrogate,
    )


def token_counts(reward: RetrievalReward, texts: list[str]) -> list[int]:
    """Encoder tokens per text (words for retrievers without a tokenizer)."""
    encoder = getattr(reward.retriever, "encoder", None)
    if encoder is None:
        return [len(t.split()) for t in texts]
    return [max(len(ids) - 2, 0) for ids, _ in encoder.tokenize(texts)]  # minus [CLS] and [SEP]
