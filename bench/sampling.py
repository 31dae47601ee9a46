"""Group-sampling speed: ospo's `sample_groups` against a direct mlx-lm `batch_generate` call.

Same model, prompts (each repeated G times, prompt-major), sampler and max new tokens. Both
sides are warmed up, then run alternately; the medians of sampled tokens per second of wall
time (prefill, decoding and, for ospo, text + offsets) are compared. Target: ratio >= 0.95.

    python bench/sampling.py [--model tiny] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import ospo_mlx  # noqa: F401  (BLAS before mlx)

QUESTIONS = [
    "Rewrite this shopping query into a richer one: red running shoes for women",
    "What is the capital of France?",
    "Describe what a shopper who bought a linen shirt and sandals wants next.",
    "Name three fruits that are rich in vitamin C and explain why they are healthy.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="'default', 'tiny' or a model dir")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--quick", action="store_true", help="fewer prompts, tokens and rounds")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()

    import mlx.core as mx
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_sampler

    from ospo_mlx.models.load import load_model
    from ospo_mlx.train.rollout import SamplingConfig, sample_groups

    n_prompts = 2 if args.quick else len(QUESTIONS)
    max_new = args.max_new_tokens or (16 if args.quick else 48)
    rounds = args.rounds or (2 if args.quick else 3)
    g = args.num_generations
    model, tok = load_model(args.model)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        for q in QUESTIONS[:n_prompts]
    ]
    config = SamplingConfig(max_new_tokens=max_new, temperature=1.0)

    def run_ospo(seed: int) -> float:
        r = sample_groups(model, tok, prompts, config, num_generations=g, seed=seed)
        return r.stats.generation_tokens / r.stats.wall_s

    def run_mlx_lm(seed: int) -> float:
        mx.random.seed(seed)
        tic = time.perf_counter()
        out = batch_generate(
            model,
            tok,
            [p for p in prompts for _ in range(g)],
            max_tokens=max_new,
            sampler=make_sampler(temp=1.0),
            completion_batch_size=config.batch_size,
            prefill_batch_size=config.prefill_batch_size,
            return_token_ids=True,
        )
        wall = time.perf_counter() - tic
        return out.stats.generation_tokens / wall

    run_ospo(0), run_mlx_lm(0)  # warm-up (kernel setup, allocator)
    ours, theirs = [], []
    for i in range(rounds):
        ours.append(run_ospo(i + 1))
        theirs.append(run_mlx_lm(i + 1))
    result = {
        "model": args.model,
        "prompts": n_prompts,
        "num_generations": g,
        "max_new_tokens": max_new,
        "rounds": rounds,
        "ospo_tokens_per_s": round(statistics.median(ours), 2),
        "mlx_lm_tokens_per_s": round(statistics.median(theirs), 2),
    }
    result["ratio"] = round(result["ospo_tokens_per_s"] / result["mlx_lm_tokens_per_s"], 3)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
