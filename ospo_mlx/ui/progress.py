"""Live training view: step bar with ETA, reward/NDCG trends, throughput, time split, memory.

On a terminal it is a rich Live display; when stdout is not a TTY (CI, logs, pipes) it prints
one plain line per step instead, so logs stay greppable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ospo_mlx.ui.renderables import sparkline

TIME_PARTS = (
    ("sample", "time/sample"),
    ("reward", "time/reward"),
    ("attr", "time/attribution"),
    ("update", "time/update"),
)


def trend(values: list[float], window: int = 5) -> str:
    """An arrow for the recent direction: mean of the last `window` vs the `window` before."""
    if len(values) < 2:
        return "·"
    recent = values[-window:]
    before = values[-2 * window : -window] or values[:1]
    delta = sum(recent) / len(recent) - sum(before) / len(before)
    scale = max(abs(v) for v in values) or 1.0
    if abs(delta) < 0.01 * scale:
        return "→"
    return "↑" if delta > 0 else "↓"


def format_duration(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def reward_parts(m: Mapping[str, float]) -> list[tuple[str, float]]:
    """(name, mean) of each reward of the sum (rewards/<name>/mean), when there are several."""
    parts = [
        (key[len("rewards/") : -len("/mean")], float(v))
        for key, v in m.items()
        if key.startswith("rewards/") and key.endswith("/mean")
    ]
    return parts if len(parts) > 1 else []


def plain_line(step: int, total: int, m: Mapping[str, float], eta: float | None) -> str:
    """The one-line-per-step format used when stdout is not a terminal."""
    split = " ".join(f"{name} {m.get(key, 0.0):.1f}" for name, key in TIME_PARTS)
    parts = [
        f"step {step}/{total}",
        f"reward {m.get('reward', 0.0):.4f}",
        *([f"ndcg@10 {m['ndcg@10']:.4f}"] if "ndcg@10" in m else []),
        *(f"{name} {value:.4f}" for name, value in reward_parts(m)),
        f"loss {m.get('loss', 0.0):+.4f}",
        f"kl {m.get('kl', 0.0):.4f}",
        f"clip {m.get('clip_ratio/region_mean', 0.0):.3f}",
        f"len {m.get('completions/mean_length', 0.0):.1f}",
        f"tok/s {m.get('tokens_per_second', 0.0):.1f}",
        f"time {m.get('time/step', 0.0):.1f}s ({split})",
        f"mem {m.get('peak_memory_gb', 0.0):.2f}GB",
    ]
    if eta is not None:
        parts.append(f"eta {format_duration(eta)}")
    return " | ".join(parts)


class TrainProgress:
    """Use as a context manager; call `update(step, metrics)` after every step."""

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        *,
        title: str = "ospo train",
        console: Console | None = None,
        live: bool | None = None,
    ) -> None:
        self.total, self.start_step, self.step = total_steps, start_step, start_step
        self.console = console or Console()
        self.live_mode = (
            (sys.stdout.isatty() and self.console.is_terminal) if live is None else live
        )
        self.history: dict[str, list[float]] = {"reward": [], "ndcg@10": []}
        self.last: Mapping[str, float] = {}
        self.began = time.perf_counter()
        self.bar = Progress(
            TextColumn(f"[bold]{title}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task("steps", total=total_steps, completed=start_step)
        self._live: Live | None = None

    def __enter__(self) -> TrainProgress:
        if self.live_mode:
            self._live = Live(
                self.render(), console=self.console, refresh_per_second=4, transient=False
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None

    def eta(self) -> float | None:
        done = self.step - self.start_step
        if done <= 0:
            return None
        return (time.perf_counter() - self.began) / done * (self.total - self.step)

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        self.step, self.last = step, metrics
        for key, values in self.history.items():
            values.append(float(metrics.get(key, 0.0)))
        self.bar.update(self.task, completed=step)
        if self._live is not None:
            self._live.update(self.render())
        elif not self.live_mode:
            self.console.print(
                plain_line(step, self.total, metrics, self.eta()), highlight=False, soft_wrap=True
            )

    def render(self) -> RenderableType:
        m = self.last
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(justify="right")
        table.add_column()
        for key in ("reward", "ndcg@10"):
            if key != "reward" and key not in m:
                continue  # no retrieval reward in the sum
            values = self.history[key]
            now = f"{values[-1]:.4f}" if values else "-"
            table.add_row(key, now, Text(f"{sparkline(values, 30)} {trend(values)}", style="cyan"))
        if m:
            for name, value in reward_parts(m):
                table.add_row(f"  {name}", f"{value:.4f}", "")
            table.add_row(
                "loss / kl",
                f"{m.get('loss', 0.0):+.4f}",
                f"kl {m.get('kl', 0.0):.4f}  entropy {m.get('entropy', 0.0):.3f}",
            )
            table.add_row(
                "clip ratio",
                f"{m.get('clip_ratio/region_mean', 0.0):.3f}",
                f"zero-std groups {m.get('frac_reward_zero_std', 0.0):.2f}",
            )
            table.add_row(
                "tokens/s",
                f"{m.get('tokens_per_second', 0.0):.1f}",
                f"mean length {m.get('completions/mean_length', 0.0):.1f}",
            )
            split = "  ".join(f"{name} {m.get(key, 0.0):.1f}s" for name, key in TIME_PARTS)
            table.add_row("step time", f"{m.get('time/step', 0.0):.1f}s", split)
            table.add_row("peak memory", f"{m.get('peak_memory_gb', 0.0):.2f} GB", "")
        return Group(self.bar.get_renderable(), table)
