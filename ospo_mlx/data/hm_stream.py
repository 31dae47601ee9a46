"""The H&M converter for the full files: transactions streamed in Arrow batches, kept as arrays.

Same output as `hm.convert_hm` (a test checks it byte for byte), built differently: each batch
of `transactions_train.csv` becomes three int32 arrays (customer code in order of first
appearance, date code, article row), so 31.8M rows hold ~400 MB instead of several GB of
Python objects. One stable sort by (customer, date) then gives every history in file order of
ties, and repeats, counts and the last `max_history` purchases are array operations. Tasks are
yielded one at a time, already as their JSONL lines (`hm_lines`: no Task objects, pools drawn
over catalog rows), for `report.write_dataset` to stream to disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ospo_mlx.data.hm import ARTICLES, CUSTOMERS, TRANSACTIONS, HmConfig, read_articles
from ospo_mlx.data.hm_lines import HmLineEncoder, hm_pools, hm_pools_in_process, hm_task_lines
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import Product, TaskLine
from ospo_mlx.data.stream import ProgressFn, StreamOptions, iter_csv
from ospo_mlx.errors import DataError


class _Codes:
    """Strings -> dense int codes in order of first appearance, one Arrow batch at a time."""

    def __init__(self) -> None:
        self.code: dict[str, int] = {}
        self.values: list[str] = []

    def encode(self, column: pa.Array) -> np.ndarray:
        enc = pc.dictionary_encode(column)
        # The batch dictionary is in first-appearance order, so new codes keep the global order.
        local = np.empty(len(enc.dictionary), dtype=np.int32)
        for i, v in enumerate(enc.dictionary.to_pylist()):
            c = self.code.get(v)
            if c is None:
                c = self.code[v] = len(self.values)
                self.values.append(v)
            local[i] = c
        return local[enc.indices.to_numpy(zero_copy_only=False)]


def _text(batch: pa.RecordBatch, name: str, path: Path, offset: int) -> pa.Array:
    """A required text column, stripped; a missing value is a DataError naming the row."""
    col = pc.utf8_trim_whitespace(batch.column(name).cast(pa.string()))
    bad = pc.or_kleene(pc.is_null(col), pc.equal(pc.utf8_length(col), 0))
    if pc.any(bad).as_py():
        row = offset + int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0]) + 1
        raise DataError(f"{path}: row {row}, column '{name}': value is missing")
    return col


def _article_ints(batch: pa.RecordBatch, path: Path, offset: int) -> np.ndarray:
    """article_id as int64 (integers, integral floats or digit strings, as `hm.article_id`)."""
    col = batch.column("article_id")
    try:
        if pa.types.is_integer(col.type):
            ints = col.to_numpy(zero_copy_only=False)
        else:
            floats = pc.cast(pc.utf8_trim_whitespace(col.cast(pa.string())), pa.float64())
            ints = floats.to_numpy(zero_copy_only=False)
            if np.isnan(ints).any() or (ints != np.round(ints)).any():
                raise pa.ArrowInvalid("not an integer")
            ints = ints.astype(np.int64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = col.to_pylist()
        from ospo_mlx.data.hm import article_id

        for i, v in enumerate(values):  # rare: find the offending row for the message
            article_id(v, path, offset + i + 1)
        raise DataError(f"{path}: column 'article_id': expected integers") from None
    if col.null_count:
        row = offset + int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0]) + 1
        raise DataError(f"{path}: row {row}, column 'article_id': expected an integer, got None")
    neg = np.flatnonzero(ints < 0)
    if neg.size:
        raise DataError(
            f"{path}: row {offset + int(neg[0]) + 1}, column 'article_id': "
            f"negative article id {int(ints[neg[0]])}"
        )
    return ints


def read_purchases(
    path: Path,
    article_ints: np.ndarray,
    report: ConversionReport,
    options: StreamOptions,
    progress: ProgressFn | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Every known-article transaction as (customer code, date code, article row) arrays.

    `article_ints` are the catalog's numeric ids in catalog order; article rows index it.
    Returns the arrays in file order, the customer ids by code and the dates by code.
    """
    order = np.argsort(article_ints, kind="stable")
    sorted_ids = article_ints[order]
    customers, dates = _Codes(), _Codes()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    offset = unknown = 0
    types = {"t_dat": pa.string(), "customer_id": pa.string(), "article_id": pa.string()}
    for batch in iter_csv(
        path, ("t_dat", "customer_id", "article_id"), types, options, progress=progress
    ):
        date = _text(batch, "t_dat", path, offset)
        customer = _text(batch, "customer_id", path, offset)
        ints = _article_ints(batch, path, offset)
        pos = np.minimum(np.searchsorted(sorted_ids, ints), len(sorted_ids) - 1)
        known = sorted_ids[pos] == ints
        unknown += int((~known).sum())
        mask = pa.array(known)
        # Codes only for kept rows, so first appearance matches the list-based converter.
        parts.append(
            (
                customers.encode(customer.filter(mask)),
                dates.encode(date.filter(mask)),
                order[pos[known]].astype(np.int32),
            )
        )
        offset += batch.num_rows
    report.read(TRANSACTIONS, offset)
    report.drop("transactions: article not in articles.csv", unknown)
    cust, day, art = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return cust, day, art, customers.values, dates.values


def histories_from_arrays(
    cust: np.ndarray,
    day: np.ndarray,
    art: np.ndarray,
    n_customers: int,
    date_values: list[str],
    report: ConversionReport,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort purchases by (customer, date), ties in file order, and merge repeated rows.

    Returns (starts, counts) per customer code into the sorted, merged (date, article) arrays.
    """
    rank = np.empty(len(date_values), dtype=np.int64)
    rank[np.argsort(np.array(date_values, dtype=object), kind="stable")] = np.arange(
        len(date_values)
    )
    key = cust.astype(np.int64) * max(len(date_values), 1) + rank[day]
    order = np.argsort(key, kind="stable")  # stable: ties keep file order
    c, d, a = cust[order], day[order], art[order]
    del order, key
    # The same article again on the same day right after is one purchase of several units.
    repeat = np.zeros(len(c), dtype=bool)
    repeat[1:] = (c[1:] == c[:-1]) & (d[1:] == d[:-1]) & (a[1:] == a[:-1])
    report.drop("transactions: repeated row of the same purchase (merged)", int(repeat.sum()))
    keep = ~repeat
    c, d, a = c[keep], d[keep], a[keep]
    counts = np.bincount(c, minlength=n_customers)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return starts, counts, d, a


def stream_hm(
    source: str | Path,
    cfg: HmConfig | None = None,
    options: StreamOptions | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Product], Iterator[TaskLine], ConversionReport]:
    """`hm.convert_hm` for files of any size: the same catalog, tasks and report.

    Tasks come lazily as TaskLines (their JSONL text); `schema.task_from_dict(json.loads(line))`
    gives the Task back where objects are wanted.
    """
    cfg = cfg or HmConfig()
    cfg.validate()
    options = options or StreamOptions()
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: not a folder; pass the folder holding {ARTICLES} and {TRANSACTIONS}"
        )
    report = ConversionReport(source=str(folder), kind="hm", options=asdict(cfg))
    products, groups = read_articles(folder / ARTICLES, report)
    pids = list(products)
    article_ints = np.array([int(p) for p in pids], dtype=np.int64)
    cust, day, art, customer_ids, date_values = read_purchases(
        folder / TRANSACTIONS, article_ints, report, options, progress
    )
    starts, counts, d, a = histories_from_arrays(
        cust, day, art, len(customer_ids), date_values, report
    )
    del cust, day, art
    if (folder / CUSTOMERS).is_file():
        known, n_rows = _known_customers(folder / CUSTOMERS, customer_ids, options, progress)
        report.read(CUSTOMERS, n_rows)
        unknown = len(customer_ids) - known
        if unknown:
            report.note(
                f"{unknown} buyers are not in {CUSTOMERS} (kept: profiles are not used in prompts)"
            )
    report.read("customers with purchases", len(customer_ids))
    enough = counts >= cfg.min_purchases
    report.drop(f"customers: fewer than {cfg.min_purchases} purchases", int((~enough).sum()))
    kept_codes = np.flatnonzero(enough)
    if cfg.limit is not None and len(kept_codes) > cfg.limit:
        report.drop("customers: over --limit", len(kept_codes) - cfg.limit)
        kept_codes = kept_codes[: cfg.limit]
    if not len(kept_codes):
        raise DataError(
            f"{folder}: no customer has {cfg.min_purchases} or more purchases; lower --min-purchases"
        )
    kept = [customer_ids[i] for i in kept_codes]
    group_names = np.array([groups[p] for p in pids], dtype=object)
    group_codes = np.unique(group_names, return_inverse=True)[1].astype(np.int64).ravel()
    targets = a[starts[kept_codes] + counts[kept_codes] - 1]
    second_core = 0 <= options.pool_process_min_tasks <= len(kept)
    pools = (hm_pools_in_process if second_core else hm_pools)(targets, group_codes, cfg)
    encoder = HmLineEncoder(pids, date_values)
    tasks = hm_task_lines(kept, kept_codes, starts, counts, d, a, pools, encoder, cfg, report)
    return products, tasks, report


def _known_customers(
    path: Path, customer_ids: list[str], options: StreamOptions, progress: ProgressFn | None
) -> tuple[int, int]:
    """How many of `customer_ids` appear in customers.csv, and its row count."""
    buyers = pa.array(customer_ids, type=pa.string())
    seen = np.zeros(len(customer_ids), dtype=bool)
    rows = 0
    for batch in iter_csv(path, ("customer_id",), {"customer_id": pa.string()}, options, progress):
        rows += batch.num_rows
        seen |= pc.is_in(buyers, value_set=batch.column("customer_id").drop_null()).to_numpy(
            zero_copy_only=False
        )
    return int(seen.sum()), rows
