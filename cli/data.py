"""`ospo data esci|hm|synthetic`: convert a data set into catalog.jsonl, train/test.jsonl, summary.json."""

from __future__ import annotations

from pathlib import Path

import typer

data_app = typer.Typer(
    help="Convert ESCI, H&M or a generated synthetic set into ospo's JSONL files.",
    no_args_is_help=True,
)

OUT = typer.Option(
    ..., "--out", help="Output folder for catalog.jsonl, train.jsonl, test.jsonl, summary.json."
)
SEED = typer.Option(0, "--seed", help="Seed of the split and the sampled pool negatives.")
POOL = typer.Option(
    100,
    "--pool-size",
    help="Candidate pool size per task (labelled products plus sampled negatives).",
)
TEST_FRACTION = typer.Option(
    0.2,
    "--test-fraction",
    help="Fraction of queries/customers in test.jsonl (unless the source has a split).",
)
LIMIT = typer.Option(
    None,
    "--limit",
    help="Use at most this many queries/customers, for quick runs (see docs/data.md).",
)


QUIET = typer.Option(False, "--quiet", help="No progress bar (the report table still prints).")


def _progress(quiet: bool):
    """A rich progress bar per file read (rows, rows/s, ETA), or a no-op context."""
    import contextlib

    from ospo_mlx.data.stream import RichProgress

    return contextlib.nullcontext(None) if quiet else RichProgress()


def _finish(out: Path, catalog, tasks, report) -> None:
    import time

    from rich.console import Console

    from ospo_mlx.data.report import write_dataset

    start = time.perf_counter()
    paths = write_dataset(out, catalog, tasks, report)  # tasks may be a generator: timed here
    console = Console()
    console.print(f"[dim]wrote the files in {time.perf_counter() - start:.1f}s[/]")
    console.print(report.rich_table())
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")
    console.print(f"wrote {', '.join(p.name for p in paths.values())} to {out}")


@data_app.command("esci")
def esci(
    source: Path = typer.Option(
        ...,
        "--source",
        help="ESCI parquet folder, the sample's .json or .csv, or a folder with the json+csv pair.",
    ),
    out: Path = OUT,
    locale: str = typer.Option(
        "us", "--locale", help="product_locale to keep (us, es, jp), or 'all'."
    ),
    version: str = typer.Option(
        "small",
        "--version",
        help="'small' (small_version==1), 'large' (large_version==1) or 'all'.",
    ),
    split: str = typer.Option("all", "--split", help="ESCI split to keep: train, test or all."),
    min_exact: int = typer.Option(
        0, "--min-exact", help="Keep queries with at least this many Exact products (paper: 3)."
    ),
    max_exact: int | None = typer.Option(
        None, "--max-exact", help="Keep queries with at most this many Exact products (paper: 10)."
    ),
    gains: str = typer.Option(
        "3,2,1,0", "--gains", help="Gains of E,S,C,I labels, comma-separated."
    ),
    pool_size: int = POOL,
    test_fraction: float = TEST_FRACTION,
    seed: int = SEED,
    limit: int | None = LIMIT,
    quiet: bool = QUIET,
) -> None:
    """Amazon ESCI (query expansion): queries, their labelled products and a catalog.

    The official parquet pair is streamed in Arrow batches (same output as the in-memory
    reader); the JSON and CSV sample forms are read whole.
    """
    from ospo_mlx.data.esci import EXAMPLES_FILE, PRODUCTS_FILE, EsciConfig, convert_esci
    from ospo_mlx.data.esci_stream import stream_esci
    from ospo_mlx.errors import ConfigError

    try:
        e, s, c, i = (float(g) for g in gains.split(","))
    except ValueError:
        raise ConfigError(
            f"--gains must be four comma-separated numbers for E,S,C,I, got '{gains}'"
        ) from None
    cfg = EsciConfig(
        locale=locale,
        version=version,
        split=split,
        min_exact=min_exact,
        max_exact=max_exact,
        gains={"E": e, "S": s, "C": c, "I": i},
        pool_size=pool_size,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
    )
    parquet = (source / EXAMPLES_FILE).is_file() or source.name in (EXAMPLES_FILE, PRODUCTS_FILE)
    if parquet:
        with _progress(quiet) as progress:
            catalog, tasks, report = stream_esci(source, cfg, progress=progress)
    else:
        catalog, tasks, report = convert_esci(source, cfg)
    _finish(out, catalog, tasks, report)


@data_app.command("hm")
def hm(
    source: Path = typer.Option(
        ...,
        "--source",
        help="Folder holding articles.csv and transactions_train.csv (customers.csv optional).",
    ),
    out: Path = OUT,
    min_purchases: int = typer.Option(
        5, "--min-purchases", help="Customers with fewer purchases are skipped (counted)."
    ),
    max_history: int = typer.Option(
        20, "--max-history", help="Most recent purchases kept in a history."
    ),
    pool_size: int = POOL,
    test_fraction: float = TEST_FRACTION,
    seed: int = SEED,
    limit: int | None = LIMIT,
    quiet: bool = QUIET,
) -> None:
    """H&M Fashion (shopper profile): purchase history -> the next purchase.

    Transactions are streamed in Arrow batches (31.8M rows in bounded memory); the output is
    the same as the in-memory converter's, byte for byte.
    """
    from ospo_mlx.data.hm import HmConfig
    from ospo_mlx.data.hm_stream import stream_hm

    cfg = HmConfig(
        min_purchases=min_purchases,
        max_history=max_history,
        pool_size=pool_size,
        test_fraction=test_fraction,
        seed=seed,
        limit=limit,
    )
    with _progress(quiet) as progress:
        catalog, tasks, report = stream_hm(source, cfg, progress=progress)
    _finish(out, catalog, tasks, report)


@data_app.command("synthetic")
def synthetic(
    out: Path = OUT,
    products: int = typer.Option(300, "--products", help="Catalog size."),
    train: int = typer.Option(200, "--train", help="Training tasks."),
    test: int = typer.Option(50, "--test", help="Test tasks."),
    categories: int = typer.Option(8, "--categories", help="Product categories used (1-8)."),
    pool_size: int = POOL,
    seed: int = SEED,
) -> None:
    """A generated catalog and queries whose relevant products depend on hidden attributes."""
    from ospo_mlx.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(
        n_products=products,
        n_train=train,
        n_test=test,
        categories=categories,
        pool_size=pool_size,
        seed=seed,
    )
    catalog, tasks, report = generate(cfg)
    _finish(out, catalog, tasks, report)


@data_app.command("choice")
def choice(
    out: Path = OUT,
    train: int = typer.Option(200, "--train", help="Training tasks."),
    test: int = typer.Option(50, "--test", help="Test tasks."),
    distractors: int = typer.Option(
        2, "--distractors", help="Wrong uses and wrong materials listed per prompt (0-3 each)."
    ),
    seed: int = SEED,
) -> None:
    """The controlled choice task: pick the right attribute phrases from a shuffled list."""
    from ospo_mlx.data.choice import ChoiceConfig, generate_choice
    from ospo_mlx.data.synthetic import SyntheticConfig

    cfg = ChoiceConfig(
        synthetic=SyntheticConfig(n_train=train, n_test=test, seed=seed),
        distractor_uses=distractors,
        distractor_materials=distractors,
    )
    catalog, tasks, report = generate_choice(cfg)
    _finish(out, catalog, tasks, report)


generate_app = typer.Typer(
    help="Write synthetic files with the real ESCI/H&M schemas and sizes (to test scale).",
    no_args_is_help=True,
)
SCALE = typer.Option(
    1.0, "--scale", help="Fraction of the real row counts (1.0: full size; 0.01 for a quick try)."
)
GEN_OUT = typer.Option(..., "--out", help="Folder to write the files into (created).")


def _scaled(n: int, scale: float) -> int:
    from ospo_mlx.errors import ConfigError

    if not 0 < scale <= 10:
        raise ConfigError(f"--scale must be in (0, 10], got {scale}")
    return max(1, round(n * scale))


@generate_app.command("hm")
def generate_hm(out: Path = GEN_OUT, scale: float = SCALE, seed: int = SEED) -> None:
    """articles.csv, customers.csv, transactions_train.csv (real: 105,542 / 1,371,980 / 31,788,324 rows)."""
    from ospo_mlx.data import generate as g

    cfg = g.HmFilesConfig(
        articles=_scaled(g.HM_ARTICLES, scale),
        customers=_scaled(g.HM_CUSTOMERS, scale),
        transactions=_scaled(g.HM_TRANSACTIONS, scale),
        seed=seed,
    )
    from ospo_mlx.data.stream import RichProgress

    with RichProgress() as progress:
        rows = g.write_hm(cfg, out, lambda n: progress("transactions", n, cfg.transactions))
    typer.echo(f"wrote {', '.join(f'{k} ({v:,} rows)' for k, v in rows.items())} to {out}")


@generate_app.command("esci")
def generate_esci(out: Path = GEN_OUT, scale: float = SCALE, seed: int = SEED) -> None:
    """The two ESCI parquet files (real: 2,621,288 labelled rows, 130,652 queries, 1,814,924 products)."""
    from ospo_mlx.data import generate as g

    cfg = g.EsciFilesConfig(
        rows=_scaled(g.ESCI_ROWS, scale),
        queries=_scaled(g.ESCI_QUERIES, scale),
        products=_scaled(g.ESCI_PRODUCTS, scale),
        seed=seed,
    )
    from ospo_mlx.data.stream import RichProgress

    with RichProgress() as progress:
        rows = g.write_esci(cfg, out, lambda n: progress("rows", n, cfg.products + cfg.rows))
    typer.echo(f"wrote {', '.join(f'{k} ({v:,} rows)' for k, v in rows.items())} to {out}")


data_app.add_typer(generate_app, name="generate")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
