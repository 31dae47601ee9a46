"""Seeded candidate pools and train/test splits shared by every converter."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_negatives(
    candidates: Sequence[str], exclude: set[str], n: int, rng: np.random.Generator
) -> list[str]:
    """Up to `n` distinct ids from `candidates` not in `exclude`, sampled without replacement.

    Draws a random subset a little larger than needed instead of shuffling the whole list,
    so pools stay cheap on million-product catalogs.
    """
    if n <= 0 or not candidates:
        return []
    chosen: list[str] = []
    seen = set(exclude)
    draw = min(len(candidates), 2 * n + len(exclude) + 8)
    while True:
        for i in rng.choice(len(candidates), size=draw, replace=False):
            pid = candidates[int(i)]
            if pid not in seen:
                seen.add(pid)
                chosen.append(pid)
                if len(chosen) == n:
                    return chosen
        if draw == len(candidates):
            return chosen  # fewer eligible candidates than requested
        draw = len(candidates)


def build_pool(
    labelled: Sequence[str],
    pool_size: int,
    rng: np.random.Generator,
    *,
    catalog_ids: Sequence[str],
    related_ids: Sequence[str] = (),
    related_fraction: float = 0.5,
) -> list[str]:
    """A candidate pool: every labelled id, then negatives up to `pool_size`, shuffled.

    Labelled ids (relevant products and labelled hard negatives) are always kept, even past
    `pool_size`. Of the remaining slots, `related_fraction` go to `related_ids` (e.g. the
    same product group, harder negatives) and the rest to random catalog products.
    """
    pool = list(dict.fromkeys(labelled))
    room = pool_size - len(pool)
    if room > 0 and related_ids:
        pool += sample_negatives(related_ids, set(pool), round(room * related_fraction), rng)
    room = pool_size - len(pool)
    if room > 0:
        pool += sample_negatives(catalog_ids, set(pool), room, rng)
    order = rng.permutation(len(pool))
    return [pool[int(i)] for i in order]


def sample_negative_rows(
    candidates: np.ndarray | int,
    taken: np.ndarray,
    n: int,
    n_excluded: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """`sample_negatives` over integer row ids, with one mask lookup per draw, not a Python loop.

    `candidates`: distinct row ids, or an int m for rows 0..m-1 (a whole catalog). `taken`: a
    bool mask over row ids, True for the excluded ones; `n_excluded` is `len(exclude)` of the
    string version. The Generator gets the same calls with the same arguments in the same order
    and, candidates being distinct, a draw never repeats a row, so the same rows come back.
    `taken` is left as it was given.
    """
    size = candidates if isinstance(candidates, int) else len(candidates)
    if n <= 0 or size == 0:
        return np.empty(0, dtype=np.int64)
    draw = min(size, 2 * n + n_excluded + 8)
    rows = rng.choice(size, size=draw, replace=False)
    if not isinstance(candidates, int):
        rows = candidates[rows]
    chosen = rows[~taken[rows]][:n]
    if len(chosen) == n or draw == size:
        return chosen
    # Unreachable with distinct candidates (a draw has >= 2n + 8 fresh rows), kept for fidelity.
    taken[chosen] = True
    rows = rng.choice(size, size=size, replace=False)
    if not isinstance(candidates, int):
        rows = candidates[rows]
    more = rows[~taken[rows]][: n - len(chosen)]
    taken[chosen] = False
    return np.concatenate([chosen, more])


def build_pool_rows(
    labelled: np.ndarray,
    pool_size: int,
    rng: np.random.Generator,
    *,
    n_catalog: int,
    related_rows: np.ndarray,
    taken: np.ndarray,
    related_fraction: float = 0.5,
) -> np.ndarray:
    """`build_pool` over catalog row ids (catalog_ids = rows 0..n_catalog-1): the same pool.

    `labelled` are distinct rows; `related_rows` distinct rows of the related ids; `taken` an
    all-False bool mask of n_catalog rows, used as scratch and left all False.
    """
    parts = [labelled]
    n_pool = len(labelled)
    taken[labelled] = True
    room = pool_size - n_pool
    if room > 0 and len(related_rows):
        got = sample_negative_rows(related_rows, taken, round(room * related_fraction), n_pool, rng)
        taken[got] = True
        parts.append(got)
        n_pool += len(got)
    room = pool_size - n_pool
    if room > 0:
        parts.append(sample_negative_rows(n_catalog, taken, room, n_pool, rng))
    pool = np.concatenate(parts) if len(parts) > 1 else labelled
    taken[pool] = False
    return pool[rng.permutation(len(pool))]


def split_keys(keys: Sequence[str], test_fraction: float, seed: int) -> set[str]:
    """The keys (queries, customers) assigned to the test split: a seeded random fraction.

    Rounds to the nearest count but keeps at least one key on each side when there are two or
    more keys and 0 < test_fraction < 1.
    """
    unique = list(dict.fromkeys(keys))
    if not unique or test_fraction <= 0:
        return set()
    if test_fraction >= 1:
        return set(unique)
    n_test = round(len(unique) * test_fraction)
    if len(unique) >= 2:
        n_test = min(max(n_test, 1), len(unique) - 1)
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[int(i)] for i in order[:n_test]}
