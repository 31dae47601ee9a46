"""Amazon ESCI (Shopping Queries Data Set) -> query-expansion tasks and a catalog.

Three source forms, detected from the path:
- the official parquet pair (`shopping_queries_dataset_examples.parquet` and
  `shopping_queries_dataset_products.parquet`) in a folder;
- a JSON list of `{query_id, query, products: [{product_id, product_text|title, relevance}]}`
  with relevance 3/2/1/0 = E/S/C/I (the form of ../shared/data/esci-sample/esci_subset.json);
- a CSV with one labelled (query, product) pair per row, labels as words or letters, and the
  product columns (the form of esci_products_full.csv);
and a folder holding JSON and CSV files, whose labels and products are combined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ospo_mlx.data.pools import build_pool, split_keys
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.data.tables import as_int, as_text, read_columns
from ospo_mlx.errors import ConfigError, DataError

EXAMPLES_FILE = "shopping_queries_dataset_examples.parquet"
PRODUCTS_FILE = "shopping_queries_dataset_products.parquet"
LABELS = {
    "e": "E", "exact": "E", "3": "E",
    "s": "S", "substitute": "S", "2": "S",
    "c": "C", "complement": "C", "1": "C",
    "i": "I", "irrelevant": "I", "0": "I",
}  # fmt: skip
PRODUCT_COLUMNS = ("product_description", "product_bullet_point", "product_brand", "product_color")
_TAG = re.compile(r"<[^>]+>")


@dataclass
class EsciConfig:
    """Filters, gains, pools and split of an ESCI conversion."""

    locale: str = field(
        default="us", metadata={"help": "product_locale to keep (us, es, jp) or 'all'."}
    )
    version: str = field(
        default="small",
        metadata={"help": "'small', 'large' or 'all' (rows flagged in that version)."},
    )
    split: str = field(
        default="all", metadata={"help": "ESCI split to keep: 'train', 'test' or 'all'."}
    )
    min_exact: int = field(
        default=0, metadata={"help": "Drop queries with fewer Exact products (paper: 3)."}
    )
    max_exact: int | None = field(
        default=None, metadata={"help": "Drop queries with more Exact products (paper: 10)."}
    )
    gains: dict[str, float] = field(
        default_factory=lambda: {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0},
        metadata={"help": "Gain per label; labels with gain 0 stay in the pool as hard negatives."},
    )
    pool_size: int = field(
        default=100, metadata={"help": "Pool size: labelled products plus sampled negatives."}
    )
    test_fraction: float = field(
        default=0.2,
        metadata={"help": "Seeded test fraction of queries when the source has no split."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split and of pool negatives."})
    limit: int | None = field(
        default=None,
        metadata={
            "help": "Read at most this many queries (in source order) before the per-query filters."
        },
    )

    def validate(self) -> None:
        if self.version not in ("small", "large", "all"):
            raise ConfigError(f"version must be small, large or all, got '{self.version}'")
        if self.split not in ("train", "test", "all"):
            raise ConfigError(f"split must be train, test or all, got '{self.split}'")
        if set(self.gains) != {"E", "S", "C", "I"}:
            raise ConfigError(f"gains need exactly the labels E, S, C, I, got {sorted(self.gains)}")
        if self.max_exact is not None and self.max_exact < self.min_exact:
            raise ConfigError("max_exact must be >= min_exact")
        if not 0 <= self.test_fraction <= 1 or self.pool_size < 1:
            raise ConfigError("test_fraction must be in [0, 1] and pool_size >= 1")


@dataclass
class Label:
    """One labelled (query, product) pair, already normalized."""

    query_id: str
    query: str
    product_id: str
    label: str  # E, S, C or I
    split: str | None = None


def _clean(text: str | None, limit: int = 2000) -> str | None:
    if not text:
        return None
    text = " ".join(_TAG.sub(" ", text).split())
    return text[:limit] or None


def _label(value: object, path: Path, row: int, column: str) -> str:
    key = str(value).strip().lower() if value is not None else ""
    if key.endswith(".0"):
        key = key[:-2]
    if key not in LABELS:
        raise DataError(
            f"{path}: row {row}, column '{column}': unknown label {value!r}; expected E/S/C/I, "
            "Exact/Substitute/Complement/Irrelevant or 3/2/1/0"
        )
    return LABELS[key]


def _pid(pid: str, locale: str | None, cfg: EsciConfig) -> str:
    # With every locale kept the same ASIN may be two products, so the locale joins the id.
    return f"{pid}@{locale}" if cfg.locale == "all" and locale else pid


def _keep_row(cols: dict, i: int, path: Path, cfg: EsciConfig, report: ConversionReport) -> bool:
    """Apply the locale/version/split filters to row i (when the columns exist)."""
    row = i + 1
    locale = cols["product_locale"][i]
    if cfg.locale != "all" and locale is not None and locale != cfg.locale:
        report.drop(f"label rows: locale is not '{cfg.locale}'")
        return False
    if cfg.version != "all":
        flag = cols[f"{cfg.version}_version"][i]
        if flag is not None and as_int(flag, path, row, f"{cfg.version}_version") != 1:
            report.drop(f"label rows: not in the {cfg.version} version")
            return False
    split = cols["split"][i]
    if cfg.split != "all" and split is not None and split != cfg.split:
        report.drop(f"label rows: not in the '{cfg.split}' split")
        return False
    return True


def _product(pid: str, path: Path, row: int, cols: dict, i: int, title_col: str) -> Product | None:
    title = as_text(cols[title_col][i], path, row, title_col)
    if not title:
        return None
    return Product(
        product_id=pid,
        title=_clean(title, 300) or title,
        brand=as_text(cols["product_brand"][i], path, row, "product_brand"),
        color=as_text(cols["product_color"][i], path, row, "product_color"),
        description=_clean(
            as_text(cols["product_description"][i], path, row, "product_description")
        ),
        bullets=_clean(as_text(cols["product_bullet_point"][i], path, row, "product_bullet_point")),
    )


def _add_product(
    products: dict[str, Product], product: Product | None, report: ConversionReport, what: str
) -> None:
    if product is None:
        report.drop(f"{what}: product without a title")
    elif product.product_id in products:
        if products[product.product_id] != product:
            report.drop(f"{what}: duplicate product_id (first kept)")
    else:
        products[product.product_id] = product


def read_parquet(
    folder: Path, cfg: EsciConfig, report: ConversionReport
) -> tuple[list[Label], dict[str, Product]]:
    """Labels and products from the official parquet pair."""
    ex_path, pr_path = folder / EXAMPLES_FILE, folder / PRODUCTS_FILE
    cols, n = read_columns(
        ex_path,
        ("query_id", "query", "product_id", "esci_label"),
        ("product_locale", "small_version", "large_version", "split"),
    )
    report.read(EXAMPLES_FILE, n)
    labels = []
    for i in range(n):
        if not _keep_row(cols, i, ex_path, cfg, report):
            continue
        row = i + 1
        labels.append(
            Label(
                query_id=as_text(cols["query_id"][i], ex_path, row, "query_id", allow_none=False),
                query=as_text(cols["query"][i], ex_path, row, "query", allow_none=False),
                product_id=_pid(
                    as_text(cols["product_id"][i], ex_path, row, "product_id", allow_none=False),
                    cols["product_locale"][i],
                    cfg,
                ),
                label=_label(cols["esci_label"][i], ex_path, row, "esci_label"),
                split=cols["split"][i],
            )
        )
    needed = {lb.product_id for lb in labels}
    pcols, pn = read_columns(
        pr_path, ("product_id", "product_title"), ("product_locale", *PRODUCT_COLUMNS)
    )
    report.read(PRODUCTS_FILE, pn)
    products: dict[str, Product] = {}
    for i in range(pn):
        locale = pcols["product_locale"][i]
        if cfg.locale != "all" and locale is not None and locale != cfg.locale:
            continue  # products of other locales are simply not part of this catalog
        pid = _pid(
            as_text(pcols["product_id"][i], pr_path, i + 1, "product_id", allow_none=False),
            locale,
            cfg,
        )
        if pid in needed:
            _add_product(
                products,
                _product(pid, pr_path, i + 1, pcols, i, "product_title"),
                report,
                "products",
            )
    return labels, products


def read_json(
    path: Path, cfg: EsciConfig, report: ConversionReport
) -> tuple[list[Label], dict[str, Product]]:
    """Labels and product titles from the JSON form (one item per query)."""
    cols, n = read_columns(path, ("query_id", "query", "products"), ("split",))
    report.read(path.name, n)
    labels, products = [], {}
    for i in range(n):
        row = i + 1
        qid = as_text(cols["query_id"][i], path, row, "query_id", allow_none=False)
        query = as_text(cols["query"][i], path, row, "query", allow_none=False)
        items = cols["products"][i]
        if not isinstance(items, list):
            raise DataError(
                f"{path}: row {row}, column 'products': expected a list, got {type(items).__name__}"
            )
        if cfg.split != "all" and cols["split"][i] is not None and cols["split"][i] != cfg.split:
            report.drop(f"queries: not in the '{cfg.split}' split")
            continue
        for j, item in enumerate(items):
            where = f"products[{j}]"
            if not isinstance(item, dict) or "product_id" not in item or "relevance" not in item:
                raise DataError(
                    f"{path}: row {row}, column '{where}': needs product_id and relevance"
                )
            pid = as_text(item["product_id"], path, row, f"{where}.product_id", allow_none=False)
            title = as_text(
                item.get("product_text") or item.get("title"), path, row, f"{where}.product_text"
            )
            _add_product(
                products, Product(pid, _clean(title, 300)) if title else None, report, path.name
            )
            labels.append(
                Label(
                    qid,
                    query,
                    pid,
                    _label(item["relevance"], path, row, f"{where}.relevance"),
                    cols["split"][i],
                )
            )
        report.read(f"{path.name} labelled pairs", len(items))
    return labels, products


def read_csv(
    path: Path, cfg: EsciConfig, report: ConversionReport
) -> tuple[list[Label], dict[str, Product]]:
    """Labels and full products from the CSV form (one labelled pair per row)."""
    cols, n = read_columns(
        path,
        ("query_id", "query", "product_id", "esci_label", "product_title"),
        ("product_locale", "small_version", "large_version", "split", *PRODUCT_COLUMNS),
    )
    report.read(path.name, n)
    labels, products = [], {}
    for i in range(n):
        if not _keep_row(cols, i, path, cfg, report):
            continue
        row = i + 1
        pid = _pid(
            as_text(cols["product_id"][i], path, row, "product_id", allow_none=False),
            cols["product_locale"][i],
            cfg,
        )
        _add_product(
            products, _product(pid, path, row, cols, i, "product_title"), report, path.name
        )
        labels.append(
            Label(
                query_id=as_text(cols["query_id"][i], path, row, "query_id", allow_none=False),
                query=as_text(cols["query"][i], path, row, "query", allow_none=False),
                product_id=pid,
                label=_label(cols["esci_label"][i], path, row, "esci_label"),
                split=cols["split"][i],
            )
        )
    return labels, products


def read_source(
    source: str | Path, cfg: EsciConfig, report: ConversionReport
) -> tuple[list[Label], dict[str, Product]]:
    """Detect the source form from the path and read its labels and products."""
    path = Path(source)
    if path.is_dir():
        if (path / EXAMPLES_FILE).is_file():
            return read_parquet(path, cfg, report)
        files = sorted(path.glob("*.csv")) + sorted(path.glob("*.json"))
        if not files:
            raise DataError(
                f"{path}: no {EXAMPLES_FILE} and no .json/.csv ESCI files in this folder"
            )
        labels, products = [], {}
        for f in files:  # CSV first: its products carry every field, so they win duplicates
            lb, pr = (read_csv if f.suffix == ".csv" else read_json)(f, cfg, report)
            labels += lb
            for pid, p in pr.items():
                products.setdefault(pid, p)
        return labels, products
    if path.suffix == ".parquet" and path.name in (EXAMPLES_FILE, PRODUCTS_FILE):
        return read_parquet(path.parent, cfg, report)
    if path.suffix == ".json":
        return read_json(path, cfg, report)
    if path.suffix == ".csv":
        return read_csv(path, cfg, report)
    if not path.exists():
        raise DataError(f"{path}: not found; pass the ESCI parquet folder, a .json or a .csv file")
    raise DataError(f"{path}: not an ESCI source; pass the parquet folder, a .json or a .csv file")


def build_tasks(
    labels: Iterable[Label], products: dict[str, Product], cfg: EsciConfig, report: ConversionReport
) -> tuple[dict[str, Product], list[Task]]:
    """Group labels into one task per query, filter, split and add candidate pools."""
    by_query: dict[str, dict[str, Label]] = {}
    for lb in labels:
        if lb.product_id not in products:
            report.drop("labels: product not in the products file")
            continue
        group = by_query.setdefault(lb.query_id, {})
        if lb.product_id in group:
            report.drop("labels: duplicate (query, product) label (first kept)")
            continue
        group[lb.product_id] = lb
    # The catalog holds every labelled product of the queries that passed the row filters
    # (dropped queries' products are useful distractors), minus queries cut by --limit.
    groups = list(by_query.values())
    if cfg.limit is not None and len(groups) > cfg.limit:
        report.drop("queries: over --limit (before query filters)", len(groups) - cfg.limit)
        groups = groups[: cfg.limit]
    kept: list[dict[str, Label]] = []
    for group in groups:
        n_exact = sum(lb.label == "E" for lb in group.values())
        if n_exact < cfg.min_exact:
            report.drop(f"queries: fewer than {cfg.min_exact} Exact products")
        elif cfg.max_exact is not None and n_exact > cfg.max_exact:
            report.drop(f"queries: more than {cfg.max_exact} Exact products")
        elif not any(cfg.gains[lb.label] > 0 for lb in group.values()):
            report.drop("queries: no relevant (gain > 0) product")
        else:
            kept.append(group)
    if not kept:
        raise DataError(
            f"{report.source}: no query left after filtering; see the dropped counts ({dict(report.dropped)})"
        )

    source_splits = {lb.split for g in kept for lb in g.values()}
    use_source_split = source_splits == {"train", "test"}
    qids = [next(iter(g.values())).query_id for g in kept]
    test_ids = set() if use_source_split else split_keys(qids, cfg.test_fraction, cfg.seed)
    report.note(
        "split: from the source's split column"
        if use_source_split
        else f"split: seeded by query (test_fraction={cfg.test_fraction}, seed={cfg.seed})"
    )
    catalog = {pid: products[pid] for g in groups for pid in g}
    catalog_ids = list(catalog)
    rng = np.random.default_rng(cfg.seed)
    tasks = []
    for qid, group in zip(qids, kept, strict=True):
        first = next(iter(group.values()))
        targets = {pid: cfg.gains[lb.label] for pid, lb in group.items() if cfg.gains[lb.label] > 0}
        split = first.split if use_source_split else ("test" if qid in test_ids else "train")
        pool = build_pool(list(group), cfg.pool_size, rng, catalog_ids=catalog_ids)
        tasks.append(
            Task(
                id=f"esci-{qid}",
                kind="query_expansion",
                targets=targets,
                query=first.query,
                pool=pool,
                split=split,
            )
        )
    return catalog, tasks


def convert_esci(
    source: str | Path, cfg: EsciConfig | None = None
) -> tuple[dict[str, Product], list[Task], ConversionReport]:
    """Read an ESCI source (any supported form) into a catalog, tasks and a report."""
    cfg = cfg or EsciConfig()
    cfg.validate()
    report = ConversionReport(source=str(source), kind="esci", options=asdict(cfg))
    labels, products = read_source(source, cfg, report)
    report.read("labels after filters", len(labels))
    catalog, tasks = build_tasks(labels, products, cfg, report)
    return catalog, tasks, report
