"""The run directory's logs: config.yaml, metrics.jsonl and rollouts.jsonl (docs/run_format.md).

JSONL lines are appended whole (one `write` per step of complete `json + "\\n"` lines, then
flush and fsync), so readers see half a line only after a hard kill, and `--resume` removes
it; non-finite floats are written as null (JSON has no NaN).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, TextIO

from ospo_mlx.train.checkpoint import atomic_write_text
from ospo_mlx.train.tracking import Tracking

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
CONFIG_FILE = "config.yaml"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / mlx scalars
        return _clean(value.item())
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return value


def json_line(obj: dict[str, Any]) -> str:
    return json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False) + "\n"


def _keep_until(path: Path, step: int) -> int:
    """Rewrite a JSONL file without the lines of steps after `step` (and any torn last line)."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if line.endswith("\n") and int(obj.get("step", 0)) <= step:
            kept.append(line)
        else:
            dropped += 1
    atomic_write_text(path, "".join(kept))
    return dropped


class RunLog:
    """Appends metrics and rollouts to a run directory; `resume_step` drops lines logged after
    the checkpoint being resumed (they will be produced again). `tracking` (run.report_to)
    receives the same rows once they are on disk."""

    def __init__(
        self,
        run_dir: Path,
        config_yaml: str,
        resume_step: int | None = None,
        tracking: Tracking | None = None,
    ) -> None:
        self.tracking = tracking
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / CONFIG_FILE, config_yaml)
        self.dropped = 0
        if resume_step is not None:
            for name in (METRICS_FILE, ROLLOUTS_FILE):
                self.dropped += _keep_until(self.run_dir / name, resume_step)
        else:
            for name in (METRICS_FILE, ROLLOUTS_FILE):
                (self.run_dir / name).write_text("", encoding="utf-8")
        self._metrics: TextIO = (self.run_dir / METRICS_FILE).open("a", encoding="utf-8")
        self._rollouts: TextIO = (self.run_dir / ROLLOUTS_FILE).open("a", encoding="utf-8")

    def _append(self, fh: TextIO, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fh.write("".join(json_line(r) for r in rows))  # one write: whole lines or a torn tail
        fh.flush()
        os.fsync(fh.fileno())  # on disk before the step's checkpoint names it

    def metrics(self, row: dict[str, Any]) -> None:
        self._append(self._metrics, [row])
        if self.tracking is not None:
            self.tracking.metrics(row)

    def rollouts(self, rows: list[dict[str, Any]]) -> None:
        self._append(self._rollouts, rows)
        if self.tracking is not None:
            self.tracking.rollouts(rows)

    def close(self) -> None:
        self._metrics.close()
        self._rollouts.close()
        if self.tracking is not None:
            self.tracking.close()
            self.tracking = None

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a run JSONL file, skipping a trailing incomplete line."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        rows.append(json.loads(line))
    return rows
