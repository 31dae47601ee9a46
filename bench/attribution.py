"""Attribution bench: NumPy reference vs the MLX twin on one training batch.

Coalition values -> Owen values -> token weights -> GRPO and token advantages, for 64
completions x 64 coalitions (~10 segments, ~64 tokens each). Prints median times and the
ratio; `--json` prints one JSON line instead.

    python bench/attribution.py [--json] [--quick] [--mode prop]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
import mlx.core as mx
import numpy as np

from bench.common import bench_parser, emit, median_ms
from ospo_mlx.attribution import credit, mlx_ops, reference
# isort: on


def make_batch(rng: np.random.Generator, batch: int, coalitions: int, tokens: int):
    """Random completions: segments tile the text, tokens of ~4 chars, additive-ish values."""
    masks, values, spans, offsets = [], [], [], []
    for _ in range(batch):
        n = int(rng.integers(8, 13))
        m = reference.contiguous_coalitions(n, None, coalitions, rng)
        masks.append(m)
        values.append((m @ rng.random(n) / n + 0.05 * rng.random(len(m))).astype(np.float32))
        t = int(rng.integers(tokens // 2, tokens + tokens // 2))
        bounds = np.arange(t + 1) * 4
        offsets.append(np.stack([bounds[:-1], bounds[1:]], 1))
        cuts = np.sort(rng.choice(np.arange(1, t * 4), size=n - 1, replace=False))
        edges = np.concatenate([[0], cuts, [t * 4]])
        spans.append(np.stack([edges[:-1] + 1, edges[1:]], 1))  # 1-char gap like a space
    rewards = np.array([v[-1] for v in values], dtype=np.float32)  # grand coalition value
    return masks, values, spans, offsets, rewards


def numpy_path(masks, values, spans, offsets, rewards, group, mode):
    weights = [
        credit.token_weights(sp, off, reference.owen_contiguous(m, v))
        for m, v, sp, off in zip(masks, values, spans, offsets, strict=True)
    ]
    length = max(len(w) for w in weights)
    padded = np.zeros((len(weights), length))
    mask = np.zeros((len(weights), length), dtype=bool)
    for i, w in enumerate(weights):
        padded[i, : len(w)], mask[i, : len(w)] = w, True
    seq_adv = credit.grpo_advantages(rewards, group)
    return credit.ospo_token_advantages(seq_adv, padded, mask, mode, rewards)


def mlx_path(packed, rewards, group, mode):
    cmask, cval, cvalid, pvalid, spans, span_valid, offsets, token_valid = packed
    phi = mlx_ops.owen_contiguous_batch(cmask, cval, cvalid, pvalid)
    weights = mlx_ops.token_weights_batch(spans, span_valid, offsets, token_valid, phi)
    seq_adv = mlx_ops.grpo_advantages(rewards, group)
    out = mlx_ops.ospo_token_advantages(seq_adv, weights, token_valid, mode, rewards)
    mx.eval(out)
    return out


def main() -> None:
    parser = bench_parser(__doc__, quick_help="fewer repeats")
    parser.add_argument("--mode", default="prop", choices=credit.MODES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--coalitions", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    masks, values, spans, offsets, rewards = make_batch(
        rng, args.batch, args.coalitions, args.tokens
    )
    start = time.perf_counter()
    packed = (
        *mlx_ops.pack_coalitions(masks, values),
        *mlx_ops.pack_ragged(spans),
        *mlx_ops.pack_ragged(offsets),
    )
    mx.eval(*packed)
    pack_ms = (time.perf_counter() - start) * 1e3
    rewards_mx = mx.array(rewards)
    repeats = 5 if args.quick else 30

    def run_np():
        return numpy_path(masks, values, spans, offsets, rewards, args.group, args.mode)

    def run_mx():
        return mlx_path(packed, rewards_mx, args.group, args.mode)

    numpy_ms = median_ms(run_np, repeats)
    mlx_ms = median_ms(run_mx, repeats)
    diff = float(np.abs(np.array(run_mx()) - run_np()).max())
    result = {
        "numpy_ms": round(numpy_ms, 3),
        "mlx_ms": round(mlx_ms, 3),
        "speedup": round(numpy_ms / mlx_ms, 2),
        "max_abs_diff": diff,
        "batch": args.batch,
        "coalitions": args.coalitions,
        "pack_ms": round(pack_ms, 3),
        "mode": args.mode,
        "device": str(mx.default_device()),
    }
    emit(
        "attribution",
        result,
        args.json,
        [
            f"attribution batch={args.batch} coalitions={args.coalitions} mode={args.mode} "
            f"device={result['device']}",
            f"  numpy reference : {numpy_ms:8.2f} ms (median of {repeats})",
            f"  mlx twin        : {mlx_ms:8.2f} ms (packing once: {pack_ms:.2f} ms)",
            f"  speedup         : {result['speedup']:.2f}x   max |diff| = {diff:.2e}",
        ],
    )


if __name__ == "__main__":
    main()
