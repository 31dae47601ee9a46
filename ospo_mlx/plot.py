"""Training curves of one or more runs: a PNG (matplotlib, optional) and a terminal view.

Several runs (e.g. OSPO and GRPO on the same data) share each metric's axes so they compare
at a glance. The terminal view uses block sparklines on a shared y-range per metric, with no
dependency beyond rich.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ospo_mlx.errors import DataError, OspoError

METRICS_FILE = "metrics.jsonl"
# (metrics.jsonl key, axis title); keys follow docs/run_format.md.
PLOT_METRICS: tuple[tuple[str, str], ...] = (
    ("reward", "reward"),
    ("ndcg@10", "NDCG@10"),
    ("kl", "KL to reference"),
    ("clip_ratio/region_mean", "clip ratio"),
    ("time/step", "step time (s)"),
)
SPARK_BLOCKS = "▁▂▃▄▅▆▇█"


def read_metrics(run_dir: Path | str) -> tuple[list[dict[str, Any]], int]:
    """(rows of metrics.jsonl, number of skipped lines): unparsable or non-object lines,
    including a trailing half-written line, are skipped and counted."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], 0
    rows, skipped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            skipped += 1
    return rows, skipped


@dataclass
class RunCurves:
    """The metric curves of one run: `series[key] = (steps, values)` with finite values only."""

    name: str = field(metadata={"help": "Run directory name."})
    algorithm: str = field(metadata={"help": "ospo or grpo (from config.yaml), '?' when unknown."})
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    skipped_lines: int = field(default=0, metadata={"help": "Unreadable metrics.jsonl lines."})

    @property
    def label(self) -> str:
        return f"{self.name} ({self.algorithm})"


def _algorithm(run_dir: Path) -> str:
    config = run_dir / "config.yaml"
    if not config.is_file():
        return "?"
    import yaml

    try:
        data = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError:
        return "?"
    return str(data.get("algorithm", "?")) if isinstance(data, dict) else "?"


def load_curves(
    run_dir: Path | str, metrics: tuple[tuple[str, str], ...] = PLOT_METRICS
) -> RunCurves:
    """Curves of one run directory; raises DataError when it has no metrics at all."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(
            f"run directory {run_dir} does not exist; pass a directory written by `ospo train`"
        )
    rows, skipped = read_metrics(run_dir)
    if not rows:
        raise DataError(
            f"{run_dir / METRICS_FILE} has no readable steps yet; train for at least one step"
        )
    curves = RunCurves(
        name=run_dir.resolve().name, algorithm=_algorithm(run_dir), skipped_lines=skipped
    )
    for index, row in enumerate(rows):
        step = row.get("step", index + 1)
        for key, _ in metrics:
            value = row.get(key)
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                steps, values = curves.series.setdefault(key, ([], []))
                steps.append(float(step))
                values.append(float(value))
    return curves


def missing_notes(
    runs: list[RunCurves], metrics: tuple[tuple[str, str], ...] = PLOT_METRICS
) -> list[str]:
    """One note per (run, metric) with no values, and per run with skipped lines."""
    notes = []
    for run in runs:
        absent = [key for key, _ in metrics if key not in run.series]
        if absent:
            notes.append(f"{run.label}: no {', '.join(absent)} in metrics.jsonl (skipped)")
        if run.skipped_lines:
            notes.append(
                f"{run.label}: skipped {run.skipped_lines} unreadable metrics.jsonl line(s)"
            )
    return notes


def plot_png(
    runs: list[RunCurves],
    out: Path | str,
    *,
    metrics: tuple[tuple[str, str], ...] = PLOT_METRICS,
    width_px: int = 1500,
    height_px: int = 800,
    dpi: int = 100,
) -> Path:
    """Write a width_px x height_px PNG with one panel per metric, every run on each panel."""
    try:
        import matplotlib
    except ImportError as exc:
        raise OspoError(
            "the PNG plot needs matplotlib: pip install 'ospo[plot]' (or use --no-png)"
        ) from exc
    matplotlib.use("Agg", force=True)  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    shown = [(key, title) for key, title in metrics if any(key in r.series for r in runs)]
    if not shown:
        raise DataError("none of the runs has any plottable metric (reward, ndcg@10, kl, ...)")
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width_px / dpi, height_px / dpi), dpi=dpi, squeeze=False
    )
    for ax, (key, title) in zip(axes.flat, shown, strict=False):
        for i, run in enumerate(runs):
            if key in run.series:
                steps, values = run.series[key]
                # fixed colour per run, so a run missing from one panel does not shift the others
                ax.plot(
                    steps,
                    values,
                    color=f"C{i % 10}",
                    marker="." if len(steps) < 30 else None,
                    label=run.label,
                )
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:  # the first panel may lack a run that others have
        h, lab = ax.get_legend_handles_labels()
        if len(lab) > len(labels):
            handles, labels = h, lab
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out


def sparkline(values: list[float], width: int, lo: float, hi: float) -> str:
    """Block sparkline of `values` resampled to at most `width` cells (mean per cell) on [lo, hi]."""
    if not values:
        return ""
    cells = min(width, len(values))
    out = []
    for i in range(cells):
        start = i * len(values) // cells
        stop = max(start + 1, (i + 1) * len(values) // cells)
        chunk = values[start:stop]
        mean = sum(chunk) / len(chunk)
        level = 0 if hi <= lo else round((mean - lo) / (hi - lo) * (len(SPARK_BLOCKS) - 1))
        out.append(SPARK_BLOCKS[min(max(level, 0), len(SPARK_BLOCKS) - 1)])
    return "".join(out)


def terminal_chart(
    runs: list[RunCurves], *, width: int = 40, metrics: tuple[tuple[str, str], ...] = PLOT_METRICS
):
    """A rich Table: one row per (metric, run) with a sparkline on the metric's shared range."""
    from rich.table import Table

    table = Table(title="training curves", show_lines=False, pad_edge=False)
    table.add_column("metric", style="bold")
    table.add_column("run")
    table.add_column("curve", no_wrap=True)
    table.add_column("first", justify="right")
    table.add_column("last", justify="right")
    table.add_column("min..max", justify="right")
    styles = ("cyan", "magenta", "green", "yellow", "blue", "red")
    for key, title in metrics:
        present = [r for r in runs if key in r.series]
        if not present:
            continue
        every = [v for r in present for v in r.series[key][1]]
        lo, hi = min(every), max(every)
        for i, run in enumerate(present):
            values = run.series[key][1]
            table.add_row(
                title if i == 0 else "",
                run.label,
                f"[{styles[runs.index(run) % len(styles)]}]{sparkline(values, width, lo, hi)}[/]",
                f"{values[0]:.4g}",
                f"{values[-1]:.4g}",
                f"{min(values):.3g}..{max(values):.3g}",
            )
    return table


def plot_runs(
    run_dirs: list[Path | str], out: Path | str | None = None, *, png: bool = True
) -> tuple[list[RunCurves], Path | None, list[str]]:
    """Load runs and write the PNG: (curves, png path or None, notes about missing metrics)."""
    if not run_dirs:
        raise OspoError("pass at least one run with --run DIR")
    runs = [load_curves(d) for d in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two runs called "run" in different parents
        for run, d in zip(runs, run_dirs, strict=True):
            run.name = f"{Path(d).resolve().parent.name}/{run.name}"
    path = None
    if png:
        path = plot_png(runs, out or Path(run_dirs[0]) / "plot.png")
    return runs, path, missing_notes(runs)


def plot_bands(
    curves: dict[str, dict[str, list[float]]],
    out: Path | str,
    refs: dict[str, float] | None = None,
    *,
    title: str = "reward",
    width_px: int = 1000,
    height_px: int = 600,
    dpi: int = 100,
) -> Path:
    """One panel: each curve's mean with its band (`step`, `mean`, `low`, `high` lists, e.g.
    a 95% interval over seeds) and horizontal reference lines (`refs`: label -> value)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise OspoError("the PNG plot needs matplotlib: pip install 'ospo[plot]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if not curves:
        raise DataError("no curves to plot")
    fig, ax = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    for i, (name, c) in enumerate(curves.items()):
        ax.plot(c["step"], c["mean"], color=f"C{i % 10}", label=name)
        ax.fill_between(c["step"], c["low"], c["high"], color=f"C{i % 10}", alpha=0.2)
    for j, (label, value) in enumerate((refs or {}).items()):
        ax.axhline(value, color="0.4", linestyle=("--", ":", "-.")[j % 3], lw=1, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, format="png")
    plt.close(fig)
    return out
