"""`ospo doctor`: MLX version, backend, device, BLAS in use and measured matmul speed."""

from __future__ import annotations

import json

import typer


def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON line."),
    size: int = typer.Option(1024, help="Matrix size of the matmul speed test."),
) -> None:
    """Report the MLX build, device and BLAS, and measure float32 matmul GFLOP/s."""
    from rich.console import Console
    from rich.table import Table

    from ospo_mlx.doctor import run_doctor

    report = run_doctor(matmul_n=size)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    table = Table(title="ospo doctor", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("ospo", report.ospo_version)
    table.add_row("python", f"{report.python} ({report.platform})")
    table.add_row("mlx", report.mlx_version)
    table.add_row("backend / device", f"{report.backend} / {report.device}")
    blas = report.blas_status + (f" ({report.blas_path})" if report.blas_path else "")
    if report.blas_detail:
        blas += f": {report.blas_detail}"
    table.add_row("BLAS", blas)
    table.add_row(
        f"matmul {report.matmul_n}x{report.matmul_n} f32", f"{report.matmul_gflops:.1f} GFLOP/s"
    )
    for name, where in report.assets.items():
        table.add_row(name, where)
    table.add_row("training on this device", report.training_defaults)
    console = Console()
    console.print(table)
    if report.backend == "cpu" and report.blas_status not in {"loaded", "not-linux"}:
        console.print(
            "[yellow]MLX is using its reference BLAS: everything works, but matmuls are ~50x slower. "
            "Install libopenblas0-pthread (Debian/Ubuntu) or set OSPO_BLAS=/path/to/libopenblas.so.0.[/]"
        )


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
