"""Which coalitions to evaluate, and segment values from their rewards (NumPy reference).

`sample_coalitions(n, config, rng)` picks the coalitions of one completion's n segments and
`estimate(masks, values, config)` turns their values v(S) into segment values phi. Two
estimators:

- `shapley` (default): when all 2^n coalitions fit the budget they are all evaluated and phi is
  the exact Shapley value. Otherwise the kernel estimator (weighted least squares with the
  Shapley kernel under the efficiency constraint sum(phi) = v(N) - v(empty)) runs on the
  anchors, every singleton, every leave-one-out (budget permitting) and paired random
  coalitions. It is exact for additive games and, with full enumeration, equals the Shapley
  value.
- `contiguous`: the paper's estimator, the mean marginal gain over contiguous windows
  (`reference.owen_contiguous`).

The budget is raised to n + 2 when it is smaller, so every segment has its singleton pair
(empty, {j}) and no segment value is left at an unmeasured 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import TYPE_CHECKING

import numpy as np

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.reference import contiguous_coalitions, owen_contiguous

if TYPE_CHECKING:  # surrogate.py builds on this module
    from ospo_mlx.attribution.surrogate import SurrogateGame

# The full enumeration is used while 2^n fits the budget; the bitmask tables need n small.
MAX_EXACT_PLAYERS = 16


@dataclass(frozen=True)
class Estimate:
    """Segment values of one completion and how they were obtained."""

    phi: np.ndarray  # (n,)
    unpaired: int  # segments without any evaluated marginal (value left at 0)
    exact: bool  # every coalition was evaluated (exact Shapley)
    surrogate: bool = False  # the stand-in game served as a control variate


def budget(n: int, config: AttributionConfig) -> int:
    """Coalitions evaluated for n segments: `max_coalitions`, raised to n + 2 when smaller."""
    return max(config.max_coalitions, n + 2)


def _all_masks(n: int) -> np.ndarray:
    keys = np.arange(1 << n, dtype=np.int64)
    return ((keys[:, None] >> np.arange(n, dtype=np.int64)) & 1).astype(bool)


def kernel_weight(n: int, size: int) -> float:
    """The Shapley kernel of one coalition of `size` out of n (anchors are constraints: inf)."""
    if size in (0, n):
        return float("inf")
    return (n - 1) / (comb(n, size) * size * (n - size))


def shapley_coalitions(n: int, max_coalitions: int, rng: np.random.Generator) -> np.ndarray:
    """Coalitions `(C, n)` for the kernel estimator, C <= max(max_coalitions, n + 2).

    All 2^n when they fit; else the anchors, all singletons, all leave-one-outs when they fit,
    then random coalitions with sizes drawn by kernel mass (1 / (s (n - s))), each with its
    complement, until the budget is spent.
    """
    total = max(max_coalitions, n + 2)
    if n <= MAX_EXACT_PLAYERS and (1 << n) <= total:
        return _all_masks(n)
    eye = np.eye(n, dtype=bool)
    rows = [np.zeros(n, bool), np.ones(n, bool), *eye]
    if total >= 2 * n + 2:
        rows.extend(~eye)
    seen = {r.tobytes() for r in rows}
    sizes = np.arange(2, n - 1)
    if len(sizes) and len(rows) < total:
        mass = 1.0 / (sizes * (n - sizes))
        mass /= mass.sum()
        for _ in range(20 * total):  # bounded: duplicates are skipped
            size = int(rng.choice(sizes, p=mass))
            row = np.zeros(n, bool)
            row[rng.choice(n, size=size, replace=False)] = True
            for candidate in (row, ~row):
                key = candidate.tobytes()
                if key not in seen and len(rows) < total:
                    seen.add(key)
                    rows.append(candidate)
            if len(rows) >= total:
                break
    return np.stack(rows)


def sample_coalitions(n: int, config: AttributionConfig, rng: np.random.Generator) -> np.ndarray:
    """The coalitions the trainer evaluates for a completion with n segments (bool `(C, n)`)."""
    if config.estimator == "contiguous":
        return contiguous_coalitions(n, config.max_width, budget(n, config), rng)
    return shapley_coalitions(n, config.max_coalitions, rng)


def kernel_shapley(masks: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Shapley values from evaluated coalitions by the constrained kernel regression.

    `masks (C, n)` must hold the empty and the full coalition. Coalition sizes evaluated in full
    get their exact kernel weight; the rest of the kernel mass is shared evenly by the sampled
    coalitions of the remaining sizes. Duplicates count once.
    """
    masks = np.asarray(masks, dtype=bool)
    values = np.asarray(values, dtype=np.float64)
    c, n = masks.shape
    if n == 0:
        return np.zeros(0)
    keys = {}
    for r in range(c):
        keys.setdefault(masks[r].tobytes(), r)
    rows = np.array(sorted(keys.values()))
    masks, values = masks[rows], values[rows]
    size = masks.sum(1)
    empty, full = np.flatnonzero(size == 0), np.flatnonzero(size == n)
    if not len(empty) or not len(full):
        raise ValueError("the kernel estimator needs the empty and the full coalition")
    v0, delta = values[empty[0]], values[full[0]] - values[empty[0]]
    if n == 1:
        return np.array([delta])
    inner = (size > 0) & (size < n)
    weights = np.zeros(len(masks))
    counts = np.bincount(size[inner], minlength=n + 1)
    sampled_mass, sampled = 0.0, np.zeros(len(masks), bool)
    for s in range(1, n):
        per = kernel_weight(n, s)
        if counts[s] == comb(n, s):  # the whole size class: exact weights
            weights[inner & (size == s)] = per
        else:
            sampled_mass += per * comb(n, s)
            sampled |= inner & (size == s)
    if sampled.any():
        weights[sampled] = sampled_mass / sampled.sum()
    z, y = masks[inner].astype(np.float64), values[inner] - v0
    w = weights[inner]
    if not len(z):
        return np.full(n, delta / n)
    # Efficiency: phi_last = delta - sum(others), substituted into the regression.
    a = z[:, :-1] - z[:, -1:]
    b = y - z[:, -1] * delta
    root = np.sqrt(w)[:, None]
    head, *_ = np.linalg.lstsq(a * root, b * root[:, 0], rcond=None)
    return np.append(head, delta - head.sum())


def estimate(
    masks: np.ndarray,
    values: np.ndarray,
    config: AttributionConfig,
    surrogate: SurrogateGame | None = None,
) -> Estimate:
    """Segment values phi `(n,)` of one completion from its evaluated coalitions.

    `surrogate`, the stand-in game, is used as a control variate by the shapley estimator when
    the coalitions are not all evaluated.
    """
    masks = np.asarray(masks, dtype=bool)
    n = masks.shape[1]
    if config.estimator == "contiguous":
        phi, unpaired = owen_contiguous(masks, values, return_unpaired=True)
        return Estimate(np.asarray(phi), int(unpaired), exact=False)
    exact = n <= MAX_EXACT_PLAYERS and len({m.tobytes() for m in masks}) == (1 << n)
    covered = masks[masks.sum(1) < n].any(0) if n else np.zeros(0, bool)
    unpaired = int((~covered).sum()) if n > 1 else 0
    if surrogate is not None and not exact and n > 1:
        from ospo_mlx.attribution.surrogate import control_variate_shapley

        return Estimate(control_variate_shapley(masks, values, surrogate), unpaired, False, True)
    return Estimate(kernel_shapley(masks, values), unpaired, exact)
