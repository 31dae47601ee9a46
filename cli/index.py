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
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON line."),
) -> None:
    """Embed every product's text and write an f32 cosine usearch index with its id map."""
    import time

    from ospo_mlx.data.schema import load_catalog
    from ospo_mlx.reward.encoder import load_encoder
    from ospo_mlx.reward.index import CatalogIndex

    products = load_catalog(catalog)
    enc = load_encoder(encoder)
    start = time.perf_counter()
    built = CatalogIndex.build(products, enc, out)
    summary = {
        "out": str(out),
        "products": len(built.product_ids),
        "dim": enc.dim,
        "encoder": built.encoder_identity,
        "catalog_hash": built.catalog_hash,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(
            f"indexed {summary['products']} products (dim {enc.dim}, encoder {built.encoder_identity['name']}) "
            f"in {summary['seconds']}s -> {out}"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
