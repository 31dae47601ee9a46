"""Benchmark: vectorized coalition values vs the sequential one-coalition-at-a-time reference.

8 completions of 6 to 10 segments, up to 64 contiguous coalitions each, ranked against the real
ESCI sample catalog (../shared/data/esci-sample; a generated catalog when absent) through a
usearch index, with the embedded MiniLM encoder. Prints one JSON line.

Both paths run in the same process, one after the other, so compare their ratio, not absolute
times (the CPU is shared). Next to wall time it reports process CPU time, the encoder's achieved
GFLOP/s (position-wise matmul FLOPs / wall time) and, measured in the same run, the float32
matmul rate on the encoder's largest shape: `speedup_ceiling` is that rate over the sequential
path's achieved rate, i.e. the speedup the vectorized path would reach if it ran at matmul peak
with no other cost.

    python bench/coalitions.py [--json] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import ospo_mlx
from ospo_mlx.attribution import contiguous_coalitions, segment
from ospo_mlx.data.schema import Product, Task

ESCI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "esci-sample"
VOCAB = [
    "wireless",
    "bluetooth",
    "headphones",
    "running",
    "shoes",
    "phone",
    "case",
    "usb",
    "charger",
    "cable",
    "waterproof",
    "hiking",
    "boots",
    "kids",
    "winter",
    "jacket",
    "laptop",
    "stand",
    "noise",
    "cancelling",
    "earbuds",
    "steel",
    "water",
    "bottle",
    "yoga",
    "mat",
    "desk",
    "lamp",
    "gaming",
    "keyboard",
    "backpack",
    "leather",
    "wallet",
    "men",
    "women",
    "black",
    "red",
    "blue",
    "large",
    "small",
]


def load_catalog_and_queries(
    rng: random.Random,
) -> tuple[dict[str, Product], list[tuple[str, dict[str, float]]], str]:
    """(catalog, [(query, targets)], source)."""
    if (ESCI / "esci_subset.json").is_file():
        catalog: dict[str, Product] = {}
        rows = json.loads((ESCI / "esci_subset.json").read_text(encoding="utf-8"))
        queries = []
        for row in rows:
            targets = {}
            for p in row["products"]:
                catalog.setdefault(p["product_id"], Product(p["product_id"], p["product_text"]))
                if p["relevance"] > 0:
                    targets[p["product_id"]] = float(p["relevance"])
            if targets:
                queries.append((row["query"], targets))
        csv.field_size_limit(sys.maxsize)
        with (ESCI / "esci_products_full.csv").open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["product_id"] not in catalog and row["product_title"]:
                    catalog[row["product_id"]] = Product(row["product_id"], row["product_title"])
        return catalog, queries, "esci-sample"
    catalog = {f"g{i}": Product(f"g{i}", " ".join(rng.sample(VOCAB, 6))) for i in range(800)}
    queries = [(" ".join(rng.sample(VOCAB, 2)), {f"g{rng.randrange(800)}": 3.0}) for _ in range(50)]
    return catalog, queries, "generated"


def make_completions(catalog, queries, n: int, rng: random.Random):
    """n query-expansion completions of 6-10 comma-separated phrases drawn from target titles."""
    responses, tasks = [], []
    for i, (query, targets) in enumerate(rng.sample(queries, n)):
        words = " ".join(catalog[p].title for p in targets if p in catalog).split() + rng.sample(
            VOCAB, 12
        )
        n_seg = rng.randint(6, 10)
        phrases = [" ".join(rng.sample(words, rng.randint(1, 3))) for _ in range(n_seg)]
        text = "<answer>" + ", ".join(phrases) + "</answer>"
        responses.append(text)
        tasks.append(Task(f"b{i}", "query_expansion", targets, query=query))
    return responses, tasks


def matmul_gflops(tokens: int, d_in: int, d_out: int, repeats: int = 5) -> float:
    """Best-of-`repeats` float32 MLX matmul rate on a (tokens, d_in) x (d_in, d_out) product."""
    import mlx.core as mx

    x, w = mx.random.normal((tokens, d_in)), mx.random.normal((d_out, d_in))
    mx.eval(x, w)
    mx.eval(x @ w.T)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(x @ w.T)
        best = min(best, time.perf_counter() - t0)
    return 2 * tokens * d_in * d_out / best / 1e9


def timed(fn):
    """(result, wall ms, process CPU ms) of fn()."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="(default) print one JSON line")
    parser.add_argument("--quick", action="store_true", help="2 completions instead of 8")
    parser.add_argument("--max-coalitions", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import mlx.core as mx

    from ospo_mlx.reward.encoder import load_encoder
    from ospo_mlx.reward.index import CatalogIndex
    from ospo_mlx.reward.retrieval import RetrievalReward, RewardConfig
    from ospo_mlx.reward.retrievers import DenseRetriever

    rng = random.Random(args.seed)
    catalog, queries, source = load_catalog_and_queries(rng)
    encoder = load_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        index = CatalogIndex.build(catalog, encoder, tmp)
        reward = RetrievalReward(DenseRetriever(encoder, index), RewardConfig(mode="catalog"))
        responses, tasks = make_completions(catalog, queries, 2 if args.quick else 8, rng)
        segs = [segment(r, "phrase") for r in responses]
        masks = [contiguous_coalitions(len(s), None, args.max_coalitions, args.seed) for s in segs]
        reward.coalition_values(responses[:1], segs[:1], masks[:1], tasks[:1])  # warm-up

        before, tok0 = encoder.texts_encoded, encoder.tokens_encoded
        fast, vec_ms, vec_cpu = timed(
            lambda: reward.coalition_values(responses, segs, masks, tasks)
        )
        unique, vec_tokens = encoder.texts_encoded - before, encoder.tokens_encoded - tok0
        tok0 = encoder.tokens_encoded
        slow, seq_ms, seq_cpu = timed(
            lambda: reward.coalition_values_sequential(responses, segs, masks, tasks)
        )
        seq_tokens = encoder.tokens_encoded - tok0
        cfg = encoder.config
        peak = matmul_gflops(vec_tokens, cfg.hidden_size, cfg.intermediate_size)

    diff = max(float(np.abs(a - b).max()) for a, b in zip(fast, slow, strict=True))
    vec_gflops = vec_tokens * encoder.flops_per_token / vec_ms / 1e6
    seq_gflops = seq_tokens * encoder.flops_per_token / seq_ms / 1e6
    result = {
        "speedup": round(seq_ms / vec_ms, 2),
        "speedup_cpu": round(seq_cpu / vec_cpu, 2),
        "speedup_ceiling": round(peak / seq_gflops, 2),
        "max_abs_diff": diff,
        "vectorized_ms": round(vec_ms, 1),
        "sequential_ms": round(seq_ms, 1),
        "vectorized_cpu_ms": round(vec_cpu, 1),
        "sequential_cpu_ms": round(seq_cpu, 1),
        "encoder_tokens": {"vectorized": vec_tokens, "sequential": seq_tokens},
        "encoder_gflop": round(vec_tokens * encoder.flops_per_token / 1e9, 1),
        "gflops": {
            "vectorized": round(vec_gflops, 1),
            "sequential": round(seq_gflops, 1),
            "matmul_peak": round(peak, 1),
        },
        "coalitions": int(sum(m.shape[0] for m in masks)),
        "unique_texts": int(unique),
        "completions": len(responses),
        "segments": [len(s) for s in segs],
        "catalog": len(catalog),
        "source": source,
        "mean_value": round(float(np.mean(np.concatenate(fast))), 4),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "mlx": mx.__version__,
        "blas": ospo_mlx.BLAS.status if hasattr(ospo_mlx.BLAS, "status") else str(ospo_mlx.BLAS),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
