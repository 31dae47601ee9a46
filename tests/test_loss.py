"""The clipped objective: hand-computed normalizations, ratio 1 on-policy, k3, OSPO == GRPO."""

from __future__ import annotations

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.train.loss import aggregate, k3_kl, policy_loss, token_log_probs

MASK = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=np.float32)
PER_TOKEN = np.array([[1.0, 2.0, 3.0, 100.0], [4.0, 100.0, 100.0, 100.0]], dtype=np.float32)


@pytest.mark.parametrize(
    ("loss_type", "expected", "kwargs"),
    [
        ("grpo", ((1 + 2 + 3) / 3 + 4 / 1) / 2, {}),
        ("bnpo", (1 + 2 + 3 + 4) / 4, {}),
        ("dapo", (1 + 2 + 3 + 4) / 4, {}),
        ("dapo", (1 + 2 + 3 + 4) / 10, {"token_normalizer": 10.0}),
        ("dr_grpo", (1 + 2 + 3 + 4) / (2 * 8), {"max_completion_length": 8}),
    ],
)
def test_aggregation_matches_hand_computed(loss_type, expected, kwargs):
    out = aggregate(mx.array(PER_TOKEN), mx.array(MASK), loss_type, **kwargs)
    assert float(out) == pytest.approx(expected, rel=1e-6)


def test_aggregation_rejects_unknown_type():
    with pytest.raises(ValueError, match="unknown loss_type"):
        aggregate(mx.array(PER_TOKEN), mx.array(MASK), "ppo")


def test_on_policy_ratio_is_one_and_nothing_clipped():
    rng = np.random.default_rng(0)
    logps = mx.array(rng.normal(-2, 1, (3, 5)).astype(np.float32))
    adv = mx.array(rng.normal(0, 2, (3, 5)).astype(np.float32))
    mask = mx.ones((3, 5))
    loss, m = policy_loss(logps, logps, adv, mask, epsilon=0.2, loss_type="bnpo")
    # ratio == 1 exactly: the loss is -mean(A), and no token counts as clipped.
    assert float(loss) == pytest.approx(-float(adv.mean()), rel=1e-6)
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
        assert float(m[key]) == 0.0

    # The gradient wrt logps is -A / N (d ratio / d logp = ratio = 1).
    grad = mx.grad(lambda lp: policy_loss(lp, logps, adv, mask, loss_type="bnpo")[0])(logps)
    np.testing.assert_allclose(np.array(grad), -np.array(adv) / 15, rtol=1e-6)


def test_clipping_low_high_and_region():
    old = mx.zeros((1, 4))
    # ratios: 0.5 (A<0: low clipped), 2.0 (A>0: high clipped), 0.5 with A>0 (not clipped), 1.1
    logps = mx.log(mx.array([[0.5, 2.0, 0.5, 1.1]]))
    adv = mx.array([[-1.0, 1.0, 1.0, 1.0]])
    loss, m = policy_loss(
        logps, old, adv, mx.ones((1, 4)), epsilon=0.2, epsilon_high=0.28, loss_type="bnpo"
    )
    assert float(m["clip_ratio/low_mean"]) == pytest.approx(0.25)
    assert float(m["clip_ratio/high_mean"]) == pytest.approx(0.25)
    assert float(m["clip_ratio/region_mean"]) == pytest.approx(0.5)
    # per token: -min(rA, clip(r)A): 0.8*... token0: -min(-0.5, -0.8) = 0.8; token1: -min(2, 1.28)
    expected = np.mean([0.8, -1.28, -0.5, -1.1])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_k3_zero_at_equal_and_positive_otherwise():
    x = mx.array(np.linspace(-5, 0, 11).astype(np.float32))
    assert float(mx.abs(k3_kl(x, x)).max()) == 0.0
    assert float(k3_kl(x, x - 0.3).min()) > 0.0


def test_beta_adds_kl_and_needs_reference():
    logps = mx.array([[-1.0, -2.0]])
    ref = mx.array([[-1.5, -2.0]])
    adv = mx.zeros((1, 2))
    mask = mx.ones((1, 2))
    loss, m = policy_loss(logps, logps, adv, mask, beta=0.5, ref_logps=ref, loss_type="bnpo")
    k3 = np.exp(-0.5) + 0.5 - 1.0
    assert float(m["kl"]) == pytest.approx(k3 / 2, rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * k3 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(logps, logps, adv, mask, beta=0.5)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(2, 5),
    st.sampled_from(["grpo", "bnpo", "dapo", "dr_grpo"]),
    st.integers(0, 10_000),
)
def test_ospo_uniform_weights_equal_grpo(b, t, groups, loss_type, seed):
    """Uniform attributions (equal token weights) through the credit code give the GRPO loss."""
    from ospo_mlx.attribution import credit

    rng = np.random.default_rng(seed)
    rewards = rng.random(b * groups)
    seq_adv = credit.grpo_advantages(rewards, groups, "group")
    n = b * groups
    lengths = rng.integers(1, t + 1, n)
    mask = np.arange(t)[None, :] < lengths[:, None]
    weights = np.where(mask, rng.uniform(0.1, 1.0, (n, 1)), 0.0)  # one constant per completion
    ospo_adv = credit.ospo_token_advantages(seq_adv, weights, mask, mode="prop", rewards=rewards)
    grpo_adv = np.where(mask, seq_adv[:, None], 0.0)
    logps = mx.array(rng.normal(-2, 0.5, (n, t)).astype(np.float32))
    old = mx.array(rng.normal(-2, 0.5, (n, t)).astype(np.float32))
    kw = {"loss_type": loss_type, "max_completion_length": t, "epsilon": 0.2}
    m = mx.array(mask.astype(np.float32))
    a, _ = policy_loss(logps, old, mx.array(grpo_adv.astype(np.float32)), m, **kw)
    o, _ = policy_loss(logps, old, mx.array(ospo_adv.astype(np.float32)), m, **kw)
    assert float(o) == pytest.approx(float(a), rel=1e-5, abs=1e-6)
    # and non-uniform weights do change it (the comparison above is not vacuous)
    skew = np.where(mask, rng.uniform(0.0, 1.0, (n, t)), 0.0)
    skewed = credit.ospo_token_advantages(seq_adv, skew, mask, mode="prop", rewards=rewards)
    assert np.allclose(skewed, grpo_adv) == bool(np.all(lengths == 1) or np.allclose(seq_adv, 0))


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 5),
    st.integers(2, 12),
    st.floats(0.3, 2.0),
    st.integers(0, 9999),
)
def test_token_log_probs_match_numpy(b, t, v, temperature, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (b, t, v)).astype(np.float32)
    targets = rng.integers(0, v, (b, t))
    lp, ent = token_log_probs(mx.array(logits), mx.array(targets), temperature, with_entropy=True)
    z = logits.astype(np.float64) / temperature
    logp = (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - z.max(-1, keepdims=True)
    )
    ref = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.array(lp), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(ent), -(np.exp(logp) * logp).sum(-1), rtol=1e-4, atol=1e-5)


def _reference_log_probs(logits, targets):
    log_z = mx.logsumexp(logits, axis=-1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    log_p = logits - log_z[..., None]
    return picked - log_z, -(mx.exp(log_p) * log_p).sum(axis=-1)


def _float64_log_probs(logits: np.ndarray, targets: np.ndarray):
    x = logits.astype(np.float64)
    log_p = x - x.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
    return picked, -(np.exp(log_p) * log_p).sum(-1)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 3), positions=st.integers(1, 5), vocab=st.integers(2, 3000),
    scale=st.floats(0.1, 30.0), offset=st.floats(-60.0, 60.0),
    temperature=st.sampled_from([1.0, 0.7, 1.3]), seed=st.integers(0, 2**31 - 1),
)  # fmt: skip
def test_token_log_probs_and_gradient_match_autodiff_of_log_softmax(
    rows, positions, vocab, scale, offset, temperature, seed
):
    # The one-exp-pass log-softmax with its hand-written backward equals autodiff of logsumexp,
    # and log-probs and entropy are float32-accurate against float64 even for logits far from
    # 0 (real models' logits sit around 20-30: no cancellation of logit-sized numbers).
    rng = np.random.default_rng(seed)
    raw = (rng.normal(size=(rows, positions, vocab)) * scale + offset).astype(np.float32)
    logits = mx.array(raw)
    targets = mx.array(rng.integers(0, vocab, (rows, positions)).astype(np.int32))
    weights = mx.array(rng.normal(size=(rows, positions)).astype(np.float32))
    logps, entropy = token_log_probs(logits, targets, temperature, with_entropy=True)
    want_logps, want_entropy = _float64_log_probs(raw / np.float32(temperature), np.array(targets))
    np.testing.assert_allclose(np.array(logps), want_logps, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.array(entropy), want_entropy, rtol=2e-5, atol=2e-5)
    mine = mx.grad(lambda x: (token_log_probs(x, targets, temperature)[0] * weights).sum())
    ref = mx.grad(lambda x: (_reference_log_probs(x / temperature, targets)[0] * weights).sum())
    np.testing.assert_allclose(np.array(mine(logits)), np.array(ref(logits)), rtol=1e-4, atol=1e-5)
