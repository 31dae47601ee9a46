"""What `ospo train` does besides parsing flags, as library calls: find the run to resume,
build the trainer, refuse a run that has nothing left to train."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ospo_mlx.config import TrainConfig
from ospo_mlx.errors import OspoError
from ospo_mlx.train.trainer import Trainer


def resume_config_path(out: Path | str | None, name: str | None) -> Path:
    """The resolved config.yaml of the run at `out` (or runs/<name>), to resume it as it was."""
    run_dir = Path(out) if out else Path("runs") / (name or "run")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise OspoError(
            f"no run to resume at {run_dir} ({path} is missing); start it without --resume"
        )
    return path


def start_training(
    config: TrainConfig,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Trainer:
    """A trainer for `config` (resumed from its last checkpoint when `resume`) with steps left."""
    trainer = Trainer.from_config(config, resume=resume, on_step=on_step)
    if trainer.step >= config.optim.steps:
        if trainer.log is not None:
            trainer.log.close()
        raise OspoError(
            f"{trainer.run_dir}: already trained {trainer.step} steps; raise --steps to continue"
        )
    return trainer
