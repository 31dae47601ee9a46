"""Prompt sharing in the update: one forward of a prompt for all of its group's completions.

A GRPO group is G completions of one prompt. Packed as G independent rows, the update runs
the prompt's forward and backward G times; here the prompt runs once (batch 1), its per-layer
keys and values are broadcast to the completion rows, and autodiff sums the completions'
gradients through them. The result is the per-row computation up to float round-off: the
prompt is left-padded to a multiple of `PROMPT_MULTIPLE` (few compiled shapes), the padding is
masked out of attention, and RoPE, which depends on position differences only, sees every real
token shifted by the same amount.

Works for mlx-lm models whose blocks take the standard cache protocol (`offset`,
`update_and_fetch`, `make_mask`) and whose logits are `head(body(tokens))` (see
`policy._split_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from ospo_mlx.train.batching import MICRO_MULTIPLE, round_up

PROMPT_MULTIPLE = 16


class SharedPrefixCache:
    """One layer's cache: the prompt pass stores keys/values, the completion pass prepends them.

    `pad` (an array, so one compiled trace serves every padding) counts the left-pad positions,
    which no real token attends to.
    """

    def __init__(self, pad: mx.array) -> None:
        self.pad = pad
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.keys is None:
            self.keys, self.values, self.offset = keys, values, keys.shape[2]
            return keys, values
        rows = keys.shape[0]
        k = mx.broadcast_to(self.keys, (rows, *self.keys.shape[1:]))
        v = mx.broadcast_to(self.values, (rows, *self.values.shape[1:]))
        return mx.concatenate([k, keys], axis=2), mx.concatenate([v, values], axis=2)

    def make_mask(self, n: int, return_array: bool = False, window_size: int | None = None):
        """Boolean (n, offset + n) mask: causal, left padding hidden from real queries."""
        if window_size is not None:
            raise ValueError("prompt sharing does not support sliding-window attention")
        queries = mx.arange(n)[:, None] + self.offset
        keys = mx.arange(self.offset + n)[None, :]
        # A padding query (prompt pass only) still sees itself, so no softmax row is empty.
        visible = (keys >= self.pad) | (queries < self.pad)
        return (keys <= queries) & visible


def shared_hidden(body, prompt: mx.array, completions: mx.array, pad: mx.array) -> mx.array:
    """(rows, C, D) hidden states that predict each completion token (position t: token t).

    `prompt` (1, P) left-padded by `pad`, `completions` (rows, C) right-padded. The first
    completion token is predicted from the prompt's last position, the others from the
    completion positions before them.
    """
    caches = [SharedPrefixCache(pad) for _ in body.layers]
    h_prompt = body(prompt, cache=caches)
    h_comp = body(completions, cache=caches)
    rows = completions.shape[0]
    first = mx.broadcast_to(h_prompt[:, -1:], (rows, 1, h_prompt.shape[-1]))
    return mx.concatenate([first, h_comp[:, :-1]], axis=1)


def prompt_groups(
    tokens: np.ndarray, prompt_lens: np.ndarray, rows: Sequence[int]
) -> list[list[int]]:
    """Rows of `rows` grouped by identical prompt, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for r in rows:
        groups.setdefault(tuple(tokens[r, : prompt_lens[r]].tolist()), []).append(int(r))
    return list(groups.values())


def left_pad(prompt: np.ndarray, multiple: int = PROMPT_MULTIPLE) -> tuple[np.ndarray, int]:
    """(prompt left-padded with zeros to a multiple of `multiple`, number of pad positions)."""
    n = len(prompt)
    out = np.zeros((round_up(n, multiple),), dtype=np.int32)
    out[len(out) - n :] = prompt
    return out, len(out) - n


@dataclass
class SharedChunk:
    """Completion rows of one prompt that share a forward/backward pass."""

    rows: np.ndarray  # batch row indices
    prompt: np.ndarray  # (P,) left-padded prompt ids
    pad: int  # left-pad positions in `prompt`
    completions: np.ndarray  # (len(rows), width) completion ids, right-padded with zeros
    width: int  # completion positions (a multiple of MICRO_MULTIPLE, at most the batch's)


def shared_micro_batches(
    tokens: np.ndarray,
    prompt_lens: np.ndarray,
    completion_lens: np.ndarray,
    rows: Sequence[int],
    width: int,
    max_rows: int,
    token_budget: int,
) -> list[SharedChunk]:
    """Cut `rows` into chunks of one prompt each, rows sorted by completion length.

    A group gets as few chunks as keep `prompt + rows x width` within `token_budget` tokens
    (or `max_rows` rows when > 0), split into near-equal consecutive pieces; each chunk is
    trimmed to its longest completion rounded up to MICRO_MULTIPLE.
    """
    out = []
    for group in prompt_groups(tokens, prompt_lens, rows):
        group = sorted(group, key=lambda r: int(completion_lens[r]))  # stable: ties keep order
        first = group[0]
        prompt, pad = left_pad(tokens[first, : prompt_lens[first]])
        longest = min(round_up(int(completion_lens[group[-1]]), MICRO_MULTIPLE), width)
        cap = max_rows if max_rows > 0 else (token_budget - len(prompt)) // longest
        pieces = -(-len(group) // max(1, min(cap, len(group))))
        for piece in np.array_split(np.asarray(group), pieces):
            w = min(round_up(int(completion_lens[piece].max()), MICRO_MULTIPLE), width)
            comps = np.zeros((len(piece), w), dtype=np.int32)
            for j, r in enumerate(piece):
                start, n = int(prompt_lens[r]), int(completion_lens[r])
                comps[j, :n] = tokens[r, start : start + n]
            out.append(SharedChunk(piece, prompt, pad, comps, w))
    return out
