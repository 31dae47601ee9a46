"""Parity of the MLX twin with the NumPy reference on random ragged batches."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ospo_mlx  # noqa: F401  (BLAS before mlx)
from ospo_mlx.attribution import credit, reference

mx = pytest.importorskip("mlx.core")
from ospo_mlx.attribution import mlx_ops  # noqa: E402

SETTINGS = settings(max_examples=25, deadline=None)
ATOL = 1e-5


def ragged_game_batch(rng: np.random.Generator, b: int):
    """Per completion: n_i segments, sampled contiguous coalitions, additive-plus-noise values."""
    masks, values = [], []
    for _ in range(b):
        n = int(rng.integers(0, 11))
        m = reference.contiguous_coalitions(
            n, int(rng.integers(1, 6)), int(rng.integers(2, 30)), rng
        )
        if n and rng.random() < 0.3:  # a duplicate row, which must count once
            m = np.vstack([m, m[rng.integers(len(m)) :][:1]])
        v = (m @ rng.normal(size=n) + 0.3 * rng.normal(size=len(m))).astype(np.float32)
        order = rng.permutation(len(m))  # any row order
        masks.append(m[order])
        values.append(v[order])
    return masks, values


@SETTINGS
@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_owen_contiguous_batch_parity(b, seed):
    rng = np.random.default_rng(seed)
    masks, values = ragged_game_batch(rng, b)
    packed = mlx_ops.pack_coalitions(masks, values)
    phi, unpaired = mlx_ops.owen_contiguous_batch(*packed, return_unpaired=True)
    phi, unpaired = np.array(phi), np.array(unpaired)
    for i, (m, v) in enumerate(zip(masks, values, strict=True)):
        ref, ref_unpaired = reference.owen_contiguous(m, v, return_unpaired=True)
        n = m.shape[1]
        np.testing.assert_allclose(phi[i, :n], ref, atol=ATOL)
        assert (phi[i, n:] == 0).all()
        assert unpaired[i] == ref_unpaired


def ragged_token_batch(rng: np.random.Generator, b: int):
    spans, offsets, phis = [], [], []
    for _ in range(b):
        length = int(rng.integers(0, 80))
        n_cuts = min(length + 1, 2 * int(rng.integers(0, 7))) // 2 * 2
        cuts = np.sort(rng.choice(np.arange(length + 1), size=n_cuts, replace=False))
        sp = np.stack([cuts[::2], cuts[1::2]], 1) if len(cuts) >= 2 else np.zeros((0, 2), int)
        sp = sp[sp[:, 1] > sp[:, 0]]
        bounds = np.sort(rng.integers(0, length + 1, size=rng.integers(1, 30)))
        off = np.stack([bounds[:-1], bounds[1:]], 1) if len(bounds) > 1 else np.zeros((0, 2), int)
        spans.append(sp)
        offsets.append(off)
        phi = rng.normal(size=len(sp)).astype(np.float32)
        if len(sp) and rng.random() < 0.2:
            phi[:] = 0.5  # constant values -> uniform
        phis.append(phi)
    return spans, offsets, phis


@SETTINGS
@given(
    st.integers(1, 8),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.1, 1.0]),
    st.sampled_from(["zero", "minmax", "softmax"]),
    st.sampled_from(["mirror", "paper"]),
)
def test_token_weights_batch_parity(b, seed, floor, normalize, rule):
    rng = np.random.default_rng(seed)
    spans, offsets, phis = ragged_token_batch(rng, b)
    adv = rng.normal(size=b).astype(np.float32)
    sp, sv = mlx_ops.pack_ragged(spans)
    off, tv = mlx_ops.pack_ragged(offsets)
    phi, _ = mlx_ops.pack_ragged(phis, dtype=mx.float32)
    signed = mlx_ops.signed_values_batch(phi, mx.array(adv), rule)
    out = np.array(
        mlx_ops.token_weights_batch(sp, sv, off, tv, signed, floor, normalize, temperature=0.5)
    )
    for i in range(b):
        ref_phi = credit.signed_values(phis[i], float(adv[i]), rule)
        ref = credit.token_weights(spans[i], offsets[i], ref_phi, floor, normalize, 0.5)
        np.testing.assert_allclose(out[i, : len(ref)], ref, atol=ATOL)
        assert (out[i, len(ref) :] == 0).all()


@SETTINGS
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["group", "batch", "none"]),
)
@example(groups=1, group_size=2, seed=2952, scale="group")  # near-equal pair: found by CI
def test_grpo_advantages_parity(groups, group_size, seed, scale):
    rewards = np.random.default_rng(seed).random(groups * group_size).astype(np.float32)
    out = mlx_ops.grpo_advantages(mx.array(rewards), group_size, scale)
    ref = credit.grpo_advantages(rewards, group_size, scale)
    # float32 rounding of R (~eps32 * |R|) is amplified by 1 / (std + eps): near-equal rewards
    # in a group make the float64 reference and the float32 twin differ by more than 1e-5.
    raw = credit.grpo_advantages(rewards, group_size, "none")
    divisor = np.where(ref != 0, np.abs(raw) / np.maximum(np.abs(ref), 1e-30), 1.0)
    amplified = 8 * np.finfo(np.float32).eps * np.abs(rewards).max() / divisor.min()
    np.testing.assert_allclose(np.array(out), ref, atol=ATOL + amplified, rtol=1e-5)


@SETTINGS
@given(
    st.integers(1, 8),
    st.integers(1, 40),
    st.integers(0, 2**32 - 1),
    st.sampled_from(["prop", "rank", "hybrid", "uniform"]),
    st.sampled_from([None, 0.5, 2.0]),
)
def test_token_advantages_parity(b, t, seed, mode, clip):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    # Weights with ties (shared segment values) and zeros, float32-exact for both sides.
    weights = rng.choice([0.0, 0.25, 0.5, 1.0], size=(b, t)) * (rng.random((b, t)) < 0.5)
    weights = np.where(rng.random((b, t)) < 0.5, weights, rng.random((b, t))).astype(np.float32)
    rewards = np.where(rng.random(b) < 0.3, 0.0, rng.random(b)).astype(np.float32)
    adv = rng.normal(size=b).astype(np.float32)
    out = mlx_ops.ospo_token_advantages(
        mx.array(adv), mx.array(weights), mx.array(mask), mode, mx.array(rewards), 0.3, clip
    )
    ref = credit.ospo_token_advantages(adv, weights, mask, mode, rewards, 0.3, clip)
    np.testing.assert_allclose(np.array(out), ref, atol=ATOL, rtol=1e-5)
    # format tokens (outside segments) keeping the sequence advantage
    seg = rng.random((b, t)) < 0.6
    out = mlx_ops.ospo_token_advantages(
        mx.array(adv), mx.array(weights), mx.array(mask), mode, mx.array(rewards), 0.3, clip,
        in_segments=mx.array(seg),
    )  # fmt: skip
    ref = credit.ospo_token_advantages(adv, weights, mask, mode, rewards, 0.3, clip, seg)
    np.testing.assert_allclose(np.array(out), ref, atol=ATOL, rtol=1e-5)


def test_average_ranks_match_reference():
    x = mx.array([[0.5, 0.1, 0.5, 0.9, 0.0], [3.0, 3.0, 3.0, 1.0, 2.0]])
    valid = mx.array([[True, True, True, True, False], [True] * 5])
    np.testing.assert_allclose(
        np.array(mlx_ops.average_ranks(x, valid)), [[2.5, 1, 2.5, 4, 0], [4, 4, 4, 1, 2]]
    )


def test_pack_ragged_shapes():
    vals, valid = mlx_ops.pack_ragged([[1, 2, 3], [], [4]], pad=-1)
    np.testing.assert_array_equal(np.array(vals), [[1, 2, 3], [-1, -1, -1], [4, -1, -1]])
    np.testing.assert_array_equal(np.array(valid).sum(1), [3, 0, 1])
    spans, valid = mlx_ops.pack_ragged([[(0, 2), (3, 5)], [(1, 4)]])
    assert spans.shape == (2, 2, 2) and np.array(valid).tolist() == [[True, True], [True, False]]
    spans, valid = mlx_ops.pack_ragged([np.zeros((0, 2), int), np.zeros((0, 2), int)])
    assert spans.shape == (2, 1, 2) and not np.array(valid).any()
    empty, valid = mlx_ops.pack_ragged([[], []])
    assert empty.shape == (2, 1) and not np.array(valid).any()
    m, v, cv, pv = mlx_ops.pack_coalitions(
        [reference.contiguous_coalitions(3), reference.contiguous_coalitions(1)],
        [np.arange(7.0), np.arange(2.0)],
    )
    assert m.shape == (2, 7, 3) and v.shape == (2, 7)
    assert np.array(cv).sum() == 9 and np.array(pv).sum() == 4


def test_end_to_end_batch_matches_reference():
    """Coalitions -> Owen values -> token weights -> token advantages, both paths."""
    rng = np.random.default_rng(5)
    b, g = 8, 4
    masks, values = ragged_game_batch(rng, b)
    spans = [np.stack([np.arange(m.shape[1]) * 6, np.arange(m.shape[1]) * 6 + 5], 1) for m in masks]
    offsets = [
        np.stack([np.arange(0, 6 * m.shape[1], 3), np.arange(3, 6 * m.shape[1] + 3, 3)], 1)
        for m in masks
    ]
    rewards = np.array(
        [v[m.all(1)].max() if m.shape[1] else 0.0 for m, v in zip(masks, values, strict=True)],
        np.float32,
    )
    seq_adv = credit.grpo_advantages(rewards, g)

    ref_w = [
        credit.token_weights(sp, off, reference.owen_contiguous(m, v))
        for sp, off, m, v in zip(spans, offsets, masks, values, strict=True)
    ]
    wt, tmask = mlx_ops.pack_ragged(ref_w, dtype=mx.float32)
    ref = credit.ospo_token_advantages(seq_adv, np.array(wt), np.array(tmask), "prop", rewards)

    phi = mlx_ops.owen_contiguous_batch(*mlx_ops.pack_coalitions(masks, values))
    sp, sv = mlx_ops.pack_ragged(spans)
    off, tv = mlx_ops.pack_ragged(offsets)
    sp = sp if sp.ndim == 3 else sp.reshape(b, -1, 2)
    weights = mlx_ops.token_weights_batch(sp, sv, off, tv, phi[:, : sp.shape[1]])
    adv = mlx_ops.grpo_advantages(mx.array(rewards), g)
    out = mlx_ops.ospo_token_advantages(adv, weights, tv, "prop", mx.array(rewards))
    np.testing.assert_allclose(np.array(out), ref, atol=1e-4)


@SETTINGS
@given(
    st.lists(st.integers(1, 11), min_size=1, max_size=5),
    st.integers(0, 2**32 - 1),
    st.sampled_from([8, 24, 64]),
)
def test_kernel_shapley_batch_parity(sizes, seed, budget):
    from ospo_mlx.attribution.estimators import kernel_shapley, shapley_coalitions

    rng = np.random.default_rng(seed)
    masks, values, refs = [], [], []
    for n in sizes:
        v = rng.normal(scale=0.3, size=1 << n)
        m = shapley_coalitions(n, budget, rng)
        masks.append(m)
        values.append(reference.coalition_values(v, m))
        refs.append(kernel_shapley(m, values[-1]))
    out = np.array(mlx_ops.kernel_shapley_batch(*mlx_ops.pack_coalitions(masks, values)))
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(out[i, : len(ref)], ref, atol=1e-4)
        assert (out[i, len(ref) :] == 0).all()


@SETTINGS
@given(st.lists(st.integers(2, 9), min_size=1, max_size=5), st.integers(0, 2**32 - 1))
def test_control_variate_batch_parity(sizes, seed):
    from ospo_mlx.attribution.estimators import shapley_coalitions
    from ospo_mlx.attribution.surrogate import (
        SurrogateGame,
        control_variate_shapley,
        shapley_of,
        surrogate_masks,
    )

    rng = np.random.default_rng(seed)
    masks, values, stand_ins, phis, refs = [], [], [], [], []
    for n in sizes:
        v = rng.normal(scale=0.3, size=1 << n)
        near = v + rng.normal(scale=0.05, size=1 << n)  # a stand-in close to v
        m = shapley_coalitions(n, n + 4, rng)
        game_masks = surrogate_masks(m, 64, rng)
        keys = game_masks.astype(np.int64) @ (1 << np.arange(n))
        game = SurrogateGame(game_masks, near[keys])
        masks.append(m)
        values.append(reference.coalition_values(v, m))
        stand_ins.append(reference.coalition_values(near, m))
        phis.append(shapley_of(game))
        refs.append(control_variate_shapley(m, values[-1], game))
    packed = mlx_ops.pack_coalitions(masks, values)
    stand_in = mlx_ops.pack_coalitions(masks, stand_ins)[1]
    width = packed[0].shape[-1]
    phi = np.zeros((len(sizes), width), np.float32)
    for i, p in enumerate(phis):
        phi[i, : len(p)] = p
    out = np.array(mlx_ops.control_variate_batch(packed[0], packed[1], stand_in, mx.array(phi),
                                                 packed[2], packed[3]))  # fmt: skip
    for i, ref in enumerate(refs):
        np.testing.assert_allclose(out[i, : len(ref)], ref, atol=1e-4)
        assert (out[i, len(ref) :] == 0).all()
