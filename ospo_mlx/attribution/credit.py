"""Token credit and advantages, NumPy reference.

Segment values become per-token weights on the completion's own sampled tokens (by character
overlap), and the GRPO sequence advantage is redistributed over tokens with those weights so
that its mean over each completion's valid tokens is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ospo_mlx.attribution.config import ADVANTAGE_MODES as MODES
from ospo_mlx.attribution.config import NEGATIVE_RULES, NORMALIZATIONS
from ospo_mlx.errors import ConfigError

SCALES = ("group", "batch", "none")
# |R| below this counts as a zero reward: shaping by it would erase the advantage.
ZERO_REWARD = 1e-12


def _check_mode(mode: str, alpha: float, clip: float | None) -> None:
    if mode not in MODES:
        raise ConfigError(f"unknown advantage mode {mode!r}; use one of {', '.join(MODES)}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if clip is not None and clip <= 0:
        raise ConfigError(f"clip must be > 0 (or None for no clipping), got {clip}")


def _check_floor(floor: float) -> None:
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(f"floor must be in [0, 1], got {floor}")


def _check_scale(scale: str | bool) -> str:
    if scale is True:
        return "group"
    if scale is False:
        return "none"
    if scale not in SCALES:
        raise ConfigError(f"unknown reward scaling {scale!r}; use one of {', '.join(SCALES)}")
    return scale


def normalize_values(
    phi: np.ndarray, method: str = "zero", temperature: float = 0.05
) -> np.ndarray:
    """Segment values -> weights in [0, 1] (see `AttributionConfig.normalize`).

    zero: phi+ / max(phi+), so a segment with no or negative effect gets 0 and the others keep
    their proportions (all <= 0: all zeros, and the caller falls back to uniform). minmax: the
    paper's (phi - min) / (max - min), a constant vector becoming all ones. softmax:
    exp((phi - max) / temperature).
    """
    if method not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {method!r}; use one of {', '.join(NORMALIZATIONS)}")
    phi = np.asarray(phi, dtype=np.float64)
    if phi.size == 0:
        return phi
    hi = phi.max()
    if method == "softmax":
        return np.exp((phi - hi) / temperature)
    if method == "zero":
        return np.clip(phi, 0.0, None) / hi if hi > 1e-12 else np.zeros_like(phi)
    lo = phi.min()
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.ones_like(phi)
    return (phi - lo) / (hi - lo)


def signed_values(phi: np.ndarray, advantage: float, rule: str = "mirror") -> np.ndarray:
    """The values whose weights share advantage A: `-phi` when A < 0 under the mirror rule.

    With A < 0 the tokens with the largest weight are pushed down most, so mirroring puts the
    blame on the segment that hurt the reward; the paper's rule keeps phi for every sign.
    """
    if rule not in NEGATIVE_RULES:
        raise ConfigError(f"unknown negative-advantage rule {rule!r}; use one of {NEGATIVE_RULES}")
    phi = np.asarray(phi, dtype=np.float64)
    return -phi if rule == "mirror" and advantage < 0 else phi


def _token_segment_overlap(spans: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T, n) characters token t shares with segment j; (T, n) zero-width token inside segment j."""
    a, b = offsets[:, :1], offsets[:, 1:]
    s, e = spans[None, :, 0], spans[None, :, 1]
    overlap = np.clip(np.minimum(b, e) - np.maximum(a, s), 0, None).astype(np.float64)
    return overlap, (a == b) & (s < a) & (a < e)


def segment_token_mask(
    spans: Sequence[tuple[int, int]], token_offsets: np.ndarray | Sequence[tuple[int, int]]
) -> np.ndarray:
    """(T,) bool: the tokens `token_weights` takes from segments (all others get `floor`)."""
    spans_a = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    offsets = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
    if len(spans_a) == 0 or len(offsets) == 0:
        return np.zeros(len(offsets), dtype=bool)
    overlap, inside = _token_segment_overlap(spans_a, offsets)
    return (overlap.sum(1) > 0) | inside.any(1)


def token_weights(
    spans: Sequence[tuple[int, int]],
    token_offsets: np.ndarray | Sequence[tuple[int, int]],
    phi: np.ndarray,
    floor: float = 0.0,
    normalize: str = "zero",
    temperature: float = 0.05,
) -> np.ndarray:
    """Per-token weights `(T,)` in [0, 1] from segment values `phi (n,)`.

    `token_offsets (T, 2)` are the character spans of the sampled tokens in the completion text.
    A token takes the overlap-weighted mean of the `normalize`d values of the segments it overlaps
    (so a leading space does not dilute it); a zero-width token strictly inside a segment (a
    byte piece of a multi-byte character) takes that segment's value; every other token
    (outside all segments, special tokens) gets `floor`.
    """
    _check_floor(floor)
    spans_a = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    offsets = np.asarray(token_offsets, dtype=np.int64).reshape(-1, 2)
    phi = np.asarray(phi, dtype=np.float64).reshape(-1)
    if len(phi) != len(spans_a):
        raise ValueError(f"got {len(phi)} segment values for {len(spans_a)} segments")
    if (offsets[:, 1] < offsets[:, 0]).any():
        raise ValueError("token offsets must satisfy start <= end")
    weights = np.full(len(offsets), float(floor))
    if len(spans_a) == 0 or len(offsets) == 0:
        return weights
    norm = normalize_values(phi, normalize, temperature)
    overlap, inside = _token_segment_overlap(spans_a, offsets)
    total = overlap.sum(1)
    # Fractions first: a token inside one segment gets exactly its value (rank mode needs ties).
    frac = overlap / np.maximum(total, 1)[:, None]
    weights = np.where(total > 0, frac @ norm, weights)
    weights = np.where((total == 0) & inside.any(1), inside.astype(np.float64) @ norm, weights)
    return weights


def grpo_advantages(
    rewards: np.ndarray, group_size: int, scale: str | bool = "group", eps: float = 1e-4
) -> np.ndarray:
    """Sequence advantages `(B,)` as TRL's GRPO: (R - group mean) / (std + eps).

    Rewards come in consecutive groups of `group_size` completions of one prompt. `scale`:
    `group` divides by each group's std, `batch` by the whole batch's std, `none` does not
    divide. Stds are unbiased (ddof=1) like torch; a single value has std 0.
    """
    scale = _check_scale(scale)
    r = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if group_size < 1 or len(r) % group_size:
        raise ValueError(f"{len(r)} rewards do not split into groups of {group_size}")
    grouped = r.reshape(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdims=True)).reshape(-1)
    if scale == "none":
        return adv
    if scale == "group":
        std = grouped.std(1, ddof=1) if group_size > 1 else np.zeros(len(grouped))
        std = np.repeat(std, group_size)
    else:
        std = np.full(len(r), r.std(ddof=1) if len(r) > 1 else 0.0)
    return adv / (std + eps)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties share their average rank (the largest value gets the largest rank)."""
    order = np.sort(x)
    lo = np.searchsorted(order, x, side="left")
    hi = np.searchsorted(order, x, side="right")
    return (lo + 1 + hi) / 2.0


def ospo_token_advantages(
    seq_adv: np.ndarray,
    weights: np.ndarray,
    mask: np.ndarray,
    mode: str = "prop",
    rewards: np.ndarray | None = None,
    alpha: float = 0.5,
    clip: float | None = None,
    in_segments: np.ndarray | None = None,
) -> np.ndarray:
    """Token advantages `(B, T)`: each completion's advantage spread over its valid tokens.

    With T valid tokens and a distribution p over them, A_t = T * p_t * A_hat, so the mean of
    A_t over valid tokens is A_hat. `prop`: p_t = w_t / sum(w), which equals the shaped credit
    psi_t = w_t * R / sum(w) normalized by its sum. `rank`: p_t proportional to the rank of w_t
    (ties averaged; the highest credit gets the largest weight). `hybrid`: alpha * prop +
    (1 - alpha) * uniform. `uniform`: plain GRPO. A completion whose reward is 0 (shaping would
    zero every token and drop its advantage) or whose weights sum to 0 falls back to uniform.
    `clip` bounds A_t to +/- clip * std(seq_adv) (population std over the batch; skipped when
    that std is 0); clipping can move the token mean. Masked positions get 0.

    `in_segments (B, T)`: when given, only those tokens share the redistributed advantage and
    every other valid token keeps A_hat exactly, as in GRPO: the answer tags, reasoning and EOS
    belong to no segment, so no segment value can say whether they earned the reward. The
    token mean stays A_hat.
    """
    _check_mode(mode, alpha, clip)
    adv = np.asarray(seq_adv, dtype=np.float64).reshape(-1)
    if in_segments is not None:
        valid = np.asarray(mask, dtype=bool)
        seg = valid & np.asarray(in_segments, dtype=bool)
        out = ospo_token_advantages(adv, weights, seg, mode, rewards, alpha, None)
        out = np.where(valid & ~seg, adv[:, None], out)
        return _clip_advantages(out, adv, clip, valid)
    w = np.asarray(weights, dtype=np.float64)
    valid = np.asarray(mask, dtype=bool)
    if w.shape != valid.shape or w.ndim != 2 or w.shape[0] != len(adv):
        raise ValueError(f"weights {w.shape} and mask {valid.shape} must be (B, T), B={len(adv)}")
    w = np.where(valid, w, 0.0)
    n_valid = valid.sum(1)
    uniform = np.where(valid, 1.0 / np.maximum(n_valid, 1)[:, None], 0.0)
    total = w.sum(1)
    fallback = total <= 0
    if rewards is not None:
        fallback |= np.abs(np.asarray(rewards, dtype=np.float64).reshape(-1)) < ZERO_REWARD
    if mode == "uniform":
        p = uniform
    elif mode == "rank":
        ranks = np.zeros_like(w)
        for i in range(len(w)):  # reference: one completion at a time
            ranks[i, valid[i]] = _average_ranks(w[i, valid[i]])
        p = ranks / np.maximum(ranks.sum(1, keepdims=True), 1.0)
    else:
        p = w / np.where(total > 0, total, 1.0)[:, None]
        if mode == "hybrid":
            p = alpha * p + (1.0 - alpha) * uniform
    p = np.where(fallback[:, None], uniform, p)
    return _clip_advantages(n_valid[:, None] * p * adv[:, None], adv, clip, valid)


def _clip_advantages(
    out: np.ndarray, adv: np.ndarray, clip: float | None, valid: np.ndarray
) -> np.ndarray:
    if clip is not None:
        bound = clip * adv.std()
        if bound > 0:
            out = np.clip(out, -bound, bound)
    return np.where(valid, out, 0.0)
