"""Experiment tracking (`run.report_to`): the metrics.jsonl rows, also sent to TensorBoard or W&B.

Both work offline: TensorBoard event files go to RUN/tensorboard/ (tensorboardX writes them,
no TensorFlow needed); W&B runs in offline mode unless WANDB_MODE says otherwise, writing
RUN/wandb/offline-run-*/ for a later `wandb sync`. A table of sampled completions (prompt,
completion, reward, advantage, credit) is logged every `log_completions_steps` steps, as TRL
logs its completions table.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ospo_mlx.errors import ConfigError

TRACKERS = ("tensorboard", "wandb")
COMPLETION_COLUMNS = ("step", "group", "prompt", "completion", "reward", "advantage", "credit")


class Tracker(Protocol):
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_completions(self, step: int, rows: list[list[Any]]) -> None: ...

    def close(self) -> None: ...


def _missing(name: str, package: str) -> ConfigError:
    return ConfigError(
        f"run.report_to: {name} needs the {package} package; pip install 'ospo[track]' "
        f"(or pip install {package}), or set run.report_to=none"
    )


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric metrics of a metrics.jsonl row, without `step`."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def credit_text(row: dict[str, Any], limit: int = 8) -> str:
    """A completion's credit in one line: each segment's text with its Owen value."""
    text, parts = row.get("completion", ""), []
    for (start, end), phi in list(zip(row.get("segments", []), row.get("owen", []), strict=False))[
        :limit
    ]:
        parts.append(f"{text[start:end]!r}: {phi:+.3f}")
    return " | ".join(parts)


def completion_rows(rollouts: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One table row per rollouts.jsonl row, in COMPLETION_COLUMNS order."""
    return [
        [
            int(r["step"]),
            int(r["group"]),
            str(r["prompt"]),
            str(r["completion"]),
            float(r["reward"]),
            float(r["advantage"]),
            credit_text(r),
        ]
        for r in rollouts
    ]


def tensorboard_tag(key: str) -> str:
    """A metrics.jsonl name as a TensorBoard tag: characters tags refuse become _ (ndcg@10 ->
    ndcg_10), done here so the mapping is ours and documented rather than a writer warning."""
    return re.sub(r"[^-/\w.]", "_", key)


class TensorBoardTracker:
    """Scalars under their metrics.jsonl names (see tensorboard_tag); the completions table as
    a markdown text."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboardX") from None
        self.writer = SummaryWriter(logdir=str(log_dir))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(tensorboard_tag(key), value, step)
        self.writer.flush()

    def log_completions(self, step: int, rows: list[list[Any]]) -> None:
        def cell(v: Any) -> str:
            return str(v).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(COMPLETION_COLUMNS) + " |"]
        lines.append("|" + " --- |" * len(COMPLETION_COLUMNS))
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self.writer.add_text("completions", "\n".join(lines), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run in RUN/wandb/ (offline by default: no network, `wandb sync` uploads later)."""

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ospo"),
            name=name,
            dir=str(run_dir),
            mode=os.environ.get("WANDB_MODE", "offline"),  # type: ignore[arg-type]
            config=config,
        )

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def log_completions(self, step: int, rows: list[list[Any]]) -> None:
        table = self.wandb.Table(columns=list(COMPLETION_COLUMNS), data=rows)
        self.run.log({"completions": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class Tracking:
    """Fans each metrics row and the periodic completions table out to the trackers."""

    def __init__(
        self, trackers: Sequence[Tracker], log_completions: bool = True, every: int = 10
    ) -> None:
        self.trackers, self.log_completions_on, self.every = list(trackers), log_completions, every

    def metrics(self, row: dict[str, Any]) -> None:
        step, values = int(row["step"]), scalars(row)
        for t in self.trackers:
            t.log_metrics(step, values)

    def rollouts(self, rows: Sequence[dict[str, Any]]) -> None:
        if not (self.log_completions_on and rows):
            return
        step = int(rows[0]["step"])
        if step % self.every:
            return
        table = completion_rows(rows)
        for t in self.trackers:
            t.log_completions(step, table)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def build_tracking(
    report_to: Sequence[str],
    run_dir: Path,
    *,
    name: str,
    config: dict[str, Any],
    log_completions: bool = True,
    every: int = 10,
) -> Tracking | None:
    """The trackers `report_to` names (None for `none`/empty); a missing package is a ConfigError."""
    trackers: list[Tracker] = []
    for target in dict.fromkeys(report_to):  # in order, once each
        if target == "tensorboard":
            trackers.append(TensorBoardTracker(Path(run_dir) / "tensorboard"))
        elif target == "wandb":
            trackers.append(WandbTracker(Path(run_dir), name, config))
        elif target != "none":
            raise ConfigError(f"run.report_to: unknown tracker {target!r}; use {TRACKERS} or none")
    return Tracking(trackers, log_completions, every) if trackers else None
