"""Pack prompts + completions into padded arrays for the compiled update.

Lengths are rounded up to a multiple of 32 so the compiled step sees few distinct shapes and
recompiles rarely; masks mark the real completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np

PAD_MULTIPLE = 32


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
