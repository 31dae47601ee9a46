"""Shared helpers of the bench scripts: flags, machine record, median timing, JSON output.

Every script takes `--json` (print the result as one JSON line, with the machine and versions
it ran on) and `--quick` (a short version for smoke tests), times with medians after a
warm-up, and prints a short human summary otherwise.

    from bench.common import bench_parser, emit, median_seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python bench/x.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))


def bench_parser(doc: str | None, quick_help: str = "a short version") -> argparse.ArgumentParser:
    """An ArgumentParser described by the script docstring's first line, with --json/--quick."""
    first = (doc or "").strip().splitlines()[0] if doc else None
    parser = argparse.ArgumentParser(
        description=first, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine(measure_matmul: bool = True) -> dict[str, Any]:
    """The `ospo doctor --json` fields (minus asset paths) plus CPU model, cores and load.

    The 1-minute load average is recorded because these numbers are taken on a shared CPU.
    """
    import ospo_mlx
    from ospo_mlx.doctor import measure_matmul_gflops, mlx_backend

    record: dict[str, Any] = {
        "ospo_version": ospo_mlx.__version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "mlx_version": _version("mlx"),
        "mlx_lm_version": _version("mlx-lm"),
        "numpy_version": _version("numpy"),
        "backend": mlx_backend(),
        "blas_status": ospo_mlx.BLAS.status,
        "blas_path": ospo_mlx.BLAS.path,
    }
    if measure_matmul:
        record["matmul_gflops"] = round(measure_matmul_gflops(512, 3), 1)
    if hasattr(os, "getloadavg"):
        record["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return record


def median_seconds(
    fn: Callable[[], Any], repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed runs; and all times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in milliseconds (see `median_seconds`)."""
    return median_seconds(fn, repeats, warmup)[0] * 1e3


def spread(values: Iterable[float]) -> dict[str, float | int | None]:
    """mean, std (population), min, max and n of the finite values; None entries when empty."""
    import math

    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(vals),
        "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
    }


def emit(
    name: str,
    result: dict[str, Any],
    as_json: bool,
    lines: Iterable[str] = (),
    *,
    with_machine: bool = True,
) -> None:
    """Print `result` as one JSON line (`bench` name and `machine` added) or the human `lines`."""
    if as_json:
        record = {"bench": name, **result}
        if with_machine and "machine" not in record:
            record["machine"] = machine()
        print(json.dumps(record, default=_jsonable), flush=True)
        return
    for line in lines:
        print(line, flush=True)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / mlx scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
