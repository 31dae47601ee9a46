"""H&M converter: the real sample, id normalization, ordering, pools and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ospo_mlx.data.hm import HmConfig, convert_hm
from ospo_mlx.errors import ConfigError, DataError

ART_HEADER = [
    "article_id",
    "prod_name",
    "product_type_name",
    "product_group_name",
    "colour_group_name",
    "detail_desc",
]
TX_HEADER = ["t_dat", "customer_id", "article_id", "price", "sales_channel_id"]


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_real_sample_against_an_independent_reading(shared_data):
    folder = shared_data / "hm-sample"
    catalog, tasks, report = convert_hm(folder, HmConfig(pool_size=30, max_history=6))
    purchases: dict[str, list[str]] = {}
    with (folder / "transactions_train.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):  # one day only: file order is the order
            items = purchases.setdefault(row["customer_id"], [])
            pid = row["article_id"].zfill(10)
            if not items or items[-1] != pid:
                items.append(pid)
    expected = {c: items for c, items in purchases.items() if len(items) >= 5}
    assert {t.id for t in tasks} == {f"hm-{c}" for c in expected}
    assert len(catalog) == 4903 and all(len(pid) == 10 and pid[0] == "0" for pid in catalog)
    for task in tasks:
        items = expected[task.id[3:]]
        assert task.targets == {items[-1]: 1.0}
        assert [h.product_id for h in task.history] == items[:-1][-6:]
        assert items[-1] in task.pool and len(task.pool) == 30
        assert all(h.date == "2018-09-20" for h in task.history)
    assert report.dropped["customers: fewer than 5 purchases"] == len(purchases) - len(expected)
    assert report.rows_read["transactions_train.csv"] == 10_000
    assert sum(t.split == "test" for t in tasks) == round(0.2 * len(tasks))
    # Pools lean towards the target's product group (hard negatives).
    art = {}
    with (folder / "articles.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            art[row["article_id"].zfill(10)] = row["product_group_name"]
    same = [sum(art[p] == art[next(iter(t.targets))] for p in t.pool) / len(t.pool) for t in tasks]
    assert sum(same) / len(same) > 0.5


@pytest.fixture()
def hm_dir(tmp_path) -> Path:
    folder = tmp_path / "hm"
    folder.mkdir()
    _csv(
        folder / "articles.csv",
        ART_HEADER,
        [
            ["0108775015", "Strap top", "Vest top", "Garment Upper body", "Black", "Jersey top."],
            [108775051, "Strap top (1)", "Vest top", "Garment Upper body", "White", ""],
            [200000001, "Denim", "Trousers", "Garment Lower body", "Blue", "Jeans."],
            [200000002, "Chino", "Trousers", "Garment Lower body", "Beige", "Chinos."],
            [300000001, "Cap", "Hat", "Accessories", "Red", "A cap."],
            [300000002, "", "Hat", "Accessories", "Red", "no name"],
        ],
    )
    _csv(
        folder / "transactions_train.csv",
        TX_HEADER,
        [
            ["2020-01-03", "alice", "200000002", 0.1, 2],
            ["2020-01-01", "alice", "108775015", 0.1, 2],  # earlier date, later in the file
            ["2020-01-02", "alice", "200000001", 0.1, 2],
            ["2020-01-02", "alice", "300000001", 0.1, 2],  # same day: file order
            ["2020-01-02", "alice", "300000001", 0.1, 2],  # second unit of the same purchase
            ["2020-01-01", "bob", "108775051", 0.1, 1],
            ["2020-01-01", "bob", "999999999", 0.1, 1],  # unknown article
            ["2020-01-02", "bob", "200000001", 0.1, 1],
        ],
    )
    return folder


def test_order_ids_and_counted_skips(hm_dir):
    catalog, tasks, report = convert_hm(
        hm_dir, HmConfig(min_purchases=3, test_fraction=0, pool_size=4)
    )
    assert set(catalog) == {"0108775015", "0108775051", "0200000001", "0200000002", "0300000001"}
    assert (
        catalog["0108775015"].title == "Strap top" and catalog["0200000001"].category == "Trousers"
    )
    [task] = tasks
    assert task.id == "hm-alice" and task.kind == "shopper_profile" and task.split == "train"
    assert [h.product_id for h in task.history] == ["0108775015", "0200000001", "0300000001"]
    assert task.targets == {"0200000002": 1.0}
    assert "0200000001" in task.pool  # same product group as the target
    assert report.dropped["articles: no prod_name"] == 1
    assert report.dropped["transactions: article not in articles.csv"] == 1
    assert report.dropped["transactions: repeated row of the same purchase (merged)"] == 1
    assert report.dropped["customers: fewer than 3 purchases"] == 1


def test_history_cap_limit_and_min_purchases(hm_dir):
    _, tasks, _ = convert_hm(hm_dir, HmConfig(min_purchases=2, max_history=1, test_fraction=0.5))
    assert {t.id for t in tasks} == {"hm-alice", "hm-bob"}
    assert {t.split for t in tasks} == {"train", "test"}
    alice = next(t for t in tasks if t.id == "hm-alice")
    assert [h.product_id for h in alice.history] == ["0300000001"]
    _, tasks, report = convert_hm(hm_dir, HmConfig(min_purchases=2, limit=1))
    assert len(tasks) == 1 and report.dropped["customers: over --limit"] == 1
    with pytest.raises(DataError, match="lower --min-purchases"):
        convert_hm(hm_dir, HmConfig(min_purchases=50))


def test_bad_input(hm_dir, tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        convert_hm(tmp_path / "missing")
    _csv(hm_dir / "transactions_train.csv", ["t_dat", "customer_id"], [["2020-01-01", "a"]])
    with pytest.raises(
        DataError, match=r"transactions_train\.csv: missing column\(s\) \['article_id'\]"
    ):
        convert_hm(hm_dir)
    _csv(
        hm_dir / "transactions_train.csv",
        TX_HEADER,
        [["2020-01-01", "a", "200000001", 1, 1], ["2020-01-01", "a", "x12", 1, 1]],
    )
    with pytest.raises(DataError, match=r"row 2, column 'article_id': expected an integer"):
        convert_hm(hm_dir)
    (hm_dir / "articles.csv").write_text("")
    with pytest.raises(DataError, match=r"articles\.csv: the file is empty"):
        convert_hm(hm_dir)
    with pytest.raises(ConfigError):
        convert_hm(hm_dir, HmConfig(min_purchases=1))


def test_duplicate_articles_are_counted(hm_dir):
    rows = list(csv.reader((hm_dir / "articles.csv").open()))
    _csv(hm_dir / "articles.csv", rows[0], [*rows[1:], ["200000001", "Other", "x", "y", "z", ""]])
    catalog, _, report = convert_hm(hm_dir, HmConfig(min_purchases=2))
    assert catalog["0200000001"].title == "Denim"
    assert report.dropped["articles: duplicate article_id (first kept)"] == 1
