"""Coalition sampling and segment-value estimators (attribution/estimators.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import (
    budget,
    estimate,
    kernel_shapley,
    kernel_weight,
    sample_coalitions,
    shapley_coalitions,
)
from ospo_mlx.attribution.reference import coalition_values, game_from_function, shapley_exact
from ospo_mlx.errors import ConfigError

SETTINGS = settings(max_examples=40, deadline=None)


def additive(effects: np.ndarray, base: float) -> np.ndarray:
    return game_from_function(len(effects), lambda s: base + float(sum(effects[list(s)])))


@SETTINGS
@given(st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_full_enumeration_is_exact_shapley(n, seed):
    v = np.random.default_rng(seed).normal(size=1 << n)
    config = AttributionConfig(max_coalitions=1 << n)
    masks = sample_coalitions(n, config, np.random.default_rng(seed))
    assert len(masks) == 1 << n
    est = estimate(masks, coalition_values(v, masks), config)
    assert est.exact and est.unpaired == 0
    np.testing.assert_allclose(est.phi, shapley_exact(v), atol=1e-10)


@SETTINGS
@given(st.integers(2, 14), st.integers(2, 80), st.integers(0, 2**32 - 1))
def test_kernel_estimate_is_exact_on_additive_games_at_any_budget(n, max_coalitions, seed):
    rng = np.random.default_rng(seed)
    effects = rng.normal(scale=0.1, size=n)
    v = additive(effects, base=0.4)
    config = AttributionConfig(max_coalitions=max_coalitions)
    masks = sample_coalitions(n, config, rng)
    assert len(masks) <= budget(n, config) and len({m.tobytes() for m in masks}) == len(masks)
    est = estimate(masks, coalition_values(v, masks), config)
    np.testing.assert_allclose(est.phi, effects, atol=1e-9)
    assert est.unpaired == 0
    # Efficiency holds whatever was sampled: the values add up to v(all) - v(empty).
    assert est.phi.sum() == pytest.approx(v[-1] - v[0])


@SETTINGS
@given(st.integers(5, 12), st.integers(0, 2**32 - 1))
def test_kernel_estimate_tracks_exact_shapley_on_games_with_interactions(n, seed):
    rng = np.random.default_rng(seed)
    effects = rng.normal(scale=0.2, size=n)
    pair = rng.normal(scale=0.05, size=(n, n))
    v = game_from_function(
        n, lambda s: float(sum(effects[list(s)]) + sum(pair[i, j] for i in s for j in s if i < j))
    )
    masks = shapley_coalitions(n, 64, rng)
    phi = kernel_shapley(masks, coalition_values(v, masks))
    truth = shapley_exact(v)
    # Small pairwise terms: the estimate stays close and keeps efficiency exactly.
    assert np.abs(phi - truth).max() < 0.25 * np.abs(truth).max() + 0.05
    assert phi.sum() == pytest.approx(truth.sum())


def test_the_budget_is_raised_so_every_segment_is_paired():
    """Review defect: with max_coalitions < n + 2 some singletons went unsampled, value 0."""
    n = 10
    for estimator in ("shapley", "contiguous"):
        config = AttributionConfig(estimator=estimator, max_coalitions=8)
        assert budget(n, config) == n + 2
        masks = sample_coalitions(n, config, np.random.default_rng(0))
        sizes = masks.sum(1)
        assert (sizes == 1).sum() == n and len(masks) == n + 2
        v = additive(np.linspace(-0.1, 0.1, n), 0.3)
        assert estimate(masks, coalition_values(v, masks), config).unpaired == 0


def test_the_old_empty_value_made_credit_follow_sampling_counts():
    """Review defect 1, on a game of the prepended query: v(S) = Q + sum of small effects.

    With v(empty) = 0 each singleton pair carries Q, so the contiguous estimator's values are
    a_j + Q / c_j; with v(empty) = Q (the fix) the same estimator recovers a_j."""
    rng = np.random.default_rng(1)
    n, q = 10, 0.4
    effects = rng.uniform(0, 0.05, size=n)
    v = additive(effects, q)
    config = AttributionConfig(estimator="contiguous", max_coalitions=32)
    wrong_hits = right_hits = 0
    for seed in range(40):
        masks = sample_coalitions(n, config, np.random.default_rng(seed))
        vals = coalition_values(v, masks)
        right = estimate(masks, vals, config).phi
        broken = vals.copy()
        broken[~masks.any(1)] = 0.0
        wrong = estimate(masks, broken, config).phi
        right_hits += int(np.argmax(right) == np.argmax(effects))
        wrong_hits += int(np.argmax(wrong) == np.argmax(effects))
        np.testing.assert_allclose(right, effects, atol=1e-12)
    assert right_hits == 40 and wrong_hits < 20


def test_kernel_weights_and_validation():
    assert kernel_weight(4, 0) == kernel_weight(4, 4) == float("inf")
    assert kernel_weight(4, 1) == pytest.approx(3 / (4 * 1 * 3))
    assert kernel_weight(4, 2) == kernel_weight(4, 2) == pytest.approx(3 / (6 * 2 * 2))
    with pytest.raises(ValueError, match="empty and the full"):
        kernel_shapley(np.eye(3, dtype=bool), np.ones(3))
    with pytest.raises(ConfigError, match="max_coalitions"):
        AttributionConfig(max_coalitions=1).validate()
    with pytest.raises(ConfigError, match="estimator"):
        AttributionConfig(estimator="owen").validate()
    # Deterministic for a seed: coalition draws need no saved state to resume.
    a = sample_coalitions(12, AttributionConfig(), np.random.default_rng(5))
    b = sample_coalitions(12, AttributionConfig(), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
