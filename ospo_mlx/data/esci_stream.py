"""The ESCI converter for the official parquet pair at full size, read in Arrow batches.

Same output as `esci.convert_esci` on the parquet folder (a test checks it byte for byte):
the locale/version/split filters run on whole batches and only the kept label rows become
Python objects; the products file (1.8M rows, long descriptions) is filtered to the labelled
products before any text is cleaned. Memory is bounded by the kept labels and products.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ospo_mlx.data.esci import (
    EXAMPLES_FILE,
    PRODUCT_COLUMNS,
    PRODUCTS_FILE,
    EsciConfig,
    Label,
    _add_product,
    _label,
    _pid,
    _product,
    build_tasks,
)
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.data.stream import ProgressFn, StreamOptions, iter_parquet
from ospo_mlx.data.tables import as_text
from ospo_mlx.errors import DataError


def _np(col: pa.Array) -> np.ndarray:
    return col.to_numpy(zero_copy_only=False)


def _filter_labels(batch: pa.RecordBatch, cfg: EsciConfig, report: ConversionReport) -> np.ndarray:
    """Rows of the batch that pass the locale, version and split filters (drops counted).

    The same tests in the same order as `esci._keep_row`, on whole columns.
    """
    keep = np.ones(batch.num_rows, dtype=bool)
    locale = batch.column("product_locale")
    if cfg.locale != "all":
        drop = _np(pc.fill_null(pc.not_equal(locale.cast(pa.string()), cfg.locale), False))
        report.drop(f"label rows: locale is not '{cfg.locale}'", int(drop.sum()))
        keep &= ~drop
    if cfg.version != "all":
        flag = batch.column(f"{cfg.version}_version")
        if not (pa.types.is_integer(flag.type) or pa.types.is_null(flag.type)):
            raise _NotVectorizable
        drop = keep & _np(pc.fill_null(pc.not_equal(flag, 1), False))
        report.drop(f"label rows: not in the {cfg.version} version", int(drop.sum()))
        keep &= ~drop
    if cfg.split != "all":
        split = batch.column("split").cast(pa.string())
        drop = keep & _np(pc.fill_null(pc.not_equal(split, cfg.split), False))
        report.drop(f"label rows: not in the '{cfg.split}' split", int(drop.sum()))
        keep &= ~drop
    return keep


class _NotVectorizable(Exception):
    """A filter column of an unexpected type: the row-by-row path of esci.py handles it."""


def read_labels(
    path: Path,
    cfg: EsciConfig,
    report: ConversionReport,
    options: StreamOptions,
    progress: ProgressFn | None,
) -> list[Label]:
    """The examples file's labels that pass the filters, in file order."""
    from ospo_mlx.data.esci import _keep_row

    labels: list[Label] = []
    offset = 0
    strings: dict[str, str] = {}  # one str object per distinct query/id (2.6M rows, 130k queries)
    for batch in iter_parquet(
        path,
        ("query_id", "query", "product_id", "esci_label"),
        ("product_locale", "small_version", "large_version", "split"),
        options,
        progress,
    ):
        try:
            rows = np.flatnonzero(_filter_labels(batch, cfg, report))
            cols = {n: batch.column(n).take(pa.array(rows)).to_pylist() for n in batch.schema.names}
        except _NotVectorizable:
            full = {n: batch.column(n).to_pylist() for n in batch.schema.names}
            rows = np.array(
                [i for i in range(batch.num_rows) if _keep_row(full, i, path, cfg, report)],
                dtype=np.int64,
            )
            cols = {n: [v[i] for i in rows] for n, v in full.items()}
        for j, i in enumerate(rows):
            row = offset + int(i) + 1
            qid = as_text(cols["query_id"][j], path, row, "query_id", allow_none=False)
            query = as_text(cols["query"][j], path, row, "query", allow_none=False)
            labels.append(
                Label(
                    query_id=strings.setdefault(qid, qid),
                    query=strings.setdefault(query, query),
                    product_id=_pid(
                        as_text(cols["product_id"][j], path, row, "product_id", allow_none=False),
                        cols["product_locale"][j],
                        cfg,
                    ),
                    label=_label(cols["esci_label"][j], path, row, "esci_label"),
                    split=cols["split"][j],
                )
            )
        offset += batch.num_rows
    report.read(EXAMPLES_FILE, offset)
    return labels


def read_products(
    path: Path,
    needed: set[str],
    cfg: EsciConfig,
    report: ConversionReport,
    options: StreamOptions,
    progress: ProgressFn | None,
) -> dict[str, Product]:
    """The labelled products of the products file (other locales skipped), in file order."""
    wanted = pa.array(sorted(needed), type=pa.string())
    products: dict[str, Product] = {}
    offset = 0
    text = StreamOptions(batch_rows=options.text_batch_rows)  # long descriptions: small batches
    for batch in iter_parquet(
        path, ("product_id", "product_title"), ("product_locale", *PRODUCT_COLUMNS), text,
        progress,
    ):  # fmt: skip
        locale = batch.column("product_locale").cast(pa.string())
        in_locale = np.ones(batch.num_rows, dtype=bool)
        if cfg.locale != "all":
            in_locale = ~_np(pc.fill_null(pc.not_equal(locale, cfg.locale), False))
        pid = pc.utf8_trim_whitespace(batch.column("product_id").cast(pa.string()))
        missing = in_locale & _np(pc.or_kleene(pc.is_null(pid), pc.equal(pc.utf8_length(pid), 0)))
        if missing.any():
            row = offset + int(np.flatnonzero(missing)[0]) + 1
            raise DataError(f"{path}: row {row}, column 'product_id': value is missing")
        if cfg.locale == "all":  # as esci._pid: the locale joins the id when present
            with_locale = pc.binary_join_element_wise(pid, locale, "@")  # separator last
            no_locale = pc.fill_null(pc.equal(locale, ""), True)
            pid = pc.if_else(no_locale, pid, with_locale)
        rows = np.flatnonzero(in_locale & _np(pc.is_in(pid, value_set=wanted)))
        if rows.size:
            idx = pa.array(rows)
            cols = {n: batch.column(n).take(idx).to_pylist() for n in batch.schema.names}
            ids = pid.take(idx).to_pylist()
            for j, i in enumerate(rows):
                product = _product(ids[j], path, offset + int(i) + 1, cols, j, "product_title")
                _add_product(products, product, report, "products")
        offset += batch.num_rows
    report.read(PRODUCTS_FILE, offset)
    return products


def stream_esci(
    folder: str | Path,
    cfg: EsciConfig | None = None,
    options: StreamOptions | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Product], list[Task], ConversionReport]:
    """`esci.convert_esci` for the official parquet folder, streamed: same catalog, tasks, report."""
    cfg = cfg or EsciConfig()
    cfg.validate()
    options = options or StreamOptions()
    folder = Path(folder)
    if folder.is_file() and folder.name in (EXAMPLES_FILE, PRODUCTS_FILE):
        folder = folder.parent
    if not (folder / EXAMPLES_FILE).is_file():
        raise DataError(f"{folder}: no {EXAMPLES_FILE}; pass the ESCI parquet folder")
    report = ConversionReport(source=str(folder), kind="esci", options=asdict(cfg))
    labels = read_labels(folder / EXAMPLES_FILE, cfg, report, options, progress)
    needed = {lb.product_id for lb in labels}
    products = read_products(folder / PRODUCTS_FILE, needed, cfg, report, options, progress)
    report.read("labels after filters", len(labels))
    catalog, tasks = build_tasks(labels, products, cfg, report)
    return catalog, tasks, report
