"""`ospo inspect`: browse a run's completions and their segment credit (Textual, or --static)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def inspect(
    run_dir: Path = typer.Argument(
        ..., help="Run directory written by `ospo train` (runs/<name>)."
    ),
    static: bool = typer.Option(
        False,
        "--static",
        help="Print the views to stdout instead of the interactive app (automatic when stdout is not a terminal).",
    ),
    step: int | None = typer.Option(None, help="Step to show (default: the last logged step)."),
    group: int | None = typer.Option(
        None, help="Prompt (group) within the step (default: the first)."
    ),
    member: int | None = typer.Option(
        None, help="Completion within the group (default: the highest reward)."
    ),
    follow: bool = typer.Option(
        True, "--follow/--no-follow", help="Keep reading lines a training run appends."
    ),
    interval: float = typer.Option(
        1.0, min=0.1, help="Seconds between polls of the run files when following."
    ),
) -> None:
    """Show what the model wrote and which segments earned the reward: token credit, Owen values, coalitions."""
    from ospo_mlx.ui.runreader import RunReader

    reader = RunReader(run_dir)
    if static or not sys.stdout.isatty():
        from rich.console import Console

        from ospo_mlx.ui.renderables import static_views

        reader.finish()  # a trailing half line is reported, not waited for
        console = Console()
        for view in static_views(reader, step=step, group=group, member=member):
            console.print(view)
        return
    from ospo_mlx.ui.inspector import run_inspector

    start = None
    if step is not None:
        steps = reader.step_ids()
        if step not in steps:
            from ospo_mlx.errors import DataError

            raise DataError(
                f"step {step} has no rollouts in {run_dir}; logged steps: {steps[0] if steps else '-'}..{steps[-1] if steps else '-'}"
            )
        start = (step, group if group is not None else reader.group_ids(step)[0], member)
    run_inspector(reader, follow=follow, poll_interval=interval, start=start)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
