"""The clipped policy objective, as pure functions over (B, T) arrays.

Shapes: B completions, T completion positions (padded; `mask` marks real tokens). The same
objective serves GRPO (the sequence advantage broadcast to every token) and OSPO (per-token
advantages from segment attributions): only the `advantages` array differs.
"""

from __future__ import annotations

from typing import Literal

import mlx.core as mx

from ospo_mlx.models.fastmath import fast_exp

LossType = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo")
ImportanceLevel = Literal["token", "sequence", "sequence_token"]
IMPORTANCE_LEVELS: tuple[str, ...] = ("token", "sequence", "sequence_token")


@mx.custom_function
def _picked_log_softmax(logits: mx.array, targets: mx.array):
    """(log p(target), entropy, p) over the last axis with one exp pass over the vocabulary.

    Autodiff of logsumexp would take a second exp pass in backward (and entropy a third);
    MLX's CPU exp is slow (models/fastmath.py), so on a 49k vocabulary these passes were a
    quarter of the update. `p` is returned so the backward reuses it.
    """
    # Everything relative to the row maximum: log_z - sum(p * logits) would cancel two numbers
    # of the logits' size (measured: 1.7% entropy error at logits around 25).
    # (logits - top) is written out at each use, not kept: one fewer (B, T, V) array alive.
    top = logits.max(axis=-1, keepdims=True)
    e = fast_exp(logits - top)
    total = e.sum(axis=-1, keepdims=True)
    p = e / total
    log_total = mx.log(total)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1) - top
    entropy = log_total.squeeze(-1) - (p * (logits - top)).sum(axis=-1)
    return (picked - log_total).squeeze(-1), entropy, p


@_picked_log_softmax.vjp
def _picked_log_softmax_vjp(primals, cotangents, outputs):
    # d log p(t) / d logits = onehot(t) - p; entropy and p are not differentiated (metrics).
    _, targets = primals
    g, p = cotangents[0], outputs[2]
    grad = -g[..., None] * p
    at = targets[..., None]
    grad = mx.put_along_axis(grad, at, mx.take_along_axis(grad, at, axis=-1) + g[..., None], -1)
    return grad, mx.zeros_like(targets)


def token_log_probs(
    logits: mx.array, targets: mx.array, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[mx.array, mx.array | None]:
    """Log-probabilities of `targets` (B, T) under `logits / temperature` (B, T, V), like TRL.

    Returns (logps (B, T), entropy (B, T) or None). Entropy is of the same tempered
    distribution and carries no gradient.
    """
    logits = logits.astype(mx.float32)
    if temperature != 1.0:
        logits = logits / temperature
    logps, entropy, _ = _picked_log_softmax(logits, targets)
    return logps, mx.stop_gradient(entropy) if with_entropy else None


def k3_kl(logps: mx.array, ref_logps: mx.array) -> mx.array:
    """Per-token k3 estimator of KL(pi || ref): exp(r - l) - (r - l) - 1, always >= 0."""
    delta = ref_logps - logps
    return mx.exp(delta) - delta - 1.0


def masked_mean(x: mx.array, mask: mx.array) -> mx.array:
    return (x * mask).sum() / mx.maximum(mask.sum(), 1.0)


def log_importance_weights(
    logps: mx.array, old_logps: mx.array, mask: mx.array, level: ImportanceLevel = "token"
) -> mx.array:
    """log of the importance ratio pi / pi_old, (B, T), at TRL's `importance_sampling_level`.

    token: log r_t = l_t - old_t, one ratio per token (GRPO).
    sequence: GSPO's length-normalized sequence ratio, mean_t(l_t - old_t), on every token; its
        gradient is the same for every token of a completion, so per-token advantages only act
        through their sum (OSPO's credit collapses to the sequence advantage, i.e. GRPO).
    sequence_token: GSPO-token, the sequence ratio's value with each token's own gradient
        (sg(s) * exp(l_t - sg(l_t))), which keeps OSPO's per-token credit.
    """
    old = mx.stop_gradient(old_logps)
    log_ratio = logps - old
    if level == "token":
        return log_ratio
    seq = (log_ratio * mask).sum(axis=-1, keepdims=True) / mx.maximum(
        mask.sum(axis=-1, keepdims=True), 1.0
    )
    if level == "sequence":
        return mx.broadcast_to(seq, log_ratio.shape)
    if level == "sequence_token":
        return mx.stop_gradient(seq) + logps - mx.stop_gradient(logps)
    raise ValueError(f"unknown importance_sampling_level {level!r}; expected {IMPORTANCE_LEVELS}")


def truncation_mask(mask: mx.array, finished: mx.array) -> mx.array:
    """TRL's mask_truncated_completions: rows of completions cut at max_new_tokens become 0.

    `finished` (B,) is 1 for completions that ended with EOS. A masked row takes no part in the
    loss or in the token normalizers, whatever its (OSPO) token advantages.
    """
    return mask * finished.astype(mask.dtype)[:, None]


def high_entropy_mask(entropy: mx.array, mask: mx.array, quantile: float) -> mx.array:
    """1.0 on the real tokens whose entropy is in the top `quantile` of this batch's tokens.

    TRL's `top_entropy_quantile` (rho): the threshold is the (1 - rho) quantile, linearly
    interpolated like torch.quantile, of the entropies of all unmasked tokens of the batch; a
    token at or above it keeps its gradient. rho = 1 keeps every token.
    """
    mask = mask.astype(mx.float32)
    if quantile >= 1.0:
        return mask
    ent = mx.stop_gradient(entropy).astype(mx.float32)
    # Padding sorts last (+inf), so the first n entries are the n real tokens in order.
    flat = mx.sort(mx.where(mask > 0, ent, mx.inf).reshape(-1))
    n = mask.sum()
    pos = (1.0 - quantile) * mx.maximum(n - 1.0, 0.0)
    lo = mx.floor(pos)
    hi = mx.minimum(lo + 1.0, mx.maximum(n - 1.0, 0.0))
    v_lo = mx.take(flat, lo.astype(mx.int32))
    v_hi = mx.take(flat, hi.astype(mx.int32))
    threshold = v_lo + (v_hi - v_lo) * (pos - lo)
    return mask * (ent >= threshold).astype(mx.float32)


def aggregate(
    per_token: mx.array,
    mask: mx.array,
    loss_type: LossType,
    max_completion_length: int | None = None,
    token_normalizer: mx.array | float | None = None,
    sequence_normalizer: mx.array | float | None = None,
) -> mx.array:
    """Reduce a per-token loss to a scalar the way TRL's `loss_type` does.

    grpo: mean over each sequence's tokens, then over sequences (short answers weigh more).
    bnpo: mean over all tokens of this batch.
    dapo: sum over tokens / the token count of the whole generation batch.
    dr_grpo: sum / (B * max_completion_length), a constant normalizer free of length bias.

    The normalizers default to this batch's token count (bnpo, dapo) and row count (grpo,
    dr_grpo). A micro-batch of a larger batch passes the larger batch's counts as
    `token_normalizer` / `sequence_normalizer`: its loss is then its exact share of the larger
    batch's loss, so the micro-batch losses (and gradients) sum to the full batch's.
    """
    masked = per_token * mask
    rows = per_token.shape[0] if sequence_normalizer is None else sequence_normalizer
    if loss_type == "grpo":
        per_seq = masked.sum(axis=-1) / mx.maximum(mask.sum(axis=-1), 1.0)
        return per_seq.mean() if sequence_normalizer is None else per_seq.sum() / rows
    if loss_type in ("bnpo", "dapo"):
        norm = mask.sum() if token_normalizer is None else token_normalizer
        return masked.sum() / mx.maximum(norm, 1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("dr_grpo needs max_completion_length")
        return masked.sum() / (rows * max_completion_length)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")


def policy_loss(
    logps: mx.array,
    old_logps: mx.array,
    advantages: mx.array,
    mask: mx.array,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    ref_logps: mx.array | None = None,
    loss_type: LossType = "dapo",
    max_completion_length: int | None = None,
    token_normalizer: mx.array | float | None = None,
    sequence_normalizer: mx.array | float | None = None,
    entropy: mx.array | None = None,
    importance_sampling_level: ImportanceLevel = "token",
    delta: float | None = None,
    top_entropy_quantile: float = 1.0,
) -> tuple[mx.array, dict[str, mx.array]]:
    """Clipped surrogate -min(r A, clip(r, 1-eps, 1+eps_high) A) + beta * k3, aggregated.

    `old_logps` are the log-probs of the sampling policy (constants); with them equal to `logps`
    the ratio is exactly 1 and nothing is clipped. Returns (loss, metrics) where the metrics
    are scalar arrays without gradient: clip_ratio/{low,high,region}_mean, kl, entropy.

    TRL's options: `importance_sampling_level` (see log_importance_weights); `delta` caps the
    unclipped ratio at delta (two-sided clipping: bounds the loss of negative advantages when
    r grows large); `top_entropy_quantile` < 1 keeps the policy term only on the batch's
    highest-entropy tokens (needs `entropy`), applied to the per-token loss, so after OSPO's
    redistribution; masked tokens still count in the normalizer, as in TRL.
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.astype(mx.float32)
    # exp(l - stop_grad(l)) keeps the gradient of r while its value stays exact.
    ratio = mx.exp(log_importance_weights(logps, old_logps, mask, importance_sampling_level))
    clipped = mx.clip(ratio, 1.0 - epsilon, 1.0 + eps_high)
    unclipped = ratio if delta is None else mx.minimum(ratio, delta)
    per_token = -mx.minimum(unclipped * advantages, clipped * advantages)
    if top_entropy_quantile < 1.0:
        if entropy is None:
            raise ValueError("top_entropy_quantile < 1 needs the token entropy")
        per_token = per_token * high_entropy_mask(entropy, mask, top_entropy_quantile)
    kl = None
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta > 0 needs ref_logps")
    if ref_logps is not None:  # also logged with beta = 0 when the caller computed the reference
        kl = k3_kl(logps, mx.stop_gradient(ref_logps))
        if beta != 0.0:
            per_token = per_token + beta * kl
    loss = aggregate(
        per_token, mask, loss_type, max_completion_length, token_normalizer, sequence_normalizer
    )

    r = mx.stop_gradient(ratio)
    low = ((r < 1.0 - epsilon) & (advantages < 0)).astype(mx.float32)
    high = ((r > 1.0 + eps_high) & (advantages > 0)).astype(mx.float32)
    metrics = {
        "clip_ratio/low_mean": masked_mean(low, mask),
        "clip_ratio/high_mean": masked_mean(high, mask),
        "clip_ratio/region_mean": masked_mean(mx.maximum(low, high), mask),
        "kl": masked_mean(mx.stop_gradient(kl), mask) if kl is not None else mx.array(0.0),
        "entropy": masked_mean(mx.stop_gradient(entropy), mask)
        if entropy is not None
        else mx.array(0.0),
    }
    return loss, metrics
