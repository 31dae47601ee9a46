"""`ospo export`: a run's adapters as an mlx-lm adapter dir, a PEFT adapter or a fused model."""

from __future__ import annotations

from pathlib import Path

import typer


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def export_cmd(
    out: Path = typer.Option(
        ..., "--out", help="Directory to write (must be empty unless --force)."
    ),
    format: str = typer.Option(
        "mlx", "--format", help="mlx (mlx-lm adapters), peft (Hugging Face PEFT) or fused."
    ),
    run: Path | None = typer.Option(None, "--run", help="Run directory written by `ospo train`."),
    adapters: Path | None = typer.Option(
        None, "--adapters", help="mlx-lm adapter directory (instead of --run)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Base model (default: the run's config.yaml)."
    ),
    dequantize: bool = typer.Option(
        False,
        "--dequantize",
        help="fused: float weights from a quantized base (needed by transformers).",
    ),
    force: bool = typer.Option(
        False, "--force", help="Write into a non-empty --out, replacing same-named files."
    ),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Upload the export to this hub repo (NAMESPACE/NAME)."
    ),
    private: bool = typer.Option(False, "--private", help="Create the hub repo as private."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --push-to-hub: show what would be uploaded, upload nothing."
    ),
) -> None:
    """Export trained LoRA adapters (mlx, peft or fused) with a model card, optionally to the hub."""
    from rich.console import Console
    from rich.table import Table

    from ospo_mlx.export import ExportArgs, export

    result = export(
        ExportArgs(
            out=out,
            format=format,  # type: ignore[arg-type]  (validated by export)
            run=run,
            adapters=adapters,
            model=model,
            dequantize=dequantize,
            force=force,
            push_to_hub=push_to_hub,
            private=private,
            dry_run=dry_run,
        )
    )
    console = Console()
    table = Table(title=f"ospo export --format {result.format} -> {result.out}", show_header=True)
    table.add_column("file")
    table.add_column("size", justify="right")
    for name, size in result.files:
        table.add_row(name, _size(size))
    console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if result.upload is not None:
        where = f"{result.upload.repo} ({'private' if result.upload.private else 'public'})"
        if dry_run:
            console.print(
                f"dry run: would upload {len(result.upload.files)} files, "
                f"{_size(result.upload.total_bytes)}, to {where}"
            )
        else:
            console.print(f"uploaded to {result.url or where}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
