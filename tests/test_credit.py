"""Token weights and token advantages (NumPy reference)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution.credit import (
    grpo_advantages,
    normalize_values,
    ospo_token_advantages,
    segment_token_mask,
    signed_values,
)
from ospo_mlx.attribution.credit import token_weights as _token_weights
from ospo_mlx.errors import ConfigError

SETTINGS = settings(max_examples=60, deadline=None)
MODES = ("prop", "rank", "hybrid", "uniform")


@st.composite
def batches(draw, max_b: int = 6, max_t: int = 12):
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    weights = rng.random((b, t))
    # Some rows with ties and zeros, as real weights have (tokens of one segment share a value).
    weights[:, ::3] = 0.0
    rewards = rng.random(b)
    rewards[rng.random(b) < 0.3] = 0.0
    return rng.normal(size=b), weights, mask, rewards


# ---- token weights ------------------------------------------------------------------------


def token_weights(*args, **kwargs):
    """The paper's min-max normalization, which these hand computations assume."""
    return _token_weights(*args, **{"normalize": "minmax", **kwargs})


def test_token_weights_by_hand():
    # text: "red shoes, with laces" ; segments "red shoes" (0,9) and "with laces" (11,21)
    spans = [(0, 9), (11, 21)]
    offsets = [(0, 0), (0, 3), (3, 9), (9, 10), (10, 15), (15, 21), (21, 21)]
    w = token_weights(spans, offsets, np.array([0.2, 0.8]))
    # BOS-like zero-width token and the EOS get the floor; " with" keeps full weight (leading
    # space does not dilute it); "," is outside every segment.
    np.testing.assert_allclose(w, [0, 0, 0, 0, 1, 1, 0])
    w = token_weights(spans, offsets, np.array([0.2, 0.8]), floor=0.25)
    np.testing.assert_allclose(w, [0.25, 0, 0, 0.25, 1, 1, 0.25])


def test_token_weights_overlap_weighted_and_zero_width_inside():
    spans = [(0, 4), (4, 10)]
    phi = np.array([1.0, 3.0])  # normalized: 0 and 1
    # Token (2, 6) covers 2 chars of each segment -> 0.5; (3, 10) covers 1 and 6 -> 6/7.
    np.testing.assert_allclose(token_weights(spans, [(2, 6), (3, 10)], phi), [0.5, 6 / 7])
    # A zero-width token strictly inside a segment (byte piece) takes that segment's value.
    np.testing.assert_allclose(token_weights(spans, [(6, 6), (4, 4), (10, 10)], phi), [1, 0, 0])


def test_token_weights_constant_values_are_uniform():
    w = token_weights([(0, 3), (4, 7)], [(0, 3), (3, 4), (4, 7)], np.array([0.4, 0.4]))
    np.testing.assert_allclose(w, [1, 0, 1])
    assert token_weights([], [(0, 2), (2, 3)], np.zeros(0), floor=0.5).tolist() == [0.5, 0.5]
    assert token_weights([(0, 2)], np.zeros((0, 2)), np.ones(1)).shape == (0,)


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_token_weights_in_unit_interval(seed, floor):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, 60), size=rng.integers(2, 12), replace=False))
    spans = [(int(a), int(b)) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]
    bounds = np.sort(rng.integers(0, 61, size=rng.integers(1, 20)))
    offsets = np.stack([bounds[:-1], bounds[1:]], 1) if len(bounds) > 1 else np.zeros((0, 2))
    w = token_weights(spans, offsets, rng.normal(size=len(spans)), floor=floor)
    assert w.shape == (len(offsets),)
    assert ((w >= -1e-12) & (w <= 1 + 1e-12)).all()
    if spans:
        # The best segment's fully-covered tokens get exactly 1.
        phi = rng.normal(size=len(spans))
        best = spans[int(np.argmax(phi))]
        assert token_weights(spans, [best], phi)[0] == pytest.approx(1.0)


def test_token_weights_validation():
    with pytest.raises(ValueError):
        token_weights([(0, 2)], [(0, 1)], np.ones(2))
    with pytest.raises(ValueError):
        token_weights([(0, 2)], [(3, 1)], np.ones(1))
    with pytest.raises(ConfigError):
        token_weights([(0, 2)], [(0, 1)], np.ones(1), floor=2.0)
    np.testing.assert_allclose(
        normalize_values(np.array([2.0, 4.0, 3.0]), "minmax"), [0, 1, 0.5]
    )
    with pytest.raises(ConfigError):
        normalize_values(np.ones(2), "rank")
    with pytest.raises(ConfigError):
        signed_values(np.ones(2), -1.0, "flip")


# ---- GRPO advantages ----------------------------------------------------------------------


def test_grpo_advantages_match_trl_formula():
    rewards = np.array([1.0, 0.0, 0.5, 0.5, 0.2, 0.2, 0.9, 0.1])
    g = rewards.reshape(2, 4)
    expect = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(grpo_advantages(rewards, 4), expect.reshape(-1))
    expect_b = (g - g.mean(1, keepdims=True)).reshape(-1) / (rewards.std(ddof=1) + 1e-4)
    np.testing.assert_allclose(grpo_advantages(rewards, 4, scale="batch"), expect_b)
    np.testing.assert_allclose(
        grpo_advantages(rewards, 4, scale="none"), (g - g.mean(1, keepdims=True)).reshape(-1)
    )
    np.testing.assert_allclose(
        grpo_advantages(rewards, 4, scale=False), grpo_advantages(rewards, 4, scale="none")
    )
    # Identical rewards in a group: zero advantage, no division blow-up.
    assert (grpo_advantages(np.ones(4), 4) == 0).all()
    assert (grpo_advantages(np.arange(3.0), 1) == 0).all()
    with pytest.raises(ValueError):
        grpo_advantages(np.ones(5), 4)
    with pytest.raises(ConfigError):
        grpo_advantages(np.ones(4), 4, scale="token")


# ---- token advantages ---------------------------------------------------------------------


@SETTINGS
@given(batches(), st.sampled_from(MODES), st.floats(0, 1))
def test_token_mean_equals_sequence_advantage(batch, mode, alpha):
    adv, weights, mask, rewards = batch
    out = ospo_token_advantages(adv, weights, mask, mode, rewards=rewards, alpha=alpha)
    assert out.shape == weights.shape
    assert (out[~mask] == 0).all()
    np.testing.assert_allclose(out.sum(1) / mask.sum(1), adv, atol=1e-10)


@SETTINGS
@given(batches(), st.sampled_from(MODES))
def test_uniform_weights_reduce_to_grpo(batch, mode):
    adv, weights, mask, rewards = batch
    out = ospo_token_advantages(adv, np.full_like(weights, 0.37), mask, mode, rewards=rewards)
    np.testing.assert_allclose(out, np.where(mask, adv[:, None], 0.0), atol=1e-12)


@SETTINGS
@given(batches(), st.sampled_from(MODES))
def test_zero_reward_keeps_the_advantage(batch, mode):
    adv, weights, mask, _ = batch
    adv = -np.abs(adv) - 0.1  # failed completions: negative advantage
    out = ospo_token_advantages(adv, weights, mask, mode, rewards=np.zeros(len(adv)))
    np.testing.assert_allclose(out, np.where(mask, adv[:, None], 0.0), atol=1e-12)


def test_prop_is_proportional_to_credit():
    w = np.array([[0.0, 1.0, 3.0, 0.0]])
    mask = np.array([[True, True, True, False]])
    out = ospo_token_advantages(np.array([2.0]), w, mask, "prop", rewards=np.array([0.5]))
    # p = (0, 1/4, 3/4); A = 3 * p * 2
    np.testing.assert_allclose(out, [[0.0, 1.5, 4.5, 0.0]])
    # Negative reward: the shaped credits flip sign but p (their share) does not.
    neg = ospo_token_advantages(np.array([2.0]), w, mask, "prop", rewards=np.array([-0.5]))
    np.testing.assert_allclose(neg, out)


def test_rank_direction_highest_credit_gets_largest_weight():
    w = np.array([[0.1, 0.9, 0.5, 0.5]])
    mask = np.ones_like(w, dtype=bool)
    out = ospo_token_advantages(np.array([1.0]), w, mask, "rank", rewards=np.array([1.0]))
    # ranks 1, 4, 2.5, 2.5 -> sum 10; A = 4 * rank / 10
    np.testing.assert_allclose(out, [[0.4, 1.6, 1.0, 1.0]])
    assert np.argmax(out) == np.argmax(w) and np.argmin(out) == np.argmin(w)


def test_hybrid_interpolates():
    w = np.array([[1.0, 3.0]])
    mask = np.ones_like(w, dtype=bool)
    adv = np.array([1.0])
    prop = ospo_token_advantages(adv, w, mask, "prop")
    uni = ospo_token_advantages(adv, w, mask, "uniform")
    hyb = ospo_token_advantages(adv, w, mask, "hybrid", alpha=0.25)
    np.testing.assert_allclose(hyb, 0.25 * prop + 0.75 * uni)
    np.testing.assert_allclose(ospo_token_advantages(adv, w, mask, "hybrid", alpha=1.0), prop)


def test_clip_bounds_by_batch_std():
    adv = np.array([2.0, -2.0])
    w = np.array([[0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    mask = np.ones_like(w, dtype=bool)
    out = ospo_token_advantages(adv, w, mask, "prop", clip=1.5)
    assert np.abs(out).max() == pytest.approx(1.5 * adv.std())
    np.testing.assert_allclose(out[0], [0, 0, 3.0])  # 6.0 clipped to 1.5 * 2
    # Zero batch std: no clipping (it would erase every advantage).
    same = ospo_token_advantages(np.array([1.0, 1.0]), w, mask, "prop", clip=0.5)
    np.testing.assert_allclose(same[0], [0, 0, 3.0])


def test_empty_rows_and_validation():
    out = ospo_token_advantages(np.array([1.0]), np.ones((1, 3)), np.zeros((1, 3), bool), "rank")
    assert (out == 0).all()
    with pytest.raises(ConfigError):
        ospo_token_advantages(np.ones(1), np.ones((1, 2)), np.ones((1, 2), bool), "softmax")
    with pytest.raises(ConfigError):
        ospo_token_advantages(np.ones(1), np.ones((1, 2)), np.ones((1, 2), bool), alpha=2.0)
    with pytest.raises(ValueError):
        ospo_token_advantages(np.ones(2), np.ones((1, 2)), np.ones((1, 2), bool))


# ---- format tokens keep the sequence advantage (in_segments) ------------------------------


@SETTINGS
@given(batches(), st.sampled_from(MODES), st.integers(0, 2**32 - 1))
def test_tokens_outside_segments_keep_the_sequence_advantage(batch, mode, seed):
    adv, weights, mask, rewards = batch
    seg = np.random.default_rng(seed).random(mask.shape) < 0.6
    out = ospo_token_advantages(adv, weights, mask, mode, rewards=rewards, in_segments=seg)
    outside = mask & ~seg
    np.testing.assert_array_equal(out[outside], np.broadcast_to(adv[:, None], mask.shape)[outside])
    assert (out[~mask] == 0).all()
    np.testing.assert_allclose(
        out.sum(1) / np.maximum(mask.sum(1), 1), np.where(mask.any(1), adv, 0), atol=1e-10
    )
    # Segment tokens get exactly the split the plain function makes over segment tokens alone.
    inner = ospo_token_advantages(adv, weights, mask & seg, mode, rewards=rewards)
    np.testing.assert_allclose(np.where(mask & seg, out, 0.0), inner, atol=1e-12)
    # Every token in a segment: the same as without the mask; none: GRPO.
    np.testing.assert_allclose(
        ospo_token_advantages(
            adv, weights, mask, mode, rewards=rewards, in_segments=np.ones_like(mask)
        ),
        ospo_token_advantages(adv, weights, mask, mode, rewards=rewards),
        atol=1e-12,
    )
    np.testing.assert_allclose(
        ospo_token_advantages(
            adv, weights, mask, mode, rewards=rewards, in_segments=np.zeros_like(mask)
        ),
        np.where(mask, adv[:, None], 0.0),
        atol=1e-12,
    )


def test_segment_token_mask_marks_the_tokens_weighted_by_segments():
    text = "<answer>red shoes, size 9</answer>"
    spans = [(8, 17), (19, 25)]
    offsets = [(0, 8), (8, 12), (12, 17), (17, 18), (18, 25), (25, 34), (34, 34)]
    mask = segment_token_mask(spans, offsets)
    np.testing.assert_array_equal(mask, [False, True, True, False, True, False, False])
    w = token_weights(spans, offsets, np.array([1.0, 0.0]), floor=0.25)
    np.testing.assert_array_equal(w[~mask], 0.25)  # exactly the floor tokens
    assert text[8:17] == "red shoes" and text[19:25] == "size 9"
    assert not segment_token_mask([], offsets).any()


# ---- normalizations and the negative-advantage rule (issue: credit fidelity) ---------------


def one_token_per_segment(phi, advantage, normalize, rule):
    """Token advantages of a completion whose n tokens are its n segments, one each."""
    n = len(phi)
    spans = [(2 * j, 2 * j + 1) for j in range(n)]
    signed = signed_values(np.asarray(phi), advantage, rule)
    w = _token_weights(spans, spans, signed, normalize=normalize)
    return ospo_token_advantages(np.array([advantage]), w[None], np.ones((1, n), bool))[0]


def test_paper_rule_pushes_the_helpful_segment_down_most():
    # The review's example: A = -1, phi = [0.20, 0.02, -0.10].
    out = one_token_per_segment([0.20, 0.02, -0.10], -1.0, "minmax", "paper")
    np.testing.assert_allclose(out, [-3 / 1.4, -1.2 / 1.4, 0.0])


def test_mirror_rule_blames_the_segment_that_hurt():
    phi = [0.20, 0.02, -0.10]
    # min-max of -phi = [-0.2, -0.02, 0.1] -> [0, 0.6, 1]: p = [0, 0.375, 0.625].
    np.testing.assert_allclose(
        one_token_per_segment(phi, -1.0, "minmax", "mirror"), [0.0, -1.125, -1.875]
    )
    # Anchored at zero, only the segment that hurt (phi < 0) takes the blame.
    np.testing.assert_allclose(one_token_per_segment(phi, -1.0, "zero", "mirror"), [0, 0, -3.0])
    # A positive advantage is shared by the segments that helped, in proportion.
    np.testing.assert_allclose(
        one_token_per_segment(phi, 1.0, "zero", "mirror"), [3 * 0.2 / 0.22, 3 * 0.02 / 0.22, 0]
    )


def test_zero_anchored_weights_are_not_all_or_nothing():
    # phi = [0.30, 0.31]: min-max hands everything to one segment, anchored at 0 splits evenly.
    np.testing.assert_allclose(one_token_per_segment([0.30, 0.31], 1.0, "minmax", "mirror"), [0, 2])
    np.testing.assert_allclose(
        one_token_per_segment([0.30, 0.31], 1.0, "zero", "mirror"), [2 * 30 / 61, 2 * 31 / 61]
    )
    # No segment helped: no preference, the advantage spreads uniformly (GRPO).
    np.testing.assert_allclose(one_token_per_segment([-0.1, 0.0], 1.0, "zero", "mirror"), [1, 1])


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.sampled_from(("zero", "minmax", "softmax")))
def test_normalizations_keep_order_and_unit_range(seed, method):
    rng = np.random.default_rng(seed)
    phi = rng.normal(scale=0.2, size=rng.integers(1, 9))
    w = normalize_values(phi, method, temperature=0.1)
    assert ((w >= 0) & (w <= 1 + 1e-12)).all()
    # Weakly monotone in phi, and the best segment gets 1 unless nothing helped (zero).
    order = np.argsort(phi, kind="stable")
    assert (np.diff(w[order]) >= -1e-12).all()
    if method != "zero" or phi.max() > 1e-12:
        assert w.max() == pytest.approx(1.0)
    else:
        assert (w == 0).all()
    if method == "zero":
        np.testing.assert_allclose(w, np.clip(phi, 0, None) / max(phi.max(), 1e-300) * (phi.max() > 1e-12))


@SETTINGS
@given(st.integers(0, 2**32 - 1), st.floats(-3, 3).filter(lambda a: abs(a) > 1e-3))
def test_mirror_is_the_paper_rule_on_negated_values(seed, advantage):
    phi = np.random.default_rng(seed).normal(size=5)
    paper = signed_values(phi, advantage, "paper")
    mirror = signed_values(phi, advantage, "mirror")
    np.testing.assert_array_equal(paper, phi)
    np.testing.assert_array_equal(mirror, phi if advantage > 0 else -phi)
