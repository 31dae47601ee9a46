"""Pure per-step bookkeeping of the trainer: rewards, flat groups, token advantages, fallbacks.

Functions over NumPy arrays (no model, no state), so each is tested on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ospo_mlx.attribution import credit


def zero_std_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """(num_groups,) bool: groups whose rewards are all equal (they carry no learning signal)."""
    grouped = rewards.reshape(-1, group_size)
    return np.ptp(grouped, axis=1) <= 1e-12


def sanitize_rewards(rewards: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/inf rewards by 0; returns (rewards, how many were replaced)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    bad = ~np.isfinite(rewards)
    return np.where(bad, 0.0, rewards), int(bad.sum())


def token_advantages(
    algorithm: str,
    seq_adv: np.ndarray,
    weights: list[np.ndarray],
    lengths: list[int],
    rewards: np.ndarray,
    cfg: Any,
    in_segments: list[np.ndarray] | None = None,
) -> np.ndarray:
    """(B, T) token advantages: GRPO's broadcast or OSPO's attribution-weighted split.

    With `cfg.format_tokens == "sequence"`, tokens outside `in_segments` keep the sequence
    advantage and only segment tokens share it by credit.
    """
    width = max(max(lengths, default=1), 1)
    mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    if algorithm == "grpo":
        return np.where(mask, seq_adv[:, None], 0.0)
    w = np.zeros(mask.shape)
    for i, row in enumerate(weights):
        w[i, : len(row)] = row[:width]
    seg = None
    if cfg.format_tokens == "sequence" and in_segments is not None:
        seg = np.zeros(mask.shape, dtype=bool)
        for i, row in enumerate(in_segments):
            seg[i, : len(row)] = row[:width]
    return credit.ospo_token_advantages(
        seq_adv, w, mask, mode=cfg.advantage_mode, rewards=rewards, alpha=cfg.alpha,
        clip=cfg.clip, in_segments=seg,
    )  # fmt: skip


def fallback_weights(
    spans: list[list[tuple[int, int]]], weights: list[np.ndarray]
) -> tuple[list[np.ndarray], int]:
    """Uniform token weights for completions without segments (their GRPO advantage); count them.

    With no segment there is no game to play: zero weights would silently drop the completion's
    whole advantage, so it keeps the sequence-level credit instead.
    """
    out = [
        np.ones_like(w, dtype=np.float64) if not s else w
        for s, w in zip(spans, weights, strict=True)
    ]
    return out, sum(1 for s in spans if not s)


def fits_context(prompts: list[list[int]], max_new_tokens: int, context: int | None) -> list[int]:
    """Indices of the prompts that leave room for `max_new_tokens` in a `context`-token window."""
    if context is None:
        return list(range(len(prompts)))
    return [i for i, p in enumerate(prompts) if len(p) + max_new_tokens <= context]


def model_context(model: Any) -> int | None:
    """The model's context length from its config args (None when it does not say)."""
    args = getattr(model, "args", None)
    value = getattr(args, "max_position_embeddings", None)
    return int(value) if isinstance(value, (int, float)) and value > 0 else None
