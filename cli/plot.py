"""`ospo plot`: reward, NDCG, KL, clip ratio and step time of one or more runs."""

from __future__ import annotations

from pathlib import Path

import typer


def plot_cmd(
    run: Path = typer.Option(..., "--run", help="Run directory written by `ospo train`."),
    compare: list[Path] = typer.Option(
        [], "--compare", help="Other run directories to draw on the same axes (repeatable)."
    ),
    out: Path | None = typer.Option(None, "--out", help="PNG path (default: RUN/plot.png)."),
    png: bool = typer.Option(
        True, "--png/--no-png", help="Write the PNG (needs matplotlib: pip install 'ospo[plot]')."
    ),
    width: int = typer.Option(
        40, "--width", help="Width of the terminal sparklines in characters."
    ),
) -> None:
    """Plot training curves to a PNG and draw them in the terminal (several runs side by side)."""
    from rich.console import Console

    from ospo_mlx.plot import plot_runs, terminal_chart

    runs, path, notes = plot_runs([run, *compare], out, png=png)
    console = Console()
    console.print(terminal_chart(runs, width=width))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    if path is not None:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("plot")(plot_cmd)
