"""Records and JSONL I/O (schema.py), pools and reports shared by the converters, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.data.pools import build_pool, build_pool_rows, split_keys
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import (
    HistoryItem,
    Product,
    Task,
    load_catalog,
    load_tasks,
    product_text,
    write_jsonl,
)
from ospo_mlx.errors import DataError


def test_product_text_order_and_cut():
    p = Product(
        "1",
        "Shoe",
        brand="Acme",
        color="red",
        category="shoes",
        description="Nice.",
        attributes={"use": "trail"},
    )
    assert (
        product_text(p) == "Shoe | brand: Acme | color: red | category: shoes | use: trail | Nice."
    )
    assert product_text(p, max_chars=8) == "Shoe | b"


def test_roundtrip(tmp_path):
    catalog = [Product("a", "A", attributes={"k": "v"}), Product("b", "B")]
    tasks = [
        Task("t1", "query_expansion", {"a": 3.0}, query="q", pool=["a", "b"]),
        Task(
            "t2",
            "shopper_profile",
            {"b": 1.0},
            history=[HistoryItem("a", "2020-01-01")],
            split="test",
        ),
    ]
    write_jsonl(tmp_path / "c.jsonl", catalog)
    write_jsonl(tmp_path / "t.jsonl", tasks)
    loaded = load_catalog(tmp_path / "c.jsonl")
    assert list(loaded.values()) == catalog
    assert load_tasks(tmp_path / "t.jsonl", loaded) == tasks


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (['{"product_id": "a"}'], r"c\.jsonl:1: missing column 'title'"),
        (['{"product_id": "a", "title": 5}'], "column 'title' should be str"),
        (
            ['{"product_id": "a", "title": "A"}', '{"product_id": "a", "title": "B"}'],
            r":2: duplicate product_id 'a'",
        ),
        (["not json"], r":1: invalid JSON"),
        (["", "  "], "the catalog is empty"),
        (['{"product_id": "a", "title": "A", "size": 3}'], "unknown column"),
    ],
)
def test_catalog_errors(tmp_path, lines, match):
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=match):
        load_catalog(tmp_path / "c.jsonl")


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (
            {"id": "t", "kind": "query_expansion", "targets": {"zz": 1}, "query": "q"},
            r"\['zz'\] not in the catalog",
        ),
        (
            {"id": "t", "kind": "shopper_profile", "targets": {"a": 1}, "history": ["nope"]},
            r"\['nope'\] not in the catalog",
        ),
        ({"id": "t", "kind": "other", "targets": {"a": 1}}, "kind 'other'"),
        ({"id": "t", "kind": "query_expansion", "targets": {}, "query": "q"}, "'targets' is empty"),
        (
            {"id": "t", "kind": "query_expansion", "targets": {"a": "x"}, "query": "q"},
            "gains must be numbers",
        ),
        ({"id": "t", "kind": "shopper_profile", "targets": {"a": 1}}, "non-empty 'history'"),
    ],
)
def test_task_errors(tmp_path, row, match):
    catalog = {"a": Product("a", "A")}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=match):
        load_tasks(tmp_path / "t.jsonl", catalog)


def test_duplicate_task_id(tmp_path):
    row = json.dumps({"id": "t", "kind": "query_expansion", "targets": {"a": 1}, "query": "q"})
    (tmp_path / "t.jsonl").write_text(row + "\n" + row + "\n")
    with pytest.raises(DataError, match=":2: duplicate task id 't'"):
        load_tasks(tmp_path / "t.jsonl")


@settings(max_examples=60, deadline=None)
@given(
    n_catalog=st.integers(1, 60),
    n_labelled=st.integers(0, 20),
    n_related=st.integers(0, 30),
    pool_size=st.integers(1, 50),
    seed=st.integers(0, 1000),
)
def test_build_pool_properties(n_catalog, n_labelled, n_related, pool_size, seed):
    ids = [f"p{i}" for i in range(n_catalog)]
    labelled = ids[: min(n_labelled, n_catalog)]
    related = ids[-n_related:] if n_related else []
    pool = build_pool(
        labelled, pool_size, np.random.default_rng(seed), catalog_ids=ids, related_ids=related
    )
    assert len(pool) == len(set(pool))  # no duplicates
    assert set(labelled) <= set(pool) and set(pool) <= set(ids)  # labelled always kept
    assert len(pool) == max(len(labelled), min(pool_size, n_catalog))
    again = build_pool(
        labelled, pool_size, np.random.default_rng(seed), catalog_ids=ids, related_ids=related
    )
    assert pool == again


def _pool_both_ways(n_catalog, labelled, related, pool_size, seed, fraction, draws=3):
    """build_pool on string ids and build_pool_rows on rows, one Generator each, `draws` pools."""
    ids = [f"p{i}" for i in range(n_catalog)]
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    taken = np.zeros(n_catalog, dtype=bool)
    for _ in range(draws):  # successive pools: the Generators must stay in step
        old = build_pool(
            [ids[i] for i in labelled],
            pool_size,
            rng_a,
            catalog_ids=ids,
            related_ids=[ids[i] for i in related],
            related_fraction=fraction,
        )
        new = build_pool_rows(
            np.array(labelled, dtype=np.int64),
            pool_size,
            rng_b,
            n_catalog=n_catalog,
            related_rows=np.array(related, dtype=np.int64),
            taken=taken,
            related_fraction=fraction,
        )
        assert [ids[i] for i in new] == old
        assert not taken.any()  # the scratch mask is handed back clean


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n_catalog=st.integers(1, 80), pool_size=st.integers(1, 60))
def test_build_pool_rows_equals_build_pool(data, n_catalog, pool_size):
    def rows(min_size):
        return st.lists(st.integers(0, n_catalog - 1), min_size=min_size, unique=True)

    labelled = data.draw(rows(pool_size % 2), label="labelled")  # empty allowed half the time
    related = data.draw(rows(0), label="related")  # any order, may overlap the labelled rows
    fraction = data.draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]), label="fraction")
    seed = data.draw(st.integers(0, 99), label="seed")
    _pool_both_ways(n_catalog, labelled, related, pool_size, seed, fraction)


@pytest.mark.parametrize("n_related", [50, 9_000, 20_000])
def test_build_pool_rows_equals_build_pool_at_catalog_scale(n_related):
    """Past 10,000 candidates numpy's choice switches algorithm (Floyd's instead of a shuffle)."""
    related = list(np.random.default_rng(1).choice(30_000, size=n_related, replace=False))
    _pool_both_ways(30_000, [int(related[0])], related, 100, seed=7, fraction=0.5, draws=20)


@given(n=st.integers(0, 200), frac=st.floats(0, 1), seed=st.integers(0, 100))
def test_split_keys_properties(n, frac, seed):
    keys = [f"k{i}" for i in range(n)]
    test = split_keys(keys, frac, seed)
    assert test <= set(keys) and test == split_keys(keys, frac, seed)
    if n >= 2 and 0 < frac < 1:
        assert 1 <= len(test) <= n - 1 and abs(len(test) - n * frac) <= 1


def test_report_renders_every_count():
    from rich.console import Console

    r = ConversionReport("src", "esci")
    r.read("a.csv", 10)
    r.drop("bad rows", 3)
    r.kept["tasks"] = 7
    console = Console(record=True, width=120)
    console.print(r.rich_table())
    out = console.export_text()
    assert "a.csv" in out and "bad rows" in out and "7" in out
    assert r.to_dict()["dropped"] == {"bad rows": 3} and r.total_dropped == 3


def _ospo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_writes_files_and_reports_errors(tmp_path):
    out = tmp_path / "syn"
    done = _ospo(
        "data",
        "synthetic",
        "--out",
        str(out),
        "--products",
        "40",
        "--train",
        "5",
        "--test",
        "2",
        "--categories",
        "2",
    )
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} == {
        "catalog.jsonl",
        "train.jsonl",
        "test.jsonl",
        "summary.json",
    }
    assert json.loads((out / "summary.json").read_text())["kept"]["train tasks"] == 5
    (tmp_path / "bad.csv").write_text("query,query_id\nq,1\n")
    done = _ospo(
        "data", "esci", "--source", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o")
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "missing column(s)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_find_task_by_id_or_json(tmp_path):
    from ospo_mlx.data.schema import find_task
    from ospo_mlx.errors import OspoError

    catalog = {"p": Product(product_id="p", title="a product")}
    path = tmp_path / "tasks.jsonl"
    write_jsonl(path, [Task(id="a", kind="query_expansion", targets={"p": 1.0}, query="x")])
    assert find_task(catalog, tasks=path, task_id="a").query == "x"
    got = find_task(catalog, task_json='{"id": "j", "kind": "query_expansion", "targets": {"p": 1}, "query": "q"}')
    assert got.id == "j" and got.query == "q"
    with pytest.raises(OspoError, match="task 'b' is not in"):
        find_task(catalog, tasks=path, task_id="b")
    with pytest.raises(OspoError, match="--task-json is not valid JSON"):
        find_task(catalog, task_json="{")
    with pytest.raises(OspoError, match="pass --tasks FILE --task ID"):
        find_task(catalog, tasks=path)
