"""Graceful stop on SIGINT/SIGTERM: finish the step, checkpoint, exit; a second Ctrl-C quits now.

The first signal only sets a flag that the training loop reads between steps. It also puts
back the operating system's default action, so a second signal ends the process at once even
while MLX is busy in C code (where Python-level handlers cannot run).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ospo_mlx.errors import OspoError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(OspoError):
    """Training stopped on a signal after saving a checkpoint; `exit_code` is 128 + signal."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GracefulStop:
    """Context manager that turns the first SIGINT/SIGTERM into `requested = True`.

    Outside the main thread (where signals cannot be handled) it does nothing.
    """

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(
        self, notice: str = "finishing the current step, then saving a checkpoint"
    ) -> None:
        self.notice = notice
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130) if self.signum is not None else 0

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop as if `signum` had arrived (tests, other front ends)."""
        self._handle(signum, None)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        for sig in self.signals:  # a second signal now takes the default action: exit at once
            if self._previous:
                signal.signal(sig, signal.SIG_DFL)
        name = signal.Signals(signum).name
        sys.stderr.write(f"{name}: {self.notice} (press Ctrl-C again to quit now)\n")
        sys.stderr.flush()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def interrupted_message(step: int, checkpoint: Path | None, run_dir: Path) -> str:
    """The one line printed when training stops on a signal."""
    where = f"checkpoint saved in {checkpoint}" if checkpoint else "no checkpoint was written"
    return (
        f"interrupted at step {step}; {where}; continue with: ospo train --resume --out {run_dir}"
    )
