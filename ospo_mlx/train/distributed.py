"""Data-parallel training over `mx.distributed` (launched with `mlx.launch`, ring or MPI).

Every rank holds the whole model and walks the same (seeded) task order; each step's prompts
are split into one contiguous block per rank, each rank samples, scores and attributes its own
completions, and the gradients are averaged inside the compiled update so every rank applies
the same AdamW step. Only rank 0 writes the run directory and draws the progress view.

Equivalence with one process over the combined batch: per-rank losses must share global
normalizers (the dapo/bnpo token count is summed over ranks), so averaging the per-rank
gradients gives exactly the gradient of the combined-batch loss.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ospo_mlx.errors import ConfigError

Reduction = Literal["mean", "sum", "min", "max"]

# How each metrics.jsonl key combines across ranks (anything else is averaged). Counts add up,
# extremes stay extremes, and timings report the slowest rank (the one the step waits for).
METRIC_REDUCTIONS: dict[str, Reduction] = {
    "completions/min_length": "min",
    "completions/max_length": "max",
    "peak_memory_gb": "max",
    "tokens_per_second": "sum",
    "ospo/coalitions": "sum",
    "ospo/surrogate_values": "sum",
    "completions/masked_truncated": "sum",
    "dynamic_sampling/dropped_groups": "sum",
    "dynamic_sampling/refilled_groups": "sum",
    "dynamic_sampling/unused_groups": "sum",
    "ospo/no_answer_tags": "sum",
    "ospo/unclosed_answer": "sum",
    "ospo/format_zeroed": "sum",
    "reward/nonfinite": "sum",
    "ospo/no_segments": "sum",
    "skipped/prompt_too_long": "sum",
    "completions/stopped_at_answer": "sum",
    "completions/after_answer": "sum",
    "reward/collapsed_repeats": "sum",
}
TIME_PREFIX = "time/"
# Per-reward counters (rewards/<name>/none, rewards/<name>/nonfinite, ...) add up across ranks.
COUNT_SUFFIXES = ("/none", "/nonfinite", "/none_coalitions")

# Environment variables that mlx.launch (ring) or mpirun set in every process they start.
_LAUNCH_VARS = ("MLX_RANK", "MLX_HOSTFILE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MLX_JACCL_DEVICES")


@dataclass(frozen=True)
class World:
    """The set of cooperating processes; `World()` is the single-process default."""

    group: Any = None  # mx.distributed.Group, or None for a single process
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched() -> bool:
    """True when this process was started by mlx.launch or an MPI launcher."""
    return any(os.environ.get(v) for v in _LAUNCH_VARS)


def init_world(backend: str = "any", strict: bool | None = None) -> World:
    """Join the distributed group when launched by mlx.launch/mpirun, else a single process.

    `strict` (default: whether launch variables are present) turns a failed initialisation
    into a ConfigError instead of silently training alone.
    """
    strict = launched() if strict is None else strict
    try:
        group = mx.distributed.init(strict=strict, backend=backend)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"distributed: cannot join the process group ({exc}); check the hostfile given to mlx.launch"
        ) from None
    if group.size() == 1:
        return SINGLE
    return World(group=group, rank=group.rank(), size=group.size())


def check_divisible(batch_size: int, world: World) -> None:
    """Prompts are split evenly across ranks, so the batch must be a multiple of the world size."""
    if batch_size % world.size:
        raise ConfigError(
            f"optim.batch_size: {batch_size} prompts cannot be split evenly over {world.size} "
            f"processes; use a multiple of {world.size}"
        )


def shard(items: Sequence[Any], world: World) -> list[Any]:
    """This rank's contiguous block of a globally ordered batch (rank 0 gets the first block).

    Contiguous blocks (not strides) keep the combined batch in the original order, so the
    gathered results line up with a single-process run's.
    """
    check_divisible(len(items), world)
    per = len(items) // world.size
    return list(items[world.rank * per : (world.rank + 1) * per])


def all_sum(x: mx.array, world: World) -> mx.array:
    """Sum over ranks (identity for a single process). Safe inside `mx.compile`."""
    return mx.distributed.all_sum(x, group=world.group) if world.distributed else x


def average_gradients(grad: Any, world: World) -> Any:
    """Average a gradient tree over ranks: all_sum / size, small arrays bucketed into one call.

    Called inside the compiled step (right after value_and_grad) so the step stays compiled.
    """
    if not world.distributed:
        return grad
    return nn.average_gradients(grad, group=world.group)


def global_count(local: mx.array | float, world: World) -> mx.array:
    """A count (e.g. completion tokens) summed over ranks."""
    return all_sum(mx.array(local, dtype=mx.float32), world)


def gather(values: np.ndarray | Sequence[float], world: World) -> np.ndarray:
    """Concatenate equally sized 1-D arrays from every rank, in rank order (float64 out)."""
    if not world.distributed:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    local = np.asarray(values, dtype=np.float32).reshape(-1)
    out = mx.distributed.all_gather(mx.array(local), group=world.group)
    return np.array(out, dtype=np.float64)


def gather_rows(rows: list[dict[str, Any]], world: World) -> list[dict[str, Any]]:
    """Every rank's JSON rows (e.g. rollouts), in rank order, so rank 0 can log them all.

    Rows travel as UTF-8 JSON bytes padded to the longest rank's payload (one all_gather).
    """
    if not world.distributed:
        return rows
    payload = np.frombuffer(json.dumps(rows, allow_nan=True).encode("utf-8"), dtype=np.uint8)
    longest = int(mx.distributed.all_max(mx.array(len(payload)), group=world.group).item())
    padded = np.zeros(longest + 1, dtype=np.uint8)  # +1: all_gather needs a non-empty array
    padded[: len(payload)] = payload
    gathered = np.array(mx.distributed.all_gather(mx.array(padded), group=world.group))
    out: list[dict[str, Any]] = []
    for chunk in gathered.reshape(world.size, -1):
        out.extend(json.loads(bytes(chunk).rstrip(b"\0").decode("utf-8")))
    return out


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when `flag` is true on any (e.g. a Ctrl-C that reached one process)."""
    if not world.distributed:
        return bool(flag)
    return float(mx.distributed.all_max(mx.array(float(flag)), group=world.group).item()) > 0


def _reduction(key: str, reductions: Mapping[str, Reduction]) -> Reduction:
    if key in reductions:
        return reductions[key]
    if key.startswith("rewards/") and key.endswith(COUNT_SUFFIXES):
        return "sum"
    return "max" if key.startswith(TIME_PREFIX) else "mean"


def reduce_metrics(
    metrics: Mapping[str, float],
    world: World,
    reductions: Mapping[str, Reduction] = METRIC_REDUCTIONS,
    keep: Sequence[str] = ("step",),
) -> dict[str, float]:
    """Combine one step's per-rank metrics into the run's row (one collective per reduction).

    Every rank must pass the same keys. `keep` keys are identical everywhere and copied as is.
    Non-finite values propagate (a NaN loss on any rank shows in the row).
    """
    if not world.distributed:
        return dict(metrics)
    keys = [k for k in metrics if k not in keep]
    out: dict[str, float] = {k: metrics[k] for k in keep if k in metrics}
    by_kind: dict[str, list[str]] = {}
    for key in keys:
        by_kind.setdefault(_reduction(key, reductions), []).append(key)
    ops = {"sum": mx.distributed.all_sum, "mean": mx.distributed.all_sum,
           "min": mx.distributed.all_min, "max": mx.distributed.all_max}  # fmt: skip
    for kind, names in by_kind.items():
        local = mx.array(np.array([float(metrics[k]) for k in names], dtype=np.float32))
        reduced = ops[kind](local, group=world.group)
        if kind == "mean":
            reduced = reduced / world.size
        for name, value in zip(names, np.array(reduced).tolist(), strict=True):
            out[name] = float(value)
    return {k: out[k] for k in metrics}


def barrier(world: World) -> None:
    """Wait until every rank gets here (a tiny all_sum, evaluated)."""
    if world.distributed:
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=world.group))


def agree(value: float, world: World, what: str) -> None:
    """Fail on every rank when the ranks disagree on `value` (e.g. the resumed step)."""
    if not world.distributed:
        return
    lo = float(mx.distributed.all_min(mx.array(float(value)), group=world.group).item())
    hi = float(mx.distributed.all_max(mx.array(float(value)), group=world.group).item())
    if lo != hi:
        raise ConfigError(
            f"distributed: ranks disagree on {what} ({lo:g} vs {hi:g}); give every host the same "
            "config, data and run directory contents"
        )
