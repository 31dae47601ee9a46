"""Index at scale: recall@10 of f16/i8 against f32, build throughput and memory, catalog search.

Three parts, each reported separately (and labelled: measured or extrapolated):

1. recall: the real product texts of ../shared/data (H&M articles and ESCI products) and real
   queries (ESCI queries, H&M item names), embedded once with the embedded MiniLM; one HNSW
   index per dtype from the same vectors; recall@10 against exact f32 search.
2. encode: MiniLM products/s on those product texts (the build's bottleneck), wall and CPU.
3. index: `--n` vectors (default 100k) added in batches per dtype in a child process (peak RSS
   of that process), then catalog-mode coalition search: `--coalitions` queries, k=10, one
   batched call, as `DenseRetriever.rank` without pools does. The vectors are 300 real
   embeddings tiled with small noise (real texts at 100k would take the encoder hours here).

    python bench/index_scale.py [--json] [--quick] [--n 100000]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
import numpy as np

from bench.common import REPO_ROOT, bench_parser, emit
# isort: on

SHARED = REPO_ROOT.parent / "shared" / "data"
DTYPES = ("f32", "f16", "i8")


def real_texts(limit: int | None) -> tuple[list[str], list[str]]:
    """Product texts and query texts from the real samples (or the demo catalog without them)."""
    from ospo_mlx.data.esci import EsciConfig, convert_esci
    from ospo_mlx.data.hm import HmConfig, convert_hm
    from ospo_mlx.data.schema import load_catalog, load_tasks, product_text

    if (SHARED / "hm-sample").is_dir():
        hm_cat, _, _ = convert_hm(SHARED / "hm-sample", HmConfig())
        es_cat, es_tasks, _ = convert_esci(SHARED / "esci-sample", EsciConfig(version="all"))
        es_texts = [product_text(p) for p in es_cat.values()]
        hm_texts = [product_text(p) for p in hm_cat.values()]
        room = len(hm_texts) if limit is None else max(limit - len(es_texts), limit // 2)
        products = hm_texts[:room] + es_texts  # both data sets, ESCI whole
        queries = [t.query for t in es_tasks] + [p.title for p in list(hm_cat.values())[::8]]
    else:
        cat = load_catalog(REPO_ROOT / "data" / "demo" / "catalog.jsonl")
        products = [product_text(p) for p in cat.values()]
        queries = [t.query for t in load_tasks(REPO_ROOT / "data" / "demo" / "test.jsonl")]
    return products[:limit], queries[: (limit // 4 if limit else None)]


def recall_part(limit: int | None) -> dict:
    from usearch.index import Index

    from ospo_mlx.reward.encoder import load_encoder
    from ospo_mlx.reward.index import top_k

    enc = load_encoder()
    products, queries = real_texts(limit)
    start, cpu = time.perf_counter(), time.process_time()
    vecs = enc.encode(products)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = enc.tokens_encoded
    q = enc.encode(queries)
    truth, _ = top_k(q @ vecs.T, 10)
    out = {
        "products": len(products),
        "queries": len(queries),
        "encode_products_per_s": len(products) / wall,
        "encode_products_per_cpu_s": len(products) / cpu,
        "encode_tokens_per_product": tokens / len(products),
    }
    for dtype in DTYPES:
        index = Index(ndim=enc.dim, metric="cos", dtype=dtype)
        index.add(np.arange(len(vecs), dtype=np.uint64), vecs)
        for exact in (False, True):
            keys = np.atleast_2d(index.search(q, 10, exact=exact).keys).astype(np.int64)
            hits = [len(set(k) & set(t)) for k, t in zip(keys, truth, strict=True)]
            out[f"recall10_{dtype}_{'exact' if exact else 'hnsw'}"] = float(np.mean(hits) / 10)
    return out


def index_part(n: int, dtype: str, coalitions: int, seed: int = 0) -> dict:
    """Run in a child process: its peak RSS is the index build's."""
    from usearch.index import Index

    from ospo_mlx.reward.encoder import load_encoder

    enc = load_encoder()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    products, queries = real_texts(300)
    base = enc.encode(products)
    qv = enc.encode((queries * (coalitions // max(len(queries), 1) + 1))[:coalitions])
    rng = np.random.default_rng(seed)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    index = Index(ndim=enc.dim, metric="cos", dtype=dtype)
    start = time.perf_counter()
    for lo in range(0, n, 4096):
        m = min(4096, n - lo)
        vecs = base[rng.integers(0, len(base), m)] + rng.normal(0, 0.02, (m, enc.dim))
        vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
        index.add(np.arange(lo, lo + m, dtype=np.uint64), vecs)
    add_s = time.perf_counter() - start
    times = []
    for _ in range(7):
        t = time.perf_counter()
        index.search(qv, 10)
        times.append(time.perf_counter() - t)
    texts = [f"{queries[i % len(queries)]} {i}" for i in range(coalitions)]
    t = time.perf_counter()
    enc.encode(texts)
    encode_s = time.perf_counter() - t
    return {
        "n": n,
        "dtype": dtype,
        "add_s": add_s,
        "add_per_s": n / add_s,
        "index_bytes": index.memory_usage,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_index_mb": rss1 / 1024,
        "rss_start_mb": rss0 / 1024,
        "search_ms": float(np.median(times) * 1e3),
        "coalitions": coalitions,
        "encode_coalitions_ms": encode_s * 1e3,
    }


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="vectors per index (part 3)")
    parser.add_argument("--coalitions", type=int, default=128, help="queries per search call")
    parser.add_argument("--products", type=int, default=3000, help="real products (part 1)")
    parser.add_argument("--child", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.child:
        print(json.dumps(index_part(args.n, args.child, args.coalitions)))
        return
    n = 2000 if args.quick else args.n
    recall = recall_part(300 if args.quick else args.products)
    scale = []
    for dtype in DTYPES:
        cmd = [sys.executable, __file__, "--child", dtype, "--n", str(n)]
        cmd += ["--coalitions", str(args.coalitions)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        scale.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    per_s = recall["encode_products_per_s"]
    f32 = scale[0]
    extrapolated = {  # linear in n: labelled as an extrapolation, not a measurement
        "n": 1_800_000,
        "encode_hours": 1_800_000 / per_s / 3600,
        "add_minutes_f32": 1_800_000 / f32["add_per_s"] / 60,
        "index_gb": {s["dtype"]: s["index_bytes"] * 1_800_000 / n / 1e9 for s in scale},
    }
    result = {"recall": recall, "index": scale, "extrapolated_1_8M": extrapolated}
    lines = [
        f"recall@10 vs exact f32 ({recall['products']} real products, {recall['queries']} "
        "queries, MiniLM):",
        *(
            f"  {d}: HNSW {recall[f'recall10_{d}_hnsw']:.3f}, exact {recall[f'recall10_{d}_exact']:.3f}"
            for d in DTYPES
        ),
        f"encode: {per_s:.1f} products/s wall, {recall['encode_products_per_cpu_s']:.1f} per "
        f"CPU-second ({recall['encode_tokens_per_product']:.0f} tokens/product)",
        *(
            f"index {s['dtype']} n={s['n']:,}: add {s['add_per_s']:,.0f}/s, "
            f"{s['index_bytes'] / 1e6:.0f} MB, peak RSS {s['peak_rss_mb']:.0f} MB, "
            f"search {s['coalitions']} queries {s['search_ms']:.1f} ms, encode them "
            f"{s['encode_coalitions_ms']:.0f} ms"
            for s in scale
        ),
        f"extrapolated to 1.8M: encode {extrapolated['encode_hours']:.1f} h, "
        f"add f32 {extrapolated['add_minutes_f32']:.1f} min, index GB "
        + ", ".join(f"{k} {v:.2f}" for k, v in extrapolated["index_gb"].items()),
    ]
    emit("index_scale", result, args.json, lines)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
