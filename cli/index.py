"""`ospo index build`: embed a catalog and write a usearch index directory."""

from __future__ import annotations

import json
from pathlib import Path

import typer

index_app = typer.Typer(
    help="Build the dense product index used by the retrieval reward.", no_args_is_help=True
)


@index_app.command("build")
def build(
    catalog: Path = typer.Option(..., "--catalog", help="catalog.jsonl (one product per line)."),
    out: Path = typer.Option(
        ..., "--out", help="Directory to write index.usearch, embeddings.npy and meta.json."
    ),
    encoder: Path | None = typer.Option(
        None,
        "--encoder",
        help="Local sentence-transformers directory (default: embedded all-MiniLM-L6-v2).",
    ),
    dtype: str = typer.Option(
        "f32", "--dtype", help="Index vector dtype: f32, f16 (half the memory) or i8 (a quarter)."
    ),
    batch_size: int = typer.Option(
        4096, "--batch-size", help="Products encoded and added per batch."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON line."),
) -> None:
    """Embed every product's text, in batches, into a cosine usearch index with its id map.

    The catalog is read lazily and the vectors are written as they are encoded, so memory
    holds the index and one batch; a progress bar shows products/s and the ETA.
    """
    import contextlib
    import resource
    import time

    from ospo_mlx.data.stream import RichProgress
    from ospo_mlx.reward.encoder import load_encoder
    from ospo_mlx.reward.index import CatalogIndex, IndexConfig, iter_catalog

    config = IndexConfig(dtype=dtype, batch_size=batch_size)
    config.validate()
    count, products = iter_catalog(catalog)
    enc = load_encoder(encoder)
    start = time.perf_counter()
    with (
        contextlib.nullcontext(None)
        if quiet or as_json
        else RichProgress(unit="products") as progress
    ):
        built = CatalogIndex.build_streaming(products, count, enc, out, config, progress)
    seconds = time.perf_counter() - start
    summary = {
        "out": str(out),
        "products": len(built.product_ids),
        "dim": enc.dim,
        "dtype": dtype,
        "encoder": built.encoder_identity,
        "catalog_hash": built.catalog_hash,
        "seconds": round(seconds, 2),
        "products_per_s": round(len(built.product_ids) / max(seconds, 1e-9), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"indexed {summary['products']:,} products (dim {enc.dim}, {dtype}, encoder "
            f"{built.encoder_identity['name']}) in {summary['seconds']}s "
            f"({summary['products_per_s']:,} products/s, peak RSS {summary['peak_rss_mb']} MB) -> {out}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
