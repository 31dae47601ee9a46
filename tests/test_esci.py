"""ESCI converter: the real sample (json, csv, both), parquet fixtures, filters, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ospo_mlx.data.esci import EXAMPLES_FILE, PRODUCTS_FILE, EsciConfig, convert_esci
from ospo_mlx.errors import ConfigError, DataError

GAIN = {3: 3.0, 2: 2.0, 1: 1.0}


# --- the real sample ---------------------------------------------------------------------------


def test_sample_json_matches_an_independent_count(shared_data):
    path = shared_data / "esci-sample" / "esci_subset.json"
    raw = json.loads(path.read_text())
    catalog, tasks, report = convert_esci(path, EsciConfig(pool_size=20))
    expected = {}
    for item in raw:
        seen = {}
        for p in item["products"]:
            seen.setdefault(p["product_id"], p["relevance"])  # first label of a pair wins
        targets = {pid: GAIN[r] for pid, r in seen.items() if r > 0}
        if targets:
            expected[f"esci-{item['query_id']}"] = targets
    assert {t.id: t.targets for t in tasks} == expected
    assert report.rows_read["esci_subset.json"] == 400
    assert report.rows_read["esci_subset.json labelled pairs"] == 964
    assert report.dropped["queries: no relevant (gain > 0) product"] == 400 - len(expected)
    assert len(catalog) == len({p["product_id"] for it in raw for p in it["products"]})
    for task in tasks:
        labelled = {
            p["product_id"]
            for it in raw
            if f"esci-{it['query_id']}" == task.id
            for p in it["products"]
        }
        assert labelled <= set(task.pool) and len(task.pool) == max(20, len(labelled))
    assert {t.split for t in tasks} == {"train", "test"}
    n_test = sum(t.split == "test" for t in tasks)
    assert n_test == round(0.2 * len(tasks))


def test_sample_csv_words_and_version_filter(shared_data):
    path = shared_data / "esci-sample" / "esci_products_full.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    small = [r for r in rows if r["small_version"] == "1"]
    catalog, tasks, report = convert_esci(path)
    assert report.dropped["label rows: not in the small version"] == len(rows) - len(small)
    relevant = {r["query_id"] for r in small if r["esci_label"] != "Irrelevant"}
    assert {t.id for t in tasks} == {f"esci-{q}" for q in relevant}
    # The CSV carries full product fields, HTML stripped.
    some = next(p for p in catalog.values() if p.description)
    assert "<br" not in some.description and some.brand is not None
    _, all_tasks, _ = convert_esci(path, EsciConfig(version="all"))
    assert len(all_tasks) == len({r["query_id"] for r in rows if r["esci_label"] != "Irrelevant"})


def test_sample_folder_combines_json_and_csv(shared_data):
    folder = shared_data / "esci-sample"
    catalog, tasks, _ = convert_esci(folder)
    j_cat, j_tasks, _ = convert_esci(folder / "esci_subset.json")
    c_cat, c_tasks, _ = convert_esci(folder / "esci_products_full.csv")
    assert set(catalog) == set(j_cat) | set(c_cat)
    assert {t.id for t in tasks} >= {t.id for t in j_tasks} | {t.id for t in c_tasks}
    assert len(catalog) > 500


# --- parquet fixtures --------------------------------------------------------------------------


def _write_parquet(folder: Path, examples: list[dict], products: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(examples), folder / EXAMPLES_FILE)
    pq.write_table(pa.Table.from_pylist(products), folder / PRODUCTS_FILE)
    return folder


def _ex(qid, pid, label, locale="us", small=1, split="train", query=None):
    return {
        "example_id": 0, "query": query or f"query {qid}", "query_id": qid, "product_id": pid,
        "product_locale": locale, "esci_label": label, "small_version": small, "large_version": 1,
        "split": split,
    }  # fmt: skip


def _prod(pid, locale="us", title=None):
    return {
        "product_id": pid, "product_title": title if title is not None else f"Product {pid}",
        "product_description": "<b>Nice</b> thing", "product_bullet_point": "one\ntwo",
        "product_brand": "Acme", "product_color": "red", "product_locale": locale,
    }  # fmt: skip


@pytest.fixture()
def parquet_dir(tmp_path) -> Path:
    examples = [
        _ex(1, "A", "E"), _ex(1, "B", "S"), _ex(1, "C", "I"), _ex(1, "D", "C"),
        _ex(2, "B", "E", split="test"), _ex(2, "E", "E", split="test"), _ex(2, "F", "E", split="test"),
        _ex(3, "C", "I"),  # no relevant product
        _ex(4, "A", "E", locale="es"),  # other locale
        _ex(5, "A", "E", small=0),  # large version only
        _ex(6, "Z", "E"),  # product missing from the products file
    ]  # fmt: skip
    products = [_prod(p) for p in "ABCDEF"] + [_prod("A", locale="es"), _prod("G")]
    return _write_parquet(tmp_path / "esci", examples, products)


def test_parquet_filters_gains_pools_and_source_split(parquet_dir):
    catalog, tasks, report = convert_esci(parquet_dir, EsciConfig(pool_size=5, seed=1))
    by_id = {t.id: t for t in tasks}
    assert set(by_id) == {"esci-1", "esci-2"}
    assert by_id["esci-1"].targets == {"A": 3.0, "B": 2.0, "D": 1.0}  # I=0 stays out of targets
    assert "C" in by_id["esci-1"].pool and len(by_id["esci-1"].pool) == 5
    assert by_id["esci-2"].split == "test" and by_id["esci-1"].split == "train"  # source split
    assert set(catalog) == set("ABCDEF")  # G is never labelled; Z is unknown
    assert catalog["A"].description == "Nice thing" and catalog["A"].brand == "Acme"
    assert report.dropped["label rows: locale is not 'us'"] == 1
    assert report.dropped["label rows: not in the small version"] == 1
    assert report.dropped["labels: product not in the products file"] == 1
    assert report.dropped["queries: no relevant (gain > 0) product"] == 1


def test_exact_count_filters_and_custom_gains(parquet_dir):
    _, tasks, report = convert_esci(parquet_dir, EsciConfig(min_exact=2, max_exact=3))
    assert [t.id for t in tasks] == ["esci-2"]
    assert report.dropped["queries: fewer than 2 Exact products"] == 2
    _, tasks, _ = convert_esci(parquet_dir, EsciConfig(gains={"E": 1, "S": 0, "C": 0, "I": 0.5}))
    t1 = next(t for t in tasks if t.id == "esci-1")
    assert t1.targets == {"A": 1.0, "C": 0.5}
    assert any(t.id == "esci-3" for t in tasks)  # its I label now counts


def test_locale_all_keeps_locales_apart(parquet_dir):
    catalog, tasks, _ = convert_esci(parquet_dir, EsciConfig(locale="all", version="all"))
    assert "A@us" in catalog and "A@es" in catalog
    assert next(t for t in tasks if t.id == "esci-4").targets == {"A@es": 3.0}


def test_split_filter_then_seeded_split(parquet_dir):
    _, tasks, report = convert_esci(parquet_dir, EsciConfig(split="train", test_fraction=0.5))
    assert [t.id for t in tasks] == ["esci-1"]  # one query: it stays in train
    assert any("seeded" in n for n in report.notes)


def test_limit_and_determinism(parquet_dir):
    a = convert_esci(parquet_dir, EsciConfig(seed=7, pool_size=6))[1]
    b = convert_esci(parquet_dir, EsciConfig(seed=7, pool_size=6))[1]
    assert [t.pool for t in a] == [t.pool for t in b]
    _, tasks, report = convert_esci(parquet_dir, EsciConfig(limit=1))
    assert (
        len(tasks) == 1 and report.dropped["queries: over --limit (before query filters)"] == 2
    )  # queries 2 and 3


# --- bad input ---------------------------------------------------------------------------------


def _csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


CSV_HEADER = ["query_id", "query", "product_id", "esci_label", "product_title", "small_version"]


def test_missing_column_names_file_and_column(tmp_path):
    path = _csv(tmp_path / "x.csv", [*CSV_HEADER[:3], "product_title"], [[1, "q", "A", "t"]])
    with pytest.raises(DataError, match=r"x\.csv: missing column\(s\) \['esci_label'\]"):
        convert_esci(path)


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"e\.csv: the file is empty"):
        convert_esci(tmp_path / "e.csv")
    (tmp_path / "h.csv").write_text(",".join(CSV_HEADER) + "\n")
    with pytest.raises(DataError, match=r"h\.csv"):
        convert_esci(tmp_path / "h.csv")


def test_wrong_type_and_unknown_label_name_the_row(tmp_path):
    rows = [[1, "q", "A", "Exact", "t", 1], [1, "q", "B", "Exact", "t", "yes"]]
    with pytest.raises(DataError, match=r"row 2, column 'small_version': expected an integer"):
        convert_esci(_csv(tmp_path / "t.csv", CSV_HEADER, rows))
    rows = [[1, "q", "A", "Exact", "t", 1], [1, "q", "B", "Maybe", "t", 1]]
    with pytest.raises(DataError, match=r"row 2, column 'esci_label': unknown label 'Maybe'"):
        convert_esci(_csv(tmp_path / "l.csv", CSV_HEADER, rows))


def test_json_bad_items(tmp_path):
    path = tmp_path / "q.json"
    path.write_text(json.dumps([{"query_id": 1, "query": "q", "products": [{"product_id": "A"}]}]))
    with pytest.raises(
        DataError, match=r"row 1, column 'products\[0\]': needs product_id and relevance"
    ):
        convert_esci(path)
    path.write_text('[{"query_id": 1, "query": ')
    with pytest.raises(DataError, match="could not read"):
        convert_esci(path)


def test_duplicate_ids_are_counted(tmp_path):
    rows = [
        [1, "q", "A", "Exact", "first title", 1],
        [1, "q", "A", "Substitute", "first title", 1],  # same pair again
        [2, "r", "A", "Exact", "other title", 1],  # same product id, different product
        [2, "r", "B", "Exact", "", 1],  # no title
    ]
    catalog, tasks, report = convert_esci(_csv(tmp_path / "d.csv", CSV_HEADER, rows))
    assert catalog["A"].title == "first title" and "B" not in catalog
    assert report.dropped["labels: duplicate (query, product) label (first kept)"] == 1
    assert report.dropped["d.csv: duplicate product_id (first kept)"] == 1
    assert report.dropped["d.csv: product without a title"] == 1
    assert report.dropped["labels: product not in the products file"] == 1
    assert {t.id: t.targets for t in tasks} == {"esci-1": {"A": 3.0}, "esci-2": {"A": 3.0}}


def test_bad_source_and_config(tmp_path):
    with pytest.raises(DataError, match="not found"):
        convert_esci(tmp_path / "nope.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no shopping_queries"):
        convert_esci(tmp_path / "empty")
    with pytest.raises(ConfigError):
        convert_esci(tmp_path, EsciConfig(version="medium"))
