"""Shapley and Owen values: axioms, brute-force definitions, the sampled contiguous estimator."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution.reference import (
    _pair_index,
    coalition_values,
    contiguous_coalitions,
    game_from_function,
    owen_contiguous,
    owen_exact,
    shapley_exact,
)
from ospo_mlx.errors import ConfigError

SETTINGS = settings(max_examples=40, deadline=None)


def brute_shapley(v: np.ndarray, n: int) -> np.ndarray:
    """Average marginal contribution over all n! join orders."""
    phi = np.zeros(n)
    perms = list(itertools.permutations(range(n)))
    for order in perms:
        mask = 0
        for p in order:
            phi[p] += v[mask | (1 << p)] - v[mask]
            mask |= 1 << p
    return phi / len(perms)


def brute_owen(v: np.ndarray, n: int, unions: list[list[int]]) -> np.ndarray:
    """Average marginal contribution over join orders that keep every union contiguous."""
    phi = np.zeros(n)
    count = 0
    for union_order in itertools.permutations(range(len(unions))):
        for inner in itertools.product(*(itertools.permutations(u) for u in unions)):
            mask = 0
            for k in union_order:
                for p in inner[k]:
                    phi[p] += v[mask | (1 << p)] - v[mask]
                    mask |= 1 << p
            count += 1
    return phi / count


@st.composite
def games(draw, min_n: int = 1, max_n: int = 6):
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**32 - 1))
    v = np.random.default_rng(seed).normal(size=1 << n)
    return n, v


@st.composite
def partitions(draw, n: int):
    labels = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
    groups: dict[int, list[int]] = {}
    for player, label in enumerate(labels):
        groups.setdefault(label, []).append(player)
    return list(groups.values())


@SETTINGS
@given(games(max_n=6))
def test_shapley_matches_permutation_definition(game):
    n, v = game
    np.testing.assert_allclose(shapley_exact(v), brute_shapley(v, n), atol=1e-10)


@SETTINGS
@given(games(max_n=5), st.data())
def test_owen_matches_permutation_definition(game, data):
    n, v = game
    unions = data.draw(partitions(n))
    np.testing.assert_allclose(owen_exact(v, unions), brute_owen(v, n, unions), atol=1e-10)


def test_owen_brute_force_n7():
    v = np.random.default_rng(7).normal(size=1 << 7)
    unions = [[0, 3], [1, 2, 4], [5], [6]]
    np.testing.assert_allclose(owen_exact(v, unions), brute_owen(v, 7, unions), atol=1e-10)
    np.testing.assert_allclose(shapley_exact(v), brute_shapley(v, 7), atol=1e-10)


@SETTINGS
@given(games(max_n=8), st.data())
def test_efficiency(game, data):
    n, v = game
    unions = data.draw(partitions(n))
    assert shapley_exact(v).sum() == pytest.approx(v[-1] - v[0], abs=1e-9)
    assert owen_exact(v, unions).sum() == pytest.approx(v[-1] - v[0], abs=1e-9)


@SETTINGS
@given(games(max_n=7))
def test_owen_trivial_unions_equal_shapley(game):
    n, v = game
    phi = shapley_exact(v)
    np.testing.assert_allclose(owen_exact(v, [[i] for i in range(n)]), phi, atol=1e-10)
    np.testing.assert_allclose(owen_exact(v, [list(range(n))]), phi, atol=1e-10)


@SETTINGS
@given(games(min_n=2, max_n=7), st.data())
def test_null_player_gets_zero(game, data):
    n, v = game
    null = data.draw(st.integers(0, n - 1))
    # Make `null` a null player: adding it never changes the value.
    masks = np.arange(1 << n)
    v = v[masks & ~(1 << null)]
    unions = data.draw(partitions(n))
    assert shapley_exact(v)[null] == pytest.approx(0.0, abs=1e-10)
    assert owen_exact(v, unions)[null] == pytest.approx(0.0, abs=1e-10)


@SETTINGS
@given(games(min_n=2, max_n=7), st.data())
def test_symmetry(game, data):
    n, v = game
    i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    # Symmetrize v in players i and j: v(S) = v(swap(S)).
    masks = np.arange(1 << n)
    bi, bj = (masks >> i) & 1, (masks >> j) & 1
    swapped = (masks & ~((1 << i) | (1 << j))) | (bi << j) | (bj << i)
    v = v + v[swapped]
    phi = shapley_exact(v)
    assert phi[i] == pytest.approx(phi[j], abs=1e-10)
    # Owen keeps symmetry for symmetric players in the same union.
    others = [[k] for k in range(n) if k not in (i, j)]
    owen = owen_exact(v, [[i, j], *others])
    assert owen[i] == pytest.approx(owen[j], abs=1e-10)


@SETTINGS
@given(games(max_n=6), games(max_n=6), st.data())
def test_additivity(g1, g2, data):
    n = min(g1[0], g2[0])
    v1, v2 = g1[1][: 1 << n], g2[1][: 1 << n]
    unions = data.draw(partitions(n))
    np.testing.assert_allclose(
        shapley_exact(v1 + v2), shapley_exact(v1) + shapley_exact(v2), atol=1e-10
    )
    np.testing.assert_allclose(
        owen_exact(v1 + v2, unions), owen_exact(v1, unions) + owen_exact(v2, unions), atol=1e-10
    )


@SETTINGS
@given(games(min_n=2, max_n=7), st.data())
def test_owen_quotient_property(game, data):
    n, v = game
    unions = data.draw(partitions(n))
    m = len(unions)
    bits = [sum(1 << p for p in u) for u in unions]
    quotient = np.array([v[sum(bits[k] for k in range(m) if (q >> k) & 1)] for q in range(1 << m)])
    owen = owen_exact(v, unions)
    sums = np.array([owen[u].sum() for u in unions])
    np.testing.assert_allclose(sums, shapley_exact(quotient), atol=1e-10)


def test_batched_games_match_single():
    v = np.random.default_rng(1).normal(size=(3, 1 << 5))
    batched = shapley_exact(v)
    for row in range(3):
        np.testing.assert_allclose(batched[row], shapley_exact(v[row]))
    owen = owen_exact(v, [[0, 1], [2, 3, 4]])
    np.testing.assert_allclose(owen[2], owen_exact(v[2], [[0, 1], [2, 3, 4]]))


def test_shapley_16_players_under_a_second():
    v = np.random.default_rng(0).normal(size=1 << 16)
    start = time.perf_counter()
    phi = shapley_exact(v)
    elapsed = time.perf_counter() - start
    assert phi.sum() == pytest.approx(v[-1] - v[0], abs=1e-8)
    assert elapsed < 1.0


def test_known_games():
    # Glove game: player 0 holds a left glove, 1 and 2 right gloves; a pair is worth 1.
    v = game_from_function(3, lambda s: float(0 in s and (1 in s or 2 in s)))
    np.testing.assert_allclose(shapley_exact(v), [2 / 3, 1 / 6, 1 / 6])
    # Owen with {1, 2} as a union: they bargain together as one right-glove holder.
    np.testing.assert_allclose(owen_exact(v, [[0], [1, 2]]), [1 / 2, 1 / 4, 1 / 4])


def test_bad_unions_raise():
    v = np.zeros(1 << 3)
    with pytest.raises(ConfigError):
        owen_exact(v, [[0, 1]])
    with pytest.raises(ConfigError):
        owen_exact(v, [[0, 1], [1, 2]])
    with pytest.raises(ValueError):
        shapley_exact(np.zeros(6))


# ---- contiguous coalitions and the sampled estimator ------------------------------------------


def n_windows(n: int, width: int) -> int:
    return sum(n - w + 1 for w in range(1, min(width, n) + 1))


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12))
def test_contiguous_coalitions_enumerates_windows(n, width):
    masks = contiguous_coalitions(n, width)
    assert masks.dtype == bool and masks.shape[1] == n
    rows = {m.tobytes() for m in masks}
    assert len(rows) == len(masks)  # no duplicates
    assert not masks[0].any() and masks[-1].all()  # anchors first and last
    for m in masks[1:-1]:
        idx = np.flatnonzero(m)
        assert idx[-1] - idx[0] + 1 == len(idx) <= width  # contiguous, within width
    assert len(masks) == n_windows(n, width) + 1 + (width < n)


@SETTINGS
@given(st.integers(2, 14), st.integers(1, 14), st.integers(2, 40), st.integers(0, 1000))
def test_contiguous_coalitions_sampling(n, width, budget, seed):
    masks = contiguous_coalitions(n, width, budget, np.random.default_rng(seed))
    full = contiguous_coalitions(n, width)
    assert len(masks) == min(budget, len(full))
    assert not masks[0].any() and masks[-1].all()
    full_rows = {m.tobytes() for m in full}
    assert all(m.tobytes() in full_rows for m in masks)
    assert len({m.tobytes() for m in masks}) == len(masks)
    _, unpaired = owen_contiguous(masks, np.zeros(len(masks)), return_unpaired=True)
    if budget >= n + 2:  # singletons kept: everyone is paired with the empty coalition
        assert unpaired == 0
        assert masks.sum(1).tolist().count(1) == n


def test_contiguous_coalitions_seeded_and_edge_cases():
    a = contiguous_coalitions(10, 4, 20, 3)
    b = contiguous_coalitions(10, 4, 20, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert contiguous_coalitions(0).shape == (1, 0)
    np.testing.assert_array_equal(contiguous_coalitions(1), [[False], [True]])
    with pytest.raises(ConfigError):
        contiguous_coalitions(5, 2, 1)
    with pytest.raises(ConfigError):
        contiguous_coalitions(5, 0)


@SETTINGS
@given(st.integers(1, 12), st.integers(1, 12), st.integers(2, 40), st.integers(0, 1000))
def test_owen_contiguous_exact_on_additive_games(n, width, budget, seed):
    rng = np.random.default_rng(seed)
    weights, base = rng.normal(size=n), rng.normal()
    masks = contiguous_coalitions(n, width, budget, rng)
    phi, unpaired = owen_contiguous(masks, masks @ weights + base, return_unpaired=True)
    target, _ = _pair_index(masks)
    paired = (target >= 0).any(0)
    np.testing.assert_allclose(phi[paired], weights[paired], atol=1e-10)
    np.testing.assert_array_equal(phi[~paired], 0.0)
    assert unpaired == int((~paired).sum())


def test_owen_contiguous_formula_by_hand():
    # Coalitions over 3 players: {}, {0}, {1}, {0,1}, {0,1,2}.
    masks = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 1, 1]], dtype=bool)
    values = np.array([0.0, 1.0, 2.0, 5.0, 6.0])
    phi, unpaired = owen_contiguous(masks, values, return_unpaired=True)
    # Player 0: ({} -> {0}) = 1, ({1} -> {0,1}) = 3. Player 1: 2 and 4. Player 2: ({0,1} -> all) = 1.
    np.testing.assert_allclose(phi, [2.0, 3.0, 1.0])
    assert unpaired == 0
    # Without the empty/singletons, player 0 and 1 have no pair.
    phi, unpaired = owen_contiguous(masks[3:], values[3:], return_unpaired=True)
    np.testing.assert_allclose(phi, [0.0, 0.0, 1.0])
    assert unpaired == 2


def test_owen_contiguous_zero_marginals_and_duplicates():
    masks = contiguous_coalitions(5)
    phi = owen_contiguous(masks, np.full(len(masks), 0.7))
    np.testing.assert_array_equal(phi, 0.0)
    # A duplicate row counts once (its first occurrence).
    dup = np.vstack([masks, masks[1:2]])
    vals = np.append(masks @ np.arange(5.0), 100.0)
    np.testing.assert_allclose(owen_contiguous(dup, vals), np.arange(5.0))


def test_owen_contiguous_wide_game_uses_same_rule():
    # 70 players: beyond int64 keys, the dict path must agree with the additive identity.
    n = 70
    masks = contiguous_coalitions(n, 3)
    weights = np.random.default_rng(0).normal(size=n)
    np.testing.assert_allclose(owen_contiguous(masks, masks @ weights), weights, atol=1e-10)


def test_owen_contiguous_full_set_matches_exact_on_small_games():
    # With every coalition evaluated, the estimator is the plain mean of marginals; check the
    # lookup against coalition_values on a random game.
    n = 4
    v = np.random.default_rng(2).normal(size=1 << n)
    masks = np.array([[(m >> i) & 1 for i in range(n)] for m in range(1 << n)], dtype=bool)
    phi = owen_contiguous(masks, coalition_values(v, masks))
    expect = [
        np.mean([v[m | (1 << j)] - v[m] for m in range(1 << n) if not (m >> j) & 1])
        for j in range(n)
    ]
    np.testing.assert_allclose(phi, expect)
    assert math.isclose(float(coalition_values(v, masks[5:6])[0]), v[5])
