"""H&M Personalized Fashion Recommendations -> shopper-profile tasks and a catalog.

Reads Kaggle's `articles.csv` and `transactions_train.csv` (and counts `customers.csv` when
present). For each customer with enough purchases the task is: given the chronological
history, describe the next purchase; the target is the customer's last purchase.

Article ids are normalized to H&M's official 10-digit zero-padded form, so files with and
without the leading zero (the Kaggle files vs. many re-exports) give the same ids.
Transactions are ordered by `t_dat`, ties in file order (a day holds no finer time).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ospo_mlx.data.pools import build_pool, split_keys
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import HistoryItem, Product, Task
from ospo_mlx.data.tables import as_int, as_text, read_columns
from ospo_mlx.errors import ConfigError, DataError

ARTICLES = "articles.csv"
TRANSACTIONS = "transactions_train.csv"
CUSTOMERS = "customers.csv"


@dataclass
class HmConfig:
    """Which customers become tasks, history length, pools and split."""

    min_purchases: int = field(
        default=5,
        metadata={"help": "Customers with fewer purchases (after merging repeats) are skipped."},
    )
    max_history: int = field(
        default=20,
        metadata={"help": "Most recent purchases kept in a task's history (before the target)."},
    )
    pool_size: int = field(
        default=100, metadata={"help": "Pool size: the target plus sampled negatives."}
    )
    related_fraction: float = field(
        default=0.5, metadata={"help": "Share of pool negatives from the target's product group."}
    )
    test_fraction: float = field(
        default=0.2, metadata={"help": "Seeded fraction of customers in the test split."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the split and the pool negatives."})
    limit: int | None = field(
        default=None, metadata={"help": "Keep at most this many customers (first seen first)."}
    )

    def validate(self) -> None:
        if self.min_purchases < 2:
            raise ConfigError("min_purchases must be >= 2 (one history item plus the target)")
        if self.max_history < 1 or self.pool_size < 1:
            raise ConfigError("max_history and pool_size must be >= 1")
        if not 0 <= self.test_fraction <= 1 or not 0 <= self.related_fraction <= 1:
            raise ConfigError("test_fraction and related_fraction must be in [0, 1]")


def article_id(value: object, path: Path, row: int, column: str = "article_id") -> str:
    """The official 10-digit zero-padded article id (e.g. 108775015 -> '0108775015')."""
    n = as_int(value, path, row, column)
    if n < 0:
        raise DataError(f"{path}: row {row}, column '{column}': negative article id {n}")
    return str(n).zfill(10)


def read_articles(
    path: Path, report: ConversionReport
) -> tuple[dict[str, Product], dict[str, str]]:
    """Catalog products and each article's product group (for hard pool negatives)."""
    cols, n = read_columns(
        path,
        ("article_id", "prod_name"),
        ("product_type_name", "product_group_name", "colour_group_name", "detail_desc"),
    )
    report.read(ARTICLES, n)
    products: dict[str, Product] = {}
    groups: dict[str, str] = {}
    for i in range(n):
        row = i + 1
        pid = article_id(cols["article_id"][i], path, row)
        name = as_text(cols["prod_name"][i], path, row, "prod_name")
        if not name:
            report.drop("articles: no prod_name")
            continue
        if pid in products:
            report.drop("articles: duplicate article_id (first kept)")
            continue
        products[pid] = Product(
            product_id=pid,
            title=name,
            color=as_text(cols["colour_group_name"][i], path, row, "colour_group_name"),
            category=as_text(cols["product_type_name"][i], path, row, "product_type_name"),
            description=as_text(cols["detail_desc"][i], path, row, "detail_desc"),
        )
        groups[pid] = as_text(cols["product_group_name"][i], path, row, "product_group_name") or ""
    if not products:
        raise DataError(f"{path}: no usable article (every row lacks prod_name)")
    return products, groups


def read_histories(
    path: Path, products: dict[str, Product], report: ConversionReport
) -> dict[str, list[HistoryItem]]:
    """Each customer's purchases, oldest first (ties in file order), repeats merged."""
    cols, n = read_columns(path, ("t_dat", "customer_id", "article_id"))
    report.read(TRANSACTIONS, n)
    rows: dict[str, list[tuple[str, int, str]]] = {}
    for i in range(n):
        row = i + 1
        date = as_text(cols["t_dat"][i], path, row, "t_dat", allow_none=False)
        customer = as_text(cols["customer_id"][i], path, row, "customer_id", allow_none=False)
        pid = article_id(cols["article_id"][i], path, row)
        if pid not in products:
            report.drop("transactions: article not in articles.csv")
            continue
        rows.setdefault(customer, []).append((date, i, pid))
    histories: dict[str, list[HistoryItem]] = {}
    for customer, items in rows.items():
        items.sort()  # by date, then file position
        history: list[HistoryItem] = []
        for date, _, pid in items:
            # One row per unit bought: the same article twice on a day is one purchase.
            if history and history[-1].product_id == pid and history[-1].date == date:
                report.drop("transactions: repeated row of the same purchase (merged)")
                continue
            history.append(HistoryItem(pid, date))
        histories[customer] = history
    return histories


def convert_hm(
    source: str | Path, cfg: HmConfig | None = None
) -> tuple[dict[str, Product], list[Task], ConversionReport]:
    """Read an H&M folder into the catalog (every article), tasks and a report."""
    cfg = cfg or HmConfig()
    cfg.validate()
    folder = Path(source)
    if not folder.is_dir():
        raise DataError(
            f"{folder}: not a folder; pass the folder holding {ARTICLES} and {TRANSACTIONS}"
        )
    report = ConversionReport(source=str(folder), kind="hm", options=asdict(cfg))
    products, groups = read_articles(folder / ARTICLES, report)
    histories = read_histories(folder / TRANSACTIONS, products, report)
    if (folder / CUSTOMERS).is_file():
        ccols, cn = read_columns(folder / CUSTOMERS, ("customer_id",))
        report.read(CUSTOMERS, cn)
        known = set(ccols["customer_id"])
        unknown = sum(c not in known for c in histories)
        if unknown:
            report.note(
                f"{unknown} buyers are not in {CUSTOMERS} (kept: profiles are not used in prompts)"
            )
    report.read("customers with purchases", len(histories))

    kept = []
    for customer, history in histories.items():
        if len(history) < cfg.min_purchases:
            report.drop(f"customers: fewer than {cfg.min_purchases} purchases")
        else:
            kept.append(customer)
    if cfg.limit is not None and len(kept) > cfg.limit:
        report.drop("customers: over --limit", len(kept) - cfg.limit)
        kept = kept[: cfg.limit]
    if not kept:
        raise DataError(
            f"{folder}: no customer has {cfg.min_purchases} or more purchases; lower --min-purchases"
        )
    tasks = list(
        build_tasks(kept, ((c, histories[c]) for c in kept), products, groups, cfg, report)
    )
    return products, tasks, report


def build_tasks(
    kept: list[str],
    histories: Iterable[tuple[str, list[HistoryItem]]],
    products: dict[str, Product],
    groups: dict[str, str],
    cfg: HmConfig,
    report: ConversionReport,
) -> Iterator[Task]:
    """One task per kept customer, in `kept` order, from its (customer, history) pairs.

    A generator, so the streaming converter never holds every task; the split and the seeded
    pools depend only on `kept` and the order, so both converters give the same tasks.
    """
    test_ids = split_keys(kept, cfg.test_fraction, cfg.seed)
    report.note(f"split: seeded by customer (test_fraction={cfg.test_fraction}, seed={cfg.seed})")
    by_group: dict[str, list[str]] = {}
    for pid, group in groups.items():
        by_group.setdefault(group, []).append(pid)
    catalog_ids = list(products)
    rng = np.random.default_rng(cfg.seed)
    for customer, history in histories:
        target = history[-1].product_id
        pool = build_pool(
            [target],
            cfg.pool_size,
            rng,
            catalog_ids=catalog_ids,
            related_ids=by_group.get(groups[target], []),
            related_fraction=cfg.related_fraction,
        )
        yield Task(
            id=f"hm-{customer}",
            kind="shopper_profile",
            targets={target: 1.0},
            history=history[:-1][-cfg.max_history :],
            pool=pool,
            split="test" if customer in test_ids else "train",
        )
