"""OSPO's per-step overhead over GRPO: the same config stepped with each algorithm, alternating.

Both algorithms share one trainer (same model, data order and compiled update); after a
warm-up step of each, steps alternate grpo/ospo and the median step times are compared.

    python bench/step_overhead.py --quick     # configs/tiny.yaml (tiny model), about a minute
    python bench/step_overhead.py --json      # configs/demo.yaml (SmolLM2), several minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
from ospo_mlx.config import load_config
from ospo_mlx.train.trainer import Trainer

PARTS = ("time/sample", "time/reward", "time/attribution", "time/update", "time/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", default=None, help="YAML config (default demo; tiny with --quick)"
    )
    parser.add_argument("--pairs", type=int, default=3, help="measured grpo/ospo step pairs")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override"
    )
    parser.add_argument("--quick", action="store_true", help="tiny model, 2 pairs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    path = args.config or ("configs/tiny.yaml" if args.quick else "configs/demo.yaml")
    pairs = 2 if args.quick and args.pairs == 3 else args.pairs

    with tempfile.TemporaryDirectory() as out:
        overrides = [*args.overrides, "run.log_attributions=false", "run.save_every=100000"]
        cfg = load_config(path, overrides, **{"run.out": out, "optim.steps": 2 * (pairs + 1)})
        trainer = Trainer.from_config(cfg)
        times: dict[str, list[dict[str, float]]] = {"grpo": [], "ospo": []}
        for i in range(2 * (pairs + 1)):
            algorithm = ("grpo", "ospo")[i % 2]
            trainer.config.algorithm = algorithm
            record = trainer.train_step()
            if i >= 2:  # the first pair warms up compilation and caches
                times[algorithm].append(record.metrics)
        trainer.log.close()

    medians = {
        a: {k: statistics.median(m[k] for m in rows) for k in PARTS} for a, rows in times.items()
    }
    result = {
        "config": path,
        "pairs": pairs,
        "grpo": medians["grpo"],
        "ospo": medians["ospo"],
        "ospo_coalitions_median": statistics.median(m["ospo/coalitions"] for m in times["ospo"]),
        "ospo_grpo_ratio": medians["ospo"]["time/step"] / medians["grpo"]["time/step"],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{path}: median of {pairs} steps each (after warm-up)")
    for algorithm in ("grpo", "ospo"):
        m = medians[algorithm]
        print(f"  {algorithm}: " + "  ".join(f"{k.split('/')[1]} {m[k]:.2f}s" for k in PARTS))
    print(f"  ospo_grpo_ratio: {result['ospo_grpo_ratio']:.3f}")


if __name__ == "__main__":
    main()
