"""A stand-in game as a control variate for the kernel Shapley estimate (NumPy reference).

Scoring a coalition means encoding its text, so a completion gets a few dozen coalitions.
A dense retriever's pooled states are nearly additive over a text's tokens, which gives a game
that costs no encoding at all: the pooled sum of "query + segment j" minus that of the query
alone is segment j's contribution, and the stand-in value of a coalition S is the reward of

    normalize(P(empty) + sum_{j in S} (P({j}) - P(empty)))

ranked like any query. It equals v at the empty coalition and every singleton (texts the
estimator scores anyway), and is evaluated on all 2^n coalitions (or a large sample). Shapley
values are linear in the game, so

    phi(v) = phi(v~) + phi(v - v~),

with phi(v~) computed (near) exactly and only the residual v - v~ estimated from the sampled
coalitions. The estimate stays consistent whatever v~ is; a v~ close to v shrinks its error
(bench/fidelity.py measures by how much).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import MAX_EXACT_PLAYERS, kernel_shapley
from ospo_mlx.attribution.reference import shapley_exact


@dataclass(frozen=True)
class SurrogateGame:
    """Stand-in values `values (K,)` on the coalitions `masks (K, n)` of one completion."""

    masks: np.ndarray
    values: np.ndarray

    @property
    def complete(self) -> bool:
        """All 2^n coalitions are present: its Shapley values are exact."""
        n = self.masks.shape[1]
        return n <= MAX_EXACT_PLAYERS and len(self.masks) == (1 << n)


def surrogate_masks(sampled: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Coalitions `(K, n)` the stand-in game is evaluated on: all 2^n when they fit `limit`,
    else the sampled ones, every singleton and leave-one-out, and about `limit` paired random
    coalitions with sizes drawn by kernel mass (it must cover `sampled`)."""
    sampled = np.asarray(sampled, dtype=bool)
    n = sampled.shape[1]
    if n <= MAX_EXACT_PLAYERS and (1 << n) <= limit:
        keys = np.arange(1 << n, dtype=np.int64)
        return ((keys[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(bool)
    eye = np.eye(n, dtype=bool)
    rows = [sampled, eye, ~eye]
    sizes = np.arange(2, n - 1)
    if len(sizes):
        # Vectorized: a random order per row, its first `size` players join (one draw, not a
        # Python loop: the stand-in wants ~1000 coalitions per completion).
        mass = 1.0 / (sizes * (n - sizes))
        drawn = rng.choice(sizes, size=max(limit // 2, 1), p=mass / mass.sum())
        order = np.argsort(rng.random((len(drawn), n)), axis=1)
        half = np.argsort(order, axis=1) < drawn[:, None]
        rows += [half, ~half]
    rows = np.concatenate(rows)
    _, first = np.unique(np.packbits(rows, axis=1), axis=0, return_index=True)
    return rows[np.sort(first)]


def interpolated_embeddings(
    empty: np.ndarray, singles: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """Unit vectors `(K, d)` of the stand-in coalitions: the pooled sum of the empty text
    `empty (d,)` plus each member's increment `singles (n, d) - empty`, normalized."""
    empty = np.asarray(empty, dtype=np.float32)
    steps = np.asarray(singles, dtype=np.float32) - empty
    sums = empty + np.asarray(masks, dtype=np.float32) @ steps
    return sums / np.maximum(np.linalg.norm(sums, axis=-1, keepdims=True), 1e-12)


def control_variate_shapley(
    masks: np.ndarray, values: np.ndarray, surrogate: SurrogateGame
) -> np.ndarray:
    """phi(v~) from the stand-in game plus the kernel estimate of phi(v - v~) on `masks`.

    `surrogate.masks` must hold every row of `masks` (as `surrogate_masks` makes them).
    """
    masks = np.asarray(masks, dtype=bool)
    lookup = {m.tobytes(): v for m, v in zip(surrogate.masks, surrogate.values, strict=True)}
    try:
        stand_in = np.array([lookup[m.tobytes()] for m in masks], dtype=np.float64)
    except KeyError:
        raise ValueError("the stand-in game does not cover every sampled coalition") from None
    return shapley_of(surrogate) + kernel_shapley(masks, np.asarray(values, np.float64) - stand_in)


def shapley_of(game: SurrogateGame) -> np.ndarray:
    """Shapley values of the stand-in game: exact when complete, else its kernel estimate."""
    if game.complete:
        n = game.masks.shape[1]
        table = np.empty(1 << n)
        table[game.masks.astype(np.int64) @ (1 << np.arange(n, dtype=np.int64))] = game.values
        return shapley_exact(table)
    return kernel_shapley(game.masks, game.values)


def stand_in_games(
    reward,
    responses: list[str],
    segments: list[list[tuple[int, int]]],
    sampled: list[np.ndarray],
    tasks: list,
    config: AttributionConfig,
    rng: np.random.Generator,
) -> list[SurrogateGame | None]:
    """The stand-in game of each completion whose coalitions were not all evaluated, from
    `reward.surrogate_values` in one call; None where the config, the estimator or the reward
    (no such method, or None for that response) rules it out."""
    out: list[SurrogateGame | None] = [None] * len(responses)
    get = getattr(reward, "surrogate_values", None)
    if get is None or config.surrogate != "pooled" or config.estimator != "shapley":
        return out
    todo = [
        i
        for i, m in enumerate(sampled)
        if len(m)
        and m.shape[1] > 1
        and len(np.unique(np.packbits(m, axis=1), axis=0)) < (1 << m.shape[1])
    ]
    if not todo:
        return out
    masks = [surrogate_masks(sampled[i], config.surrogate_coalitions, rng) for i in todo]
    got = get(
        [responses[i] for i in todo], [segments[i] for i in todo], masks, [tasks[i] for i in todo]
    )
    for i, m, values in zip(todo, masks, got, strict=True):
        if values is not None:
            out[i] = SurrogateGame(m, np.asarray(values, dtype=np.float64))
    return out
