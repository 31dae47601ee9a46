"""Entry point of the `ospo` console script.

Commands live in one module each (cli/<name>.py, with a `register(app)` function) so
heavy imports (mlx, textual, usearch) happen only when that command runs.
"""

from __future__ import annotations

import importlib
import sys

import typer

import ospo_mlx  # noqa: F401  (loads the optimized BLAS before any command imports mlx)
from ospo_mlx.errors import OspoError

COMMAND_MODULES = (
    "doctor",
    "data",
    "index",
    "attribute",
    "model",
    "train",
    "evaluate",
    "export",
    "plot",
    "inspect",
)

app = typer.Typer(
    name="ospo",
    help="Owen-Shapley Policy Optimization: LoRA RL fine-tuning with segment-level credit, on MLX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback()
def _root() -> None:
    """Owen-Shapley Policy Optimization: LoRA RL fine-tuning with segment-level credit, on MLX."""


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"cli.{name}").register(app)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line user error and exit (no traceback)."""
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


def main() -> None:
    _register_commands()
    try:
        app()
    except OspoError as exc:
        fail(str(exc).replace("\n", " "))
    except KeyboardInterrupt:
        fail("interrupted", code=130)


if __name__ == "__main__":
    main()
