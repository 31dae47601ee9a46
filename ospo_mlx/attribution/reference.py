"""Cooperative games over segments and their values, NumPy reference.

An exact game over n players is a float array `v` of length `2**n`: `v[mask]` is the value of
the coalition whose members are the set bits of `mask` (bit i = player i). A sampled game is a
bool matrix of coalitions `masks (C, n)` with their values `values (C,)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import factorial

import numpy as np

from ospo_mlx.errors import ConfigError


def _num_players(v: np.ndarray) -> int:
    size = v.shape[-1]
    n = size.bit_length() - 1
    if size < 1 or (1 << n) != size:
        raise ValueError(f"a game needs 2**n values on its last axis, got {size}")
    return n


def _popcount(n: int) -> np.ndarray:
    """Number of members of every coalition mask 0..2**n - 1."""
    masks = np.arange(1 << n, dtype=np.int64)
    return ((masks[:, None] >> np.arange(n, dtype=np.int64)) & 1).sum(axis=1)


def _shapley_weights(n: int) -> np.ndarray:
    """w[s] = s! (n - s - 1)! / n!: the chance a player joins right after a given s-coalition."""
    return np.array([factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)])


def shapley_exact(v: np.ndarray) -> np.ndarray:
    """Exact Shapley values of a game `v (..., 2**n)` -> `phi (..., n)`, O(n 2**n).

    phi_i = sum over S without i of |S|! (n-|S|-1)! / n! * (v(S u {i}) - v(S)).
    """
    v = np.asarray(v, dtype=np.float64)
    n = _num_players(v)
    masks = np.arange(1 << n, dtype=np.int64)
    weights = _shapley_weights(n)[np.minimum(_popcount(n), max(n - 1, 0))] if n else None
    phi = np.zeros((*v.shape[:-1], n))
    for i in range(n):
        without = masks[(masks >> i) & 1 == 0]
        phi[..., i] = ((v[..., without | (1 << i)] - v[..., without]) * weights[without]).sum(-1)
    return phi


def _check_partition(unions: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    unions = [sorted(int(p) for p in u) for u in unions if len(u)]
    members = sorted(p for u in unions for p in u)
    if members != list(range(n)):
        raise ConfigError(f"Owen unions must partition the players 0..{n - 1}, got {unions}")
    return unions


def owen_exact(v: np.ndarray, unions: Sequence[Sequence[int]]) -> np.ndarray:
    """Exact Owen values of `v (..., 2**n)` for a partition of the players into a-priori unions.

    Players first join with their union-mates, unions join in random order (e.g. phrases grouped
    by sentence). phi_i = sum over R (other unions) and S (own-union mates, i not in S) of
    r!(m-r-1)!/m! * s!(b-s-1)!/b! * (v(Q_R u S u {i}) - v(Q_R u S)), with m unions, b = |own union|.
    All-singleton unions or a single union give the Shapley value.
    """
    v = np.asarray(v, dtype=np.float64)
    n = _num_players(v)
    unions = _check_partition(unions, n)
    m = len(unions)
    masks = np.arange(1 << n, dtype=np.int64)
    union_bits = [sum(1 << p for p in u) for u in unions]
    full = np.stack([(masks & b) == b for b in union_bits]) if m else np.zeros((0, 1 << n), bool)
    empty = np.stack([(masks & b) == 0 for b in union_bits]) if m else np.zeros((0, 1 << n), bool)
    whole = (full | empty).sum(0)  # unions entirely in or out of each coalition
    n_full = full.sum(0)
    size = _popcount(n)
    union_w = _shapley_weights(m)
    phi = np.zeros((*v.shape[:-1], n))
    for k, union in enumerate(unions):
        b = len(union)
        mates = masks & union_bits[k]
        # Other unions must be whole; r counts the full ones.
        ok = (whole - (full[k] | empty[k])) == m - 1
        r = n_full - full[k]
        s = size[mates]
        inner_w = _shapley_weights(b)
        for i in union:
            sel = ok & ((masks >> i) & 1 == 0)
            idx = masks[sel]
            w = union_w[r[sel]] * inner_w[np.minimum(s[sel], b - 1)]
            phi[..., i] = ((v[..., idx | (1 << i)] - v[..., idx]) * w).sum(-1)
    return phi


def contiguous_coalitions(
    n: int,
    max_width: int | None = None,
    max_coalitions: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Coalitions of contiguous segments: bool `(C, n)`, sorted by width then start.

    The set holds the empty and the grand coalition, and every window `[a, a + w)` of width
    1..max_width. When that is more than `max_coalitions`, it is sampled uniformly without
    replacement down to `max_coalitions`, except that the two anchors are always kept and, when
    `max_coalitions >= n + 2`, so are the n singletons. Guarantee: with the singletons kept,
    every player has at least the pair (empty, {j}) for `owen_contiguous`; without sampling,
    every window S of width < max_width also has its one-wider neighbours S u {a-1}, S u {b}.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_coalitions is not None and max_coalitions < 2:
        raise ConfigError("max_coalitions must be >= 2 (the empty and the grand coalition)")
    if max_width is not None and max_width < 1:
        raise ConfigError("max_width must be >= 1 (or None for all widths)")
    width = n if max_width is None else min(max_width, n)
    windows = [(w, a) for w in range(2, width + 1) for a in range(n - w + 1) if w < n]
    keep = [(0, 0), (n, 0)] if n else [(0, 0)]
    singles = [(1, a) for a in range(n) if n > 1]
    budget = None if max_coalitions is None else max_coalitions - len(keep)
    if budget is None or len(singles) + len(windows) <= budget:
        chosen = singles + windows
    else:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if budget >= len(singles):
            pool, chosen = windows, list(singles)
            budget -= len(singles)
        else:
            pool, chosen = singles + windows, []
        picks = gen.choice(len(pool), size=budget, replace=False) if budget else []
        chosen += [pool[int(p)] for p in picks]
    out = np.zeros((len(keep) + len(chosen), n), dtype=bool)
    for row, (w, a) in enumerate(sorted(keep + chosen)):
        out[row, a : a + w] = True
    return out


def _pair_index(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each coalition c and player j not in c: the row of c u {j}, or -1 when not evaluated.

    Also returns which rows are first occurrences (duplicate coalitions keep the first row).
    """
    c, n = masks.shape
    if n <= 62:
        keys = masks.astype(np.int64) @ (np.int64(1) << np.arange(n, dtype=np.int64))
        order = np.argsort(keys, kind="stable")  # stable: the first duplicate wins
        sorted_keys = keys[order]
        first_pos = np.searchsorted(sorted_keys, keys, side="left")
        first = order[first_pos] == np.arange(c)
        plus = keys[:, None] | (np.int64(1) << np.arange(n, dtype=np.int64))[None, :]
        pos = np.minimum(np.searchsorted(sorted_keys, plus, side="left"), c - 1)
        found = (sorted_keys[pos] == plus) & ~masks
        return np.where(found, order[pos], -1), first
    # Wide games: Python dict on packed bytes.
    rows = [m.tobytes() for m in np.packbits(masks, axis=1)]
    index: dict[bytes, int] = {}
    for r, key in enumerate(rows):
        index.setdefault(key, r)
    first = np.array([index[key] == r for r, key in enumerate(rows)])
    target = np.full((c, n), -1)
    for r in range(c):
        for j in np.flatnonzero(~masks[r]):
            plus = masks[r].copy()
            plus[j] = True
            target[r, j] = index.get(np.packbits(plus).tobytes(), -1)
    return target, first


def owen_contiguous(
    masks: np.ndarray, values: np.ndarray, *, return_unpaired: bool = False
) -> np.ndarray | tuple[np.ndarray, int]:
    """The paper's sampled Owen estimator over evaluated coalitions.

    phi_j = mean over S in C_j of v(S u {j}) - v(S), where C_j are the evaluated coalitions S
    without j whose extension S u {j} was evaluated too. A duplicate coalition counts once (its
    first row). A player with no evaluated pair gets 0; with `return_unpaired=True` the result
    is `(phi, n_unpaired)` so callers can count them. Exact on additive games for paired players.
    """
    masks = np.asarray(masks, dtype=bool)
    values = np.asarray(values, dtype=np.float64)
    if masks.ndim != 2 or values.shape != masks.shape[:1]:
        raise ValueError(f"masks must be (C, n) and values (C,), got {masks.shape}, {values.shape}")
    c, n = masks.shape
    if c == 0 or n == 0:
        phi = np.zeros(n)
        return (phi, n) if return_unpaired else phi
    target, first = _pair_index(masks)
    paired = (target >= 0) & first[:, None]
    gain = np.where(paired, values[np.maximum(target, 0)] - values[:, None], 0.0)
    counts = paired.sum(0)
    phi = np.where(counts > 0, gain.sum(0) / np.maximum(counts, 1), 0.0)
    return (phi, int((counts == 0).sum())) if return_unpaired else phi


def game_from_function(n: int, value) -> np.ndarray:
    """Tabulate `value(members: tuple[int, ...]) -> float` into an exact game `v (2**n,)`."""
    return np.array(
        [value(tuple(i for i in range(n) if (mask >> i) & 1)) for mask in range(1 << n)],
        dtype=np.float64,
    )


def coalition_values(v: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Look up the values of coalitions `masks (C, n)` in an exact game `v (2**n,)`."""
    masks = np.asarray(masks, dtype=bool)
    keys = masks.astype(np.int64) @ (np.int64(1) << np.arange(masks.shape[1], dtype=np.int64))
    return np.asarray(v, dtype=np.float64)[..., keys]
