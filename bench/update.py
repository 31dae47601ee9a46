"""Benchmark the policy update: compiled vs uncompiled tokens/s and MLX peak memory.

python bench/update.py            # embedded SmolLM2-135M, 8 x (96 prompt + 64 completion)
python bench/update.py --quick    # tiny random model, seconds
python bench/update.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import numpy as np
from mlx_lm.utils import dequantize_model

from ospo_mlx.config import LoraConfig, OptimConfig
from ospo_mlx.models.load import load_model
from ospo_mlx.train.batching import pack_batch
from ospo_mlx.train.policy import PolicyUpdate, apply_lora, build_optimizer
from ospo_mlx.train.trainer import should_dequantize


def random_batch(vocab: int, batch: int, prompt_len: int, completion_len: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, vocab, prompt_len).tolist() for _ in range(batch)]
    completions = [rng.integers(0, vocab, completion_len).tolist() for _ in range(batch)]
    advantages = [rng.normal(size=completion_len).tolist() for _ in range(batch)]
    return pack_batch(prompts, completions, advantages)


def measure(model, batch, compiled: bool, repeats: int, accum: int) -> dict[str, float]:
    cfg = OptimConfig(learning_rate=1e-5, steps=repeats + 2, gradient_accumulation_steps=accum)
    update = PolicyUpdate(
        model, build_optimizer(cfg, cfg.steps), cfg, temperature=1.0,
        max_completion_length=batch.num_positions, compile=compiled,
    )  # fmt: skip
    update(batch)  # warm-up: traces and compiles
    mx.reset_peak_memory()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        update(batch)
        times.append(time.perf_counter() - tic)
    seconds = statistics.median(times)
    total_tokens = int(batch.size * batch.tokens.shape[1])
    completion_tokens = int(batch.mask.sum().item())
    return {
        "seconds_per_update": seconds,
        "tokens_per_second": total_tokens / seconds,
        "completion_tokens_per_second": completion_tokens / seconds,
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name/path (default: embedded SmolLM2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--completion-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accum", type=int, default=1, help="gradient accumulation micro-batches")
    parser.add_argument("--quick", action="store_true", help="tiny model and small batch (seconds)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.model, args.batch, args.prompt_len, args.completion_len, args.repeats = (
            "tiny",
            4,
            32,
            32,
            3,
        )

    model, _ = load_model(args.model)
    if should_dequantize(None):  # as the trainer does: float weights on CPU
        dequantize_model(model)
    lora = LoraConfig(
        rank=8, num_layers=16, keys=["self_attn.q_proj", "self_attn.v_proj"]
    )  # demo's
    apply_lora(model, lora, seed=0)
    vocab = int(model.args.vocab_size) if hasattr(model, "args") else 1000
    batch = random_batch(vocab, args.batch, args.prompt_len, args.completion_len)
    result = {
        "model": args.model or "smollm2-135m-instruct",
        "batch": args.batch,
        "seq_len": int(batch.tokens.shape[1]),
        "completion_len": args.completion_len,
        "accum": args.accum,
        "compiled": measure(model, batch, True, args.repeats, args.accum),
        "uncompiled": measure(model, batch, False, args.repeats, args.accum),
    }
    result["speedup"] = (
        result["compiled"]["tokens_per_second"] / result["uncompiled"]["tokens_per_second"]
    )
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"model {result['model']}  batch {args.batch} x {result['seq_len']} tokens (accum {args.accum})"
    )
    for mode in ("compiled", "uncompiled"):
        r = result[mode]
        print(
            f"{mode:>10}: {r['seconds_per_update']:.3f} s/update  {r['tokens_per_second']:.0f} tok/s  "
            f"peak {r['peak_memory_gb']:.2f} GB"
        )
    print(f"   speedup: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
