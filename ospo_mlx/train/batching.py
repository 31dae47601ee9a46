"""Pack prompts + completions into padded arrays for the compiled update.

Lengths are rounded up to a multiple of 32 so the compiled step sees few distinct shapes and
recompiles rarely; masks mark the real completion tokens. The update then cuts micro-batches of
rows with similar lengths (`length_sorted_micro_batches`), each trimmed to its own rows' length
rounded up to `MICRO_MULTIPLE`: short rows no longer pay for the longest row's padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np

PAD_MULTIPLE = 32
# Micro-batches round their own length to this: one run sees a handful of shapes, each compiled
# once. 16 cut more padding but changed float round-off between data-parallel and single runs
# beyond tests/test_distributed.py's tolerance (AdamW amplifies it); 32 keeps them equal.
MICRO_MULTIPLE = 32


def round_up(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return max(multiple, -(-n // multiple) * multiple)


@dataclass
class Batch:
    """One update's worth of completions.

    tokens (B, L) prompt then completion, right-padded; prompt_lens (B,); mask (B, T) 1.0 on
    real completion tokens; advantages (B, T); old_logps/ref_logps (B, T) once computed.
    """

    tokens: mx.array
    prompt_lens: mx.array
    mask: mx.array
    advantages: mx.array
    old_logps: mx.array | None = None
    ref_logps: mx.array | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_positions(self) -> int:
        return int(self.mask.shape[1])

    def slice(self, start: int, stop: int) -> Batch:
        def cut(a: mx.array | None) -> mx.array | None:
            return None if a is None else a[start:stop]

        return replace(
            self,
            tokens=self.tokens[start:stop],
            prompt_lens=self.prompt_lens[start:stop],
            mask=self.mask[start:stop],
            advantages=self.advantages[start:stop],
            old_logps=cut(self.old_logps),
            ref_logps=cut(self.ref_logps),
        )

    def take(self, rows: Sequence[int], seq_len: int, width: int) -> Batch:
        """Rows `rows` (in that order), cut to `seq_len` tokens and `width` completion positions.

        The cut must keep every selected row's prompt and completion (the caller checks).
        """
        idx = mx.array(np.asarray(rows, dtype=np.int32))

        def cut(a: mx.array | None, w: int) -> mx.array | None:
            return None if a is None else mx.take(a, idx, axis=0)[:, :w]

        return replace(
            self,
            tokens=cut(self.tokens, seq_len),
            prompt_lens=mx.take(self.prompt_lens, idx, axis=0),
            mask=cut(self.mask, width),
            advantages=cut(self.advantages, width),
            old_logps=cut(self.old_logps, width),
            ref_logps=cut(self.ref_logps, width),
        )


def pad_rows(rows: Sequence[Sequence[float]], width: int, dtype: type = np.float32) -> np.ndarray:
    """Right-pad ragged rows with zeros to (len(rows), width); longer rows are an error."""
    out = np.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} values, more than the width {width}")
        out[i, : len(row)] = row
    return out


def pack_batch(
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    advantages: Sequence[Sequence[float]] | np.ndarray,
    pad_id: int = 0,
    multiple: int = PAD_MULTIPLE,
) -> Batch:
    """Build a Batch from per-completion prompt ids, completion ids and token advantages.

    `advantages[i]` covers completion i's tokens (extra trailing entries are ignored); both
    the sequence length L and the completion width T are rounded up to `multiple`.
    """
    if not (len(prompts) == len(completions) == len(advantages)):
        raise ValueError("prompts, completions and advantages must have one entry per completion")
    lengths = [len(c) for c in completions]
    width = round_up(max(lengths, default=1), multiple)
    seq = round_up(
        max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True)), multiple
    )
    tokens = np.full((len(prompts), seq), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width), dtype=np.float32)
    adv = np.zeros((len(prompts), width), dtype=np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        tokens[i, : len(p)] = p
        tokens[i, len(p) : len(p) + len(c)] = c
        mask[i, : len(c)] = 1.0
        adv[i, : len(c)] = np.asarray(advantages[i], dtype=np.float32)[: len(c)]
    return Batch(
        tokens=mx.array(tokens),
        prompt_lens=mx.array(np.array([len(p) for p in prompts], dtype=np.int32)),
        mask=mx.array(mask),
        advantages=mx.array(adv),
    )


def micro_batches(batch: Batch, count: int) -> list[Batch]:
    """Split into `count` equal consecutive micro-batches (count must divide the batch)."""
    if batch.size % count:
        raise ValueError(f"{count} micro-batches do not divide a batch of {batch.size}")
    step = batch.size // count
    return [batch.slice(i, i + step) for i in range(0, batch.size, step)]


def length_sorted_micro_batches(
    prompt_lens: np.ndarray,
    completion_lens: np.ndarray,
    rows: int,
    seq_len: int,
    width: int,
    multiple: int = MICRO_MULTIPLE,
) -> list[tuple[np.ndarray, int, int]]:
    """Group row indices by length into micro-batches of `rows`; (indices, length, width) each.

    Rows are sorted by prompt + completion length (stable, so ties keep their order), cut into
    consecutive groups of `rows`, and each group gets the smallest sequence length and
    completion width that hold all its rows, rounded up to `multiple` (at most the packed
    `seq_len` / `width`). The loss of a row does not depend on its neighbours or on padding
    after it (causal attention), so the grouping only changes summation order.
    """
    total = np.asarray(prompt_lens) + np.asarray(completion_lens)
    order = np.argsort(total, kind="stable")
    out = []
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        length = min(round_up(int(total[idx].max()), multiple), seq_len)
        w = min(round_up(int(np.asarray(completion_lens)[idx].max()), multiple), width)
        out.append((idx, length, w))
    return out
