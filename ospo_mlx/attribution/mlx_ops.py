"""MLX twin of the attribution math, vectorized over the whole batch (no loop per completion).

Ragged per-completion data (segments, coalitions, tokens) is padded to rectangles with
validity masks; `pack_ragged` and `pack_coalitions` build them from Python lists. Every
function matches its NumPy reference in `reference.py` / `credit.py` (tested to 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import mlx.core as mx
import numpy as np

from ospo_mlx.attribution.config import NEGATIVE_RULES, NORMALIZATIONS
from ospo_mlx.attribution.credit import ZERO_REWARD, _check_floor, _check_mode, _check_scale
from ospo_mlx.errors import ConfigError


def pack_ragged(
    rows: Sequence[Sequence], pad: float | int = 0, dtype: mx.Dtype | None = None
) -> tuple[mx.array, mx.array]:
    """Pad rows of different lengths into `(B, L, ...)` plus a validity mask `(B, L)`.

    Row items may be scalars or fixed-size tuples (e.g. `(start, end)` spans); L is the longest
    row (at least 1, so empty batches keep a usable shape).
    """
    arrays = [np.asarray(r) for r in rows]
    # Item shape from any row that shows it, even an empty (0, 2) array of spans.
    inner = next((a.shape[1:] for a in arrays if a.size or a.ndim > 1), ())
    length = max([len(a) for a in arrays] + [1])
    dt = (
        np.result_type(*[a.dtype for a in arrays if a.size])
        if any(a.size for a in arrays)
        else None
    )
    out = np.full((len(arrays), length, *inner), pad, dtype=dt or np.float32)
    valid = np.zeros((len(arrays), length), dtype=bool)
    for i, a in enumerate(arrays):
        if len(a):
            out[i, : len(a)] = a.reshape(len(a), *inner)
            valid[i, : len(a)] = True
    values = mx.array(out) if dtype is None else mx.array(out).astype(dtype)
    return values, mx.array(valid)


def pack_coalitions(
    masks: Sequence[np.ndarray], values: Sequence[np.ndarray]
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """Pad per-completion coalitions `(C_i, n_i)` and values `(C_i,)` for `owen_contiguous_batch`.

    Returns masks `(B, C, N)` bool, values `(B, C)` float32, coalition_valid `(B, C)` and
    player_valid `(B, N)`.
    """
    b = len(masks)
    c = max([len(m) for m in masks] + [1])
    n = max([np.shape(m)[1] if np.ndim(m) == 2 else 0 for m in masks] + [1])
    out_m = np.zeros((b, c, n), dtype=bool)
    out_v = np.zeros((b, c), dtype=np.float32)
    c_valid = np.zeros((b, c), dtype=bool)
    p_valid = np.zeros((b, n), dtype=bool)
    for i, (m, v) in enumerate(zip(masks, values, strict=True)):
        m = np.asarray(m, dtype=bool).reshape(len(m), -1)
        out_m[i, : m.shape[0], : m.shape[1]] = m
        out_v[i, : len(v)] = v
        c_valid[i, : m.shape[0]] = True
        p_valid[i, : m.shape[1]] = True
    return mx.array(out_m), mx.array(out_v), mx.array(c_valid), mx.array(p_valid)


def owen_contiguous_batch(
    masks: mx.array,
    values: mx.array,
    coalition_valid: mx.array,
    player_valid: mx.array,
    return_unpaired: bool = False,
) -> mx.array | tuple[mx.array, mx.array]:
    """Batched `reference.owen_contiguous`: `phi (B, N)` (and unpaired counts `(B,)`).

    A pair is two valid coalitions c, c' with c a subset of c' and one member more in c'; the
    added player gains v(c') - v(c). Duplicate coalitions count once (the first row). Cost is
    O(B C^2 N) time (matmuls) and O(B C^2) memory.
    """
    cv = coalition_valid.astype(mx.bool_)
    pv = player_valid.astype(mx.bool_)
    m = (masks.astype(mx.bool_) & cv[:, :, None] & pv[:, None, :]).astype(mx.float32)
    size = m.sum(-1)  # (B, C)
    inter = m @ m.transpose(0, 2, 1)  # |c n c'|
    subset = inter == size[:, :, None]  # c within c'
    both = cv[:, :, None] & cv[:, None, :]
    equal = subset & (size[:, :, None] == size[:, None, :]) & both
    c = m.shape[1]
    earlier = mx.triu(mx.ones((c, c), dtype=mx.bool_), k=1)  # row index < column index
    first = cv & ~mx.any(equal & earlier, axis=1)
    pair = (
        subset & (size[:, None, :] == size[:, :, None] + 1) & first[:, :, None] & first[:, None, :]
    ).astype(mx.float32)
    gain = pair * (values[:, None, :] - values[:, :, None]).astype(mx.float32)
    # Pair (c, c') credits player j when j is in c' and not in c: sum over c first with a
    # matmul against "j not in c", then keep c' holding j. Only genuine terms are summed.
    absent = 1.0 - m
    num = (m * (gain.transpose(0, 2, 1) @ absent)).sum(1)
    count = (m * (pair.transpose(0, 2, 1) @ absent)).sum(1)
    phi = mx.where((count > 0) & pv, num / mx.maximum(count, 1.0), 0.0)
    if return_unpaired:
        return phi, ((count == 0) & pv).sum(-1)
    return phi


def kernel_shapley_batch(
    masks: mx.array,
    values: mx.array,
    coalition_valid: mx.array,
    player_valid: mx.array,
    ridge: float = 1e-9,
) -> mx.array:
    """Batched `estimators.kernel_shapley`: `phi (B, N)` from distinct coalitions per row.

    Each row must hold its empty and full coalition once (as `sample_coalitions` makes them).
    The constrained weighted least squares is solved through its KKT system in one batched
    solve; padded players get 0. `ridge` keeps rows with no inner coalition solvable.
    """
    cv = coalition_valid.astype(mx.bool_)
    pv = player_valid.astype(mx.bool_)
    z = (masks.astype(mx.bool_) & cv[:, :, None] & pv[:, None, :]).astype(mx.float32)
    v = values.astype(mx.float32)
    size = z.sum(-1)  # (B, C)
    n = pv.sum(-1).astype(mx.float32)  # (B,)
    empty = cv & (size == 0)
    full = cv & (size == n[:, None])
    v0 = (v * empty).sum(-1)
    delta = (v * full).sum(-1) - v0
    inner = cv & (size > 0) & (size < n[:, None])
    n_max = z.shape[-1]
    table = np.array([[comb(a, k) for k in range(n_max + 1)] for a in range(n_max + 1)], float)
    sizes = mx.arange(n_max + 1)
    n_int = n.astype(mx.int32)
    binom = mx.array(table.astype(np.float32))[n_int]  # (B, n_max + 1): C(n, s)
    s_f = sizes.astype(mx.float32)[None, :]
    ok = (s_f > 0) & (s_f < n[:, None])
    k = mx.where(ok, (n[:, None] - 1) / mx.maximum(binom * s_f * (n[:, None] - s_f), 1.0), 0.0)
    counts = (inner[:, :, None] & (size[:, :, None] == s_f[:, None, :])).sum(1)  # (B, S)
    complete = ok & (counts == binom)
    sampled_mass = mx.where(ok & ~complete, k * binom, 0.0).sum(-1)
    n_sampled = mx.where(complete, 0, counts).sum(-1).astype(mx.float32)
    size_i = size.astype(mx.int32)
    k_row = mx.take_along_axis(k, size_i, axis=-1)
    complete_row = mx.take_along_axis(complete, size_i, axis=-1)
    share = sampled_mass / mx.maximum(n_sampled, 1.0)
    w = mx.where(inner, mx.where(complete_row, k_row, share[:, None]), 0.0)
    y = v - v0[:, None]
    zw = z * w[:, :, None]
    gram = zw.transpose(0, 2, 1) @ z  # (B, N, N)
    rhs = (zw * y[:, :, None]).sum(1)  # (B, N)
    eye = mx.eye(n_max)
    pvf = pv.astype(mx.float32)
    gram = gram * (pvf[:, :, None] * pvf[:, None, :]) + eye * (1.0 - pvf)[:, None, :] + ridge * eye
    ones = pvf[:, :, None]
    top = mx.concatenate([gram, ones], axis=-1)
    bottom = mx.concatenate([pvf[:, None, :], mx.zeros((pvf.shape[0], 1, 1))], axis=-1)
    kkt = mx.concatenate([top, bottom], axis=1)
    b = mx.concatenate([rhs * pvf, delta[:, None]], axis=-1)
    sol = mx.linalg.solve(kkt, b[:, :, None], stream=mx.cpu)[:, :n_max, 0]
    return mx.where(pv, sol, 0.0)


def control_variate_batch(
    masks: mx.array,
    values: mx.array,
    stand_in: mx.array,
    stand_in_phi: mx.array,
    coalition_valid: mx.array,
    player_valid: mx.array,
) -> mx.array:
    """Batched `surrogate.control_variate_shapley`: the stand-in game's Shapley values
    `stand_in_phi (B, N)` plus the kernel estimate of phi(v - v~) from the scored coalitions,
    `stand_in (B, C)` being v~ on them."""
    residual = values.astype(mx.float32) - stand_in.astype(mx.float32)
    correction = kernel_shapley_batch(masks, residual, coalition_valid, player_valid)
    return mx.where(player_valid.astype(mx.bool_), stand_in_phi + correction, 0.0)


def normalize_values_batch(
    phi: mx.array, valid: mx.array, method: str = "zero", temperature: float = 0.05
) -> mx.array:
    """Per-row `credit.normalize_values` over valid entries (zero, minmax or softmax)."""
    if method not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {method!r}; use one of {', '.join(NORMALIZATIONS)}")
    valid = valid.astype(mx.bool_)
    phi = phi.astype(mx.float32)
    hi = mx.max(mx.where(valid, phi, -mx.inf), axis=-1, keepdims=True)
    if method == "softmax":
        norm = mx.exp((phi - hi) / temperature)
    elif method == "zero":
        pos = hi > 1e-12
        norm = mx.where(pos, mx.maximum(phi, 0.0) / mx.where(pos, hi, 1.0), 0.0)
    else:
        lo = mx.min(mx.where(valid, phi, mx.inf), axis=-1, keepdims=True)
        spread = hi - lo
        flat = spread <= 1e-12 * mx.maximum(1.0, mx.abs(hi))
        norm = mx.where(flat, 1.0, (phi - lo) / mx.where(flat, 1.0, spread))
    return mx.where(valid, norm, 0.0)


def signed_values_batch(phi: mx.array, advantages: mx.array, rule: str = "mirror") -> mx.array:
    """Batched `credit.signed_values`: rows with a negative advantage negated under `mirror`."""
    if rule not in NEGATIVE_RULES:
        raise ConfigError(f"unknown negative-advantage rule {rule!r}; use one of {NEGATIVE_RULES}")
    if rule == "paper":
        return phi
    return mx.where(advantages.reshape(-1, 1) < 0, -phi, phi)


def token_weights_batch(
    spans: mx.array,
    span_valid: mx.array,
    token_offsets: mx.array,
    token_valid: mx.array,
    phi: mx.array,
    floor: float = 0.0,
    normalize: str = "zero",
    temperature: float = 0.05,
) -> mx.array:
    """Batched `credit.token_weights`: spans `(B, N, 2)`, offsets `(B, T, 2)`, phi `(B, N)`.

    Returns `(B, T)` weights; padded token positions get 0.
    """
    _check_floor(floor)
    sv = span_valid.astype(mx.bool_)
    norm = normalize_values_batch(phi, sv, normalize, temperature)
    a, b = token_offsets[..., 0:1].astype(mx.int32), token_offsets[..., 1:2].astype(mx.int32)
    s = spans[:, None, :, 0].astype(mx.int32)
    e = spans[:, None, :, 1].astype(mx.int32)
    overlap = mx.maximum(mx.minimum(b, e) - mx.maximum(a, s), 0).astype(mx.float32)
    overlap = overlap * sv[:, None, :]
    total = overlap.sum(-1)
    # Fractions first: a token inside one segment gets exactly its value (rank mode needs ties).
    weighted = (overlap / mx.maximum(total, 1.0)[..., None] * norm[:, None, :]).sum(-1)
    inside = ((a == b) & (s < a) & (a < e) & sv[:, None, :]).astype(mx.float32)
    inside_w = (inside * norm[:, None, :]).sum(-1)
    out = mx.where(total > 0, weighted, mx.where(inside.sum(-1) > 0, inside_w, floor))
    return mx.where(token_valid.astype(mx.bool_), out, 0.0)


def grpo_advantages(
    rewards: mx.array, group_size: int, scale: str | bool = "group", eps: float = 1e-4
) -> mx.array:
    """MLX twin of `credit.grpo_advantages`: (R - group mean) / (std + eps), unbiased std."""
    scale = _check_scale(scale)
    r = rewards.astype(mx.float32).reshape(-1)
    if group_size < 1 or r.size % group_size:
        raise ValueError(f"{r.size} rewards do not split into groups of {group_size}")
    grouped = r.reshape(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdims=True)).reshape(-1)
    if scale == "none":
        return adv
    if scale == "group":
        std = (
            mx.sqrt(mx.var(grouped, axis=1, ddof=1))
            if group_size > 1
            else mx.zeros(grouped.shape[0])
        )
        std = mx.repeat(std, group_size)
    else:
        std = mx.sqrt(mx.var(r, ddof=1)) if r.size > 1 else mx.array(0.0)
    return adv / (std + eps)


def average_ranks(x: mx.array, valid: mx.array) -> mx.array:
    """Per-row 1-based ranks over valid entries, ties sharing their average rank (0 elsewhere)."""
    valid = valid.astype(mx.bool_)
    t = x.shape[-1]
    keyed = mx.where(valid, x.astype(mx.float32), mx.inf)  # padding sorts last
    order = mx.argsort(keyed, axis=-1)
    xs = mx.take_along_axis(keyed, order, axis=-1)
    idx = mx.broadcast_to(mx.arange(t), xs.shape)
    differs = xs[..., 1:] != xs[..., :-1]
    edge = mx.ones((*xs.shape[:-1], 1), dtype=mx.bool_)
    starts = mx.cummax(mx.where(mx.concatenate([edge, differs], -1), idx, 0), axis=-1)
    ends = mx.cummin(mx.where(mx.concatenate([differs, edge], -1), idx, t), axis=-1, reverse=True)
    avg = (starts + ends).astype(mx.float32) / 2.0 + 1.0
    ranks = mx.take_along_axis(avg, mx.argsort(order, axis=-1), axis=-1)
    return mx.where(valid, ranks, 0.0)


def ospo_token_advantages(
    seq_adv: mx.array,
    weights: mx.array,
    mask: mx.array,
    mode: str = "prop",
    rewards: mx.array | None = None,
    alpha: float = 0.5,
    clip: float | None = None,
    in_segments: mx.array | None = None,
) -> mx.array:
    """MLX twin of `credit.ospo_token_advantages` (same modes, fallback, clipping, in_segments)."""
    _check_mode(mode, alpha, clip)
    adv = seq_adv.astype(mx.float32).reshape(-1)
    if in_segments is not None:
        valid = mask.astype(mx.bool_)
        seg = valid & in_segments.astype(mx.bool_)
        out = ospo_token_advantages(adv, weights, seg, mode, rewards, alpha, None)
        out = mx.where(valid & ~seg, adv[:, None], out)
        return _clip_advantages(out, adv, clip, valid)
    valid = mask.astype(mx.bool_)
    w = mx.where(valid, weights.astype(mx.float32), 0.0)
    n_valid = valid.sum(1).astype(mx.float32)
    uniform = mx.where(valid, 1.0 / mx.maximum(n_valid, 1.0)[:, None], 0.0)
    total = w.sum(1)
    fallback = total <= 0
    if rewards is not None:
        fallback = fallback | (mx.abs(rewards.astype(mx.float32).reshape(-1)) < ZERO_REWARD)
    if mode == "uniform":
        p = uniform
    elif mode == "rank":
        ranks = average_ranks(w, valid)
        p = ranks / mx.maximum(ranks.sum(1, keepdims=True), 1.0)
    else:
        p = w / mx.where(total > 0, total, 1.0)[:, None]
        if mode == "hybrid":
            p = alpha * p + (1.0 - alpha) * uniform
    p = mx.where(fallback[:, None], uniform, p)
    return _clip_advantages(n_valid[:, None] * p * adv[:, None], adv, clip, valid)


def _clip_advantages(out: mx.array, adv: mx.array, clip: float | None, valid: mx.array) -> mx.array:
    if clip is not None:
        bound = clip * mx.sqrt(mx.var(adv))
        out = mx.where(bound > 0, mx.clip(out, -bound, bound), out)
    return mx.where(valid, out, 0.0)
