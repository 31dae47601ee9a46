"""Policy-update speed: the compiled update against the same update uncompiled, and peak memory.

The clipped-policy update (loss, gradient, AdamW step) of `train/policy.py` runs on one random
batch, once built with `mx.compile(step, inputs=state, outputs=state)` and once without. Both
are warmed up (the compiled one traces twice: before and after the optimizer state exists),
then timed alternately, so machine noise hits both sides alike; the ratio of their medians is
the `speedup`. Peak memory is each side's own warm-up window.

    python bench/update.py            # embedded SmolLM2-135M, 8 x (96 prompt + 64 completion)
    python bench/update.py --quick    # tiny random model, seconds
    python bench/update.py --json     # one JSON line
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
import mlx.core as mx
import numpy as np

from bench.common import bench_parser, emit
# isort: on

MODES = ("compiled", "uncompiled")


def random_batch(vocab: int, batch: int, prompt_len: int, completion_len: int, seed: int = 0):
    from ospo_mlx.train.batching import pack_batch

    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab, prompt_len).tolist() for _ in range(batch)]
    completions = [rng.integers(0, vocab, completion_len).tolist() for _ in range(batch)]
    advantages = [rng.normal(size=completion_len).tolist() for _ in range(batch)]
    return pack_batch(prompts, completions, advantages)


def build_updates(
    model: Any, batch: Any, repeats: int, accum: int, micro: int = 0
) -> dict[str, Any]:
    """Both updates on the same model (each with its own optimizer), warmed up; peak memory."""
    from ospo_mlx.config import OptimConfig
    from ospo_mlx.train.policy import PolicyUpdate, build_optimizer

    out = {}
    for mode in MODES:
        cfg = OptimConfig(
            learning_rate=1e-5, steps=repeats + 4, gradient_accumulation_steps=accum,
            micro_batch_size=micro,
        )  # fmt: skip
        update = PolicyUpdate(
            model, build_optimizer(cfg, cfg.steps), cfg, temperature=1.0,
            max_completion_length=batch.num_positions, compile=mode == "compiled",
        )  # fmt: skip
        mx.reset_peak_memory()
        for _ in range(2):  # the first call creates the optimizer state: a second trace
            update(batch)
        out[mode] = (update, mx.get_peak_memory() / 1e9)
    return out


def measure(model: Any, batch: Any, repeats: int, accum: int, micro: int = 0) -> dict[str, Any]:
    updates = build_updates(model, batch, repeats, accum, micro)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for i in range(repeats):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:  # alternate who goes first
            tic = time.perf_counter()
            updates[mode][0](batch)
            times[mode].append(time.perf_counter() - tic)
    total_tokens = int(batch.size * batch.tokens.shape[1])
    completion_tokens = int(batch.mask.sum().item())
    result: dict[str, Any] = {}
    for mode in MODES:
        seconds = statistics.median(times[mode])
        result[mode] = {
            "seconds_per_update": seconds,
            "times": times[mode],
            "tokens_per_second": total_tokens / seconds,
            "completion_tokens_per_second": completion_tokens / seconds,
            "peak_memory_gb": updates[mode][1],
        }
    result["speedup"] = (
        result["uncompiled"]["seconds_per_update"] / result["compiled"]["seconds_per_update"]
    )
    return result


def main() -> None:
    from mlx_lm.utils import dequantize_model

    from ospo_mlx.config import LoraConfig
    from ospo_mlx.models.load import load_model, should_dequantize
    from ospo_mlx.train.policy import apply_lora

    parser = bench_parser(__doc__, quick_help="tiny random model, 4 x 64 tokens")
    parser.add_argument("--model", default=None, help="model name/path (default: embedded SmolLM2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6, help="timed updates per side")
    parser.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-batches")
    parser.add_argument(
        "--micro-batch-size", type=int, default=0,
        help="rows per forward/backward (optim.micro_batch_size; 0 = automatic)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        args.model = args.model or "tiny"
        args.batch, args.prompt_len, args.completion_len, args.repeats = 4, 32, 32, 4

    model, _ = load_model(args.model)
    if should_dequantize(None):  # as the trainer does: float weights on CPU
        dequantize_model(model)
    lora = LoraConfig(rank=8, num_layers=16, keys=["self_attn.q_proj", "self_attn.v_proj"])
    apply_lora(model, lora, seed=0)  # the demo's adapters
    vocab = int(model.args.vocab_size) if hasattr(model, "args") else 1000
    batch = random_batch(vocab, args.batch, args.prompt_len, args.completion_len)
    result = {
        "model": args.model or "smollm2-135m-instruct",
        "device": str(mx.default_device()),
        "batch": args.batch,
        "seq_len": int(batch.tokens.shape[1]),
        "completion_len": args.completion_len,
        "accum": args.accum,
        "micro_batch_size": args.micro_batch_size,
        "repeats": args.repeats,
        **measure(model, batch, args.repeats, args.accum, args.micro_batch_size),
    }
    lines = [
        f"model {result['model']} on {result['device']}: {args.batch} x {result['seq_len']} "
        f"tokens (accum {args.accum}), {args.repeats} alternating updates per side"
    ]
    for mode in MODES:
        r = result[mode]
        lines.append(
            f"{mode:>10}: {r['seconds_per_update']:.3f} s/update  {r['tokens_per_second']:.0f} "
            f"tok/s  peak {r['peak_memory_gb']:.2f} GB"
        )
    lines.append(f"   speedup: {result['speedup']:.2f}x (uncompiled / compiled median time)")
    emit("update", result, args.json, lines)


if __name__ == "__main__":
    main()
