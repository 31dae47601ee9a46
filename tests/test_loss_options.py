"""TRL's policy-update options in the loss, against hand computations (tests/test_loss.py has
the base objective): importance_sampling_level, delta, mask_truncated_completions and
top_entropy_quantile, each combined with OSPO's per-token advantages."""

from __future__ import annotations

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import math

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.train.loss import (
    high_entropy_mask,
    log_importance_weights,
    policy_loss,
    truncation_mask,
)


def test_sequence_ratio_is_the_length_normalized_mean_of_token_log_ratios():
    old = mx.zeros((2, 3))
    logps = mx.log(mx.array([[0.5, 2.0, 7.0], [3.0, 1.0, 1.0]]))
    mask = mx.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # row 0: the 7.0 is padding
    tok = np.exp(np.array(log_importance_weights(logps, old, mask, "token")))
    np.testing.assert_allclose(tok, [[0.5, 2.0, 7.0], [3.0, 1.0, 1.0]], rtol=1e-6)
    seq = np.exp(np.array(log_importance_weights(logps, old, mask, "sequence")))
    # row 0: exp((ln .5 + ln 2) / 2) = 1; row 1: exp(ln 3 / 3) = 3^(1/3); padding ignored
    np.testing.assert_allclose(seq[0], [1.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(seq[1], [3 ** (1 / 3)] * 3, rtol=1e-6)
    st_ = np.exp(np.array(log_importance_weights(logps, old, mask, "sequence_token")))
    np.testing.assert_allclose(st_, seq, rtol=1e-6)  # same value, different gradient
    with pytest.raises(ValueError, match="importance_sampling_level"):
        log_importance_weights(logps, old, mask, "word")


def test_sequence_level_loss_hand_computed():
    old = mx.zeros((1, 2))
    logps = mx.log(mx.array([[0.5, 2.0]]))
    adv, mask = mx.ones((1, 2)), mx.ones((1, 2))
    tok, _ = policy_loss(logps, old, adv, mask, epsilon=0.2, loss_type="bnpo")
    seq, m = policy_loss(
        logps, old, adv, mask, epsilon=0.2, loss_type="bnpo", importance_sampling_level="sequence"
    )
    # token: -min(0.5, 0.8) and -min(2, 1.2) -> mean(-0.5, -1.2); sequence: ratio 1 -> -1
    assert float(tok) == pytest.approx((-0.5 - 1.2) / 2, rel=1e-6)
    assert float(seq) == pytest.approx(-1.0, rel=1e-6)
    assert float(m["clip_ratio/region_mean"]) == 0.0  # the sequence ratio 1 is not clipped


def test_gspo_gradient_collapses_ospo_credit_and_gspo_token_keeps_it():
    """On-policy with OSPO advantages [3, -1] (mean 1 = A), bnpo over 2 tokens:
    token and sequence_token: d/dl_t = -A_t / 2 = [-1.5, 0.5];
    sequence: every token gets -(sum A_t) * (1/2) / 2 = -0.5, GRPO's gradient for A = 1."""
    logps = mx.array([[-1.0, -2.0]])
    adv, mask = mx.array([[3.0, -1.0]]), mx.ones((1, 2))

    def grad(level):
        return np.array(
            mx.grad(
                lambda lp: policy_loss(
                    lp, logps, adv, mask, loss_type="bnpo", importance_sampling_level=level
                )[0]
            )(logps)
        )

    np.testing.assert_allclose(grad("token"), [[-1.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(grad("sequence_token"), [[-1.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(grad("sequence"), [[-0.5, -0.5]], rtol=1e-6)


def test_delta_caps_the_unclipped_ratio_for_negative_advantages():
    old = mx.zeros((1, 3))
    logps = mx.log(mx.array([[3.0, 3.0, 1.1]]))
    adv, mask = mx.array([[-1.0, 1.0, -1.0]]), mx.ones((1, 3))
    plain, _ = policy_loss(logps, old, adv, mask, epsilon=0.2, loss_type="bnpo")
    capped, _ = policy_loss(logps, old, adv, mask, epsilon=0.2, loss_type="bnpo", delta=1.5)
    # A<0, r=3: -min(-3, -1.2) = 3, with delta -min(-1.5, -1.2) = 1.5;
    # A>0, r=3: -min(3, 1.2) = -1.2 either way; A<0, r=1.1 < delta: -min(-1.1, -1.1) = 1.1
    assert float(plain) == pytest.approx((3.0 - 1.2 + 1.1) / 3, rel=1e-6)
    assert float(capped) == pytest.approx((1.5 - 1.2 + 1.1) / 3, rel=1e-6)
    # the capped token has no gradient left (the bound is a constant)
    g = mx.grad(
        lambda lp: policy_loss(lp, old, adv, mask, epsilon=0.2, loss_type="bnpo", delta=1.5)[0]
    )(logps)
    assert float(g[0, 0]) == 0.0 and float(g[0, 2]) != 0.0


def test_masked_truncated_completion_contributes_nothing_whatever_its_credit():
    mask = mx.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    finished = mx.array([True, False])
    kept = truncation_mask(mask, finished)
    np.testing.assert_array_equal(np.array(kept), [[1, 1, 1], [0, 0, 0]])
    rng = np.random.default_rng(0)
    logps = mx.array(rng.normal(-2, 1, (2, 3)).astype(np.float32))
    old = mx.array(rng.normal(-2, 1, (2, 3)).astype(np.float32))
    for credit in ([5.0, -50.0, 0.0], [1e3, 1e3, 0.0]):  # any OSPO token advantages on row 1
        adv = mx.array([[0.5, -0.25, 1.0], credit])
        for loss_type in ("grpo", "bnpo", "dapo", "dr_grpo"):
            kw = {"loss_type": loss_type, "max_completion_length": 3}
            full, _ = policy_loss(logps, old, adv, kept, **kw)
            alone, _ = policy_loss(logps[:1], old[:1], adv[:1], kept[:1], **kw)
            # row 1 adds nothing; grpo and dr_grpo still count it in their per-sequence means
            scale = 0.5 if loss_type in ("grpo", "dr_grpo") else 1.0
            assert float(full) == pytest.approx(scale * float(alone), rel=1e-6)
            g = mx.grad(lambda lp, adv=adv, kw=kw: policy_loss(lp, old, adv, kept, **kw)[0])(logps)
            assert float(mx.abs(g[1]).max()) == 0.0


def test_high_entropy_mask_hand_computed():
    ent = mx.array([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 0.0, 0.0]])
    mask = mx.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # real entropies 1..5; rho = 0.4 -> the 0.6 quantile: pos 0.6*4 = 2.4 -> 3 + 0.4 = 3.4
    kept = np.array(high_entropy_mask(ent, mask, 0.4))
    np.testing.assert_array_equal(kept, [[0, 0, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(np.array(high_entropy_mask(ent, mask, 1.0)), np.array(mask))
    # rho = 0: the 1.0 quantile is the max, only the top token keeps its gradient
    np.testing.assert_array_equal(np.array(high_entropy_mask(ent, mask, 0.0)).sum(), 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 7), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_high_entropy_mask_matches_numpy_quantile(b, t, rho, seed):
    rng = np.random.default_rng(seed)
    ent = rng.gamma(2.0, 1.0, (b, t)).astype(np.float32)
    lengths = rng.integers(1, t + 1, b)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    kept = np.array(high_entropy_mask(mx.array(ent), mx.array(mask), rho))
    real = ent[mask > 0].astype(np.float64)
    threshold = np.quantile(real, 1.0 - rho) if rho < 1 else -np.inf
    expected = (mask > 0) & (ent >= threshold - 1e-5 * (abs(threshold) + 1))
    close = np.abs(ent - threshold) <= 1e-4 * (abs(threshold) + 1)  # float32 ties at the cut
    # at a float32 tie with the cut, either side is right (rho = 0.99999: threshold ~ min)
    assert np.all(((kept > 0) == expected) | ((mask > 0) & close))
    # at least the top rho share of the tokens keeps its gradient
    assert kept.sum() >= math.floor(rho * real.size - 1e-9)


def test_top_entropy_quantile_masks_after_ospo_redistribution():
    """The entropy mask multiplies the per-token loss built from OSPO's token advantages: a
    low-entropy token carries no gradient whatever its credit, and the normalizer is unchanged."""
    logps = mx.array([[-1.0, -2.0, -3.0, -0.5]])
    adv = mx.array([[4.0, -2.0, 1.0, 1.0]])  # OSPO credit, mean 1
    ent = mx.array([[0.1, 2.0, 3.0, 0.2]])
    mask = mx.ones((1, 4))

    def loss(lp):
        return policy_loss(
            lp, logps, adv, mask, loss_type="dapo", entropy=ent, top_entropy_quantile=0.5
        )[0]

    # the 0.5 quantile of [0.1, 0.2, 2, 3] is 1.1: tokens 1 and 2 keep -A_t / 4
    assert float(loss(logps)) == pytest.approx(-(-2.0 + 1.0) / 4, rel=1e-6)
    np.testing.assert_allclose(np.array(mx.grad(loss)(logps)), [[0.0, 0.5, -0.25, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logps, logps, adv, mask, top_entropy_quantile=0.5)
