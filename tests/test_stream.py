"""Streaming converters: byte-identical to the in-memory ones, at small scale; generators; errors."""

from __future__ import annotations

import filecmp
from dataclasses import replace

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from ospo_mlx.data import generate as g
from ospo_mlx.data.esci import EsciConfig, convert_esci
from ospo_mlx.data.esci_stream import stream_esci
from ospo_mlx.data.hm import HmConfig, convert_hm
from ospo_mlx.data.hm_stream import stream_hm
from ospo_mlx.data.report import write_dataset
from ospo_mlx.data.stream import StreamOptions
from ospo_mlx.errors import DataError

FILES = ("catalog.jsonl", "train.jsonl", "test.jsonl", "summary.json")
# Tiny batches, so codes, repeats and histories cross batch boundaries.
SMALL = StreamOptions(batch_rows=997, text_batch_rows=501, csv_block_bytes=1 << 15)


def _same_files(tmp_path, old, new) -> None:
    a, b = tmp_path / "old", tmp_path / "new"
    write_dataset(a, *old)
    write_dataset(b, *new)
    for name in FILES:
        assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.fixture(scope="module")
def hm_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("hm")
    g.write_hm(
        g.HmFilesConfig(articles=400, customers=600, transactions=9000, chunk_rows=2500), out
    )
    # Real-data oddities the generator does not make: an unknown article, a zero-padded id, and a
    # day that comes back after a later one (the converters must sort by date, not file order).
    with (out / "transactions_train.csv").open("a") as fh:
        arts = pacsv.read_csv(out / "articles.csv").column("article_id").to_pylist()
        cust = pacsv.read_csv(out / "customers.csv").column("customer_id")[0].as_py()
        fh.write(f"2019-01-01,{cust},999999999,0.01,1\n")
        fh.write(f"2018-09-20,{cust},0{arts[0]},0.01,2\n")
        fh.write(f"2018-09-20,{cust},{arts[0]},0.01,2\n")
    return out


@pytest.mark.parametrize(
    "cfg",
    [HmConfig(), HmConfig(min_purchases=2, max_history=3, pool_size=17, limit=40, seed=5)],
    ids=["defaults", "options"],
)
@pytest.mark.parametrize("pool_process", [False, True], ids=["pools-here", "pools-in-process"])
def test_hm_stream_is_byte_identical_on_generated_files(tmp_path, hm_files, cfg, pool_process):
    old = convert_hm(hm_files, cfg)
    # Pools drawn in this process, or in a second one (forced: the sample is under the threshold).
    options = replace(SMALL, pool_process_min_tasks=0 if pool_process else -1)
    new = stream_hm(hm_files, cfg, options)
    _same_files(tmp_path, old, new)
    report = old[2]
    assert report.dropped["transactions: article not in articles.csv"] == 1
    assert report.dropped["transactions: repeated row of the same purchase (merged)"] > 0


def test_hm_stream_is_byte_identical_on_the_real_sample(tmp_path, shared_data):
    folder = shared_data / "hm-sample"
    cfg = HmConfig(pool_size=30, max_history=6)
    _same_files(tmp_path, convert_hm(folder, cfg), stream_hm(folder, cfg, SMALL))


def test_esci_stream_is_byte_identical_on_the_real_sample(tmp_path, shared_data):
    """The sample CSV turned into the official parquet pair: both parquet readers agree."""
    rows = pacsv.read_csv(shared_data / "esci-sample" / "esci_products_full.csv")
    folder = tmp_path / "pq"
    folder.mkdir()
    ex = ["example_id", "query", "query_id", "product_id", "product_locale", "esci_label"]
    pq.write_table(rows.select([*ex, "small_version", "large_version"]), folder / g_ex())
    prod = ["product_id", "product_title", "product_description", "product_bullet_point"]
    pq.write_table(
        rows.select([*prod, "product_brand", "product_color", "product_locale"]), folder / g_pr()
    )
    for cfg in (EsciConfig(), EsciConfig(version="all", pool_size=20, seed=2)):
        _same_files(tmp_path, convert_esci(folder, cfg), stream_esci(folder, cfg, SMALL))


def g_ex() -> str:
    return "shopping_queries_dataset_examples.parquet"


def g_pr() -> str:
    return "shopping_queries_dataset_products.parquet"


@pytest.fixture(scope="module")
def esci_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("esci")
    g.write_esci(g.EsciFilesConfig(rows=6000, queries=300, products=5000, chunk_rows=1500), out)
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        EsciConfig(),
        EsciConfig(locale="all", version="large", min_exact=2, max_exact=12, pool_size=9),
        EsciConfig(split="test", limit=20, seed=4),
    ],
    ids=["defaults", "all-locales", "split-limit"],
)
def test_esci_stream_is_byte_identical_on_generated_files(tmp_path, esci_files, cfg):
    _same_files(tmp_path, convert_esci(esci_files, cfg), stream_esci(esci_files, cfg, SMALL))


def test_generated_files_have_the_real_schemas_and_shapes(hm_files, esci_files):
    header = (hm_files / "transactions_train.csv").read_text().splitlines()[0].replace('"', "")
    assert header == "t_dat,customer_id,article_id,price,sales_channel_id"
    arts = pacsv.read_csv(hm_files / "articles.csv")
    assert arts.num_rows == 400 and len(arts.column_names) == 25
    assert arts.column_names[:3] == ["article_id", "product_code", "prod_name"]
    assert arts.column_names[-1] == "detail_desc"
    assert pacsv.read_csv(hm_files / "customers.csv").column_names == [
        "customer_id", "FN", "Active", "club_member_status", "fashion_news_frequency", "age",
        "postal_code",
    ]  # fmt: skip
    tx = pacsv.read_csv(hm_files / "transactions_train.csv", convert_options=pacsv.ConvertOptions(
        column_types={"t_dat": pa.string()}))  # fmt: skip
    dates = tx.column("t_dat").to_pylist()[:9000]
    assert dates == sorted(dates) and len(set(dates)) > 100  # in date order, over many days
    ex = pq.read_table(esci_files / g_ex())
    assert ex.column_names == [
        "example_id", "query", "query_id", "product_id", "product_locale", "esci_label",
        "small_version", "large_version", "split",
    ]  # fmt: skip
    assert ex.num_rows == 6000 and len(set(ex.column("query_id").to_pylist())) == 300
    labels = ex.column("esci_label").to_pylist()
    assert 0.55 < labels.count("E") / len(labels) < 0.75  # real share: 65%
    pairs = list(
        zip(ex.column("query_id").to_pylist(), ex.column("product_id").to_pylist(), strict=True)
    )
    assert len(set(pairs)) == len(pairs)  # a product is labelled once per query
    products = pq.read_table(esci_files / g_pr())
    assert products.num_rows == 5000 and len(set(products.column("product_id").to_pylist())) == 5000
    # Every labelled product exists in the products file, in the query's locale.
    locale = dict(zip(products.column("product_id").to_pylist(),
                      products.column("product_locale").to_pylist(), strict=True))  # fmt: skip
    assert all(locale[p] == loc for p, loc in zip(
        ex.column("product_id").to_pylist(), ex.column("product_locale").to_pylist(), strict=True))  # fmt: skip


def test_generators_are_seeded(tmp_path):
    cfg = g.HmFilesConfig(articles=50, customers=60, transactions=500)
    g.write_hm(cfg, tmp_path / "a")
    g.write_hm(cfg, tmp_path / "b")
    for name in ("articles.csv", "customers.csv", "transactions_train.csv"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)


def _tx(tmp_path, rows: list[str]):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "articles.csv").write_text(
        "article_id,prod_name,product_type_name,product_group_name,colour_group_name,detail_desc\n"
        "108775015,Strap top,Vest top,Garment Upper body,Black,Jersey top.\n"
    )
    (folder / "transactions_train.csv").write_text(
        "t_dat,customer_id,article_id,price,sales_channel_id\n" + "\n".join(rows) + "\n"
    )
    return folder


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["2018-09-20,c1,108775015,0.1,1", "2018-09-20,,108775015,0.1,1"],
         r"row 2, column 'customer_id': value is missing"),
        (["2018-09-20,c1,-5,0.1,1"], r"row 1, column 'article_id': negative article id -5"),
        (["2018-09-20,c1,abc,0.1,1"], r"row 1, column 'article_id': expected an integer"),
    ],
    ids=["missing-customer", "negative-id", "not-a-number"],
)  # fmt: skip
def test_hm_stream_bad_rows_name_the_row_and_column(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        stream_hm(_tx(tmp_path, rows), HmConfig(min_purchases=2))
    with pytest.raises(DataError, match=match):  # the in-memory converter says the same
        convert_hm(tmp_path / "bad", HmConfig(min_purchases=2))


def test_stream_missing_files_and_columns(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        stream_hm(tmp_path / "nope")
    folder = _tx(tmp_path, ["2018-09-20,c1,108775015,0.1,1"])
    (folder / "transactions_train.csv").write_text("t_dat,article_id\n2018-09-20,108775015\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['customer_id'\]"):
        stream_hm(folder)
    with pytest.raises(DataError, match=r"no shopping_queries_dataset_examples\.parquet"):
        stream_esci(tmp_path)


def _asdict_reference(record) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(record).items() if v not in (None, [], {})}


def test_fast_task_dict_equals_asdict(hm_files, esci_files):
    """write_dataset's hand-built task dict is `asdict`'s, key order and empties included."""
    import json

    from ospo_mlx.data.schema import HistoryItem, Task, to_dict

    tasks = convert_hm(hm_files, HmConfig(min_purchases=2))[1][:200]
    tasks += convert_esci(esci_files, EsciConfig(version="all"))[1][:200]
    tasks += [
        Task("a", "query_expansion", {"p": 1.0}, query="q"),  # no pool, no history
        Task("b", "shopper_profile", {"p": 2}, history=[HistoryItem("x")], pool=[]),
        Task("c", "query_expansion", {}, query="", split="test"),
    ]
    for task in tasks:
        fast, ref = to_dict(task), _asdict_reference(task)
        assert json.dumps(fast, ensure_ascii=False) == json.dumps(ref, ensure_ascii=False)


def test_fast_product_dict_equals_asdict(hm_files, esci_files):
    """The hand-built product dict is `asdict`'s, attributes and empty fields included."""
    import json

    from ospo_mlx.data.schema import Product, to_dict

    products = list(convert_hm(hm_files, HmConfig(min_purchases=2))[0].values())[:200]
    products += list(convert_esci(esci_files, EsciConfig(version="all"))[0].values())[:200]
    products += [
        Product("a", "t", attributes={"size": "M", "fit": "slim"}),  # a nested dict
        Product("b", "", brand="", color=None, bullets="x"),  # "" is kept, None dropped
    ]
    assert any(p.attributes for p in products) and any(p.brand for p in products)
    for product in products:
        fast, ref = to_dict(product), _asdict_reference(product)
        assert json.dumps(fast, ensure_ascii=False) == json.dumps(ref, ensure_ascii=False)
        if product.attributes:  # a copy, as asdict's: the record is not aliased
            assert fast["attributes"] is not product.attributes


def _ospo(args: list[str], capsys) -> tuple[int, str, str]:
    """`ospo ARGS` through cli.main.main() in this process."""
    import sys

    from cli.main import main

    old = sys.argv
    sys.argv = ["ospo", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_generate_convert_and_index_end_to_end(tmp_path, capsys):
    import json

    code, out, _ = _ospo(["data", "generate", "hm", "--out", str(tmp_path / "hm"),
                          "--scale", "0.0002"], capsys)  # fmt: skip
    assert code == 0 and "transactions_train.csv (6,358 rows)" in out
    code, out, _ = _ospo(["data", "hm", "--source", str(tmp_path / "hm"), "--out",
                          str(tmp_path / "out"), "--min-purchases", "2", "--quiet"], capsys)  # fmt: skip
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows_read"]["transactions_train.csv"] == 6358
    assert summary["kept"]["train tasks"] + summary["kept"]["test tasks"] > 100
    code, out, _ = _ospo(["index", "build", "--catalog", str(tmp_path / "out" / "catalog.jsonl"),
                          "--out", str(tmp_path / "idx"), "--dtype", "i8", "--json"], capsys)  # fmt: skip
    assert code == 0
    built = json.loads(out.strip().splitlines()[-1])
    assert built["products"] == summary["kept"]["catalog products"] and built["dtype"] == "i8"
    code, _, err = _ospo(["index", "build", "--catalog", str(tmp_path / "out" / "catalog.jsonl"),
                          "--out", str(tmp_path / "idx2"), "--dtype", "q4"], capsys)  # fmt: skip
    assert code == 2 and "index dtype must be one of" in err and "Traceback" not in err


def test_hm_stream_escapes_customer_ids_as_json_dumps(tmp_path):
    """Ids JSON must escape (quote, backslash, control, non-ASCII) give the same bytes both ways."""
    import csv

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "articles.csv").write_text(
        "article_id,prod_name,product_type_name,product_group_name,colour_group_name,detail_desc\n"
        "108775015,Strap top,Vest top,Garment Upper body,Black,Jersey top.\n"
        "108775044,Strap top,Vest top,Garment Upper body,White,Jersey top.\n"
        "110065001,OP T-shirt,Bra,Underwear,Black,Microfibre.\n"
    )
    odd = ['c"1', "c\\2", "c\u00e93", "c\u20ac\U0001f6424", "c\t5", "c\x016", "c/7"]
    with (folder / "transactions_train.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["t_dat", "customer_id", "article_id", "price", "sales_channel_id"])
        for day, art in (("2018-09-20", 108775015), ("2018-09-21", 110065001),
                         ("2018-09-22", 108775044)):  # fmt: skip
            for c in odd:
                out.writerow([day, c, art, 0.01, 1])
    cfg = HmConfig(min_purchases=2, pool_size=3, test_fraction=0.5)
    old = convert_hm(folder, cfg)
    assert [t.id for t in old[1]] == [f"hm-{c}" for c in odd]  # every odd id became a task
    _same_files(tmp_path, old, stream_hm(folder, cfg, SMALL))


def test_hm_line_encoder_drops_an_empty_history_as_to_dict():
    import json

    import numpy as np

    from ospo_mlx.data.hm_lines import HmLineEncoder
    from ospo_mlx.data.schema import HistoryItem, Task, to_dict

    enc = HmLineEncoder(["0000000001", "0000000002"], ["2020-01-01", 'd"x'])
    for rows, days in (([], []), ([1, 0], [1, 0])):
        got = enc.line("k", 1, np.array(rows, int), np.array(days, int), np.array([1, 0]), "test")
        history = [HistoryItem(f"000000000{r + 1}", ["2020-01-01", 'd"x'][d]) for r, d in
                   zip(rows, days, strict=True)]  # fmt: skip
        task = Task("hm-k", "shopper_profile", {"0000000002": 1.0}, history=history,
                    pool=["0000000002", "0000000001"], split="test")  # fmt: skip
        assert got == json.dumps(to_dict(task), ensure_ascii=False)


def _children(expected: int) -> bool:
    """Whether this process has `expected` live children (Linux /proc; True where there is none)."""
    import os
    from pathlib import Path

    if not Path("/proc/self/stat").is_file():
        return True  # macOS: the pools' equality below is still checked
    me = str(os.getpid())
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        n += fields[1] == me and fields[0] != "Z"
    return n == expected


def test_hm_pools_in_a_second_process_are_the_same_across_chunks():
    import numpy as np

    from ospo_mlx.data.hm_lines import hm_pools, hm_pools_in_process

    groups = np.random.default_rng(0).integers(0, 4, size=300)
    targets = np.random.default_rng(1).integers(0, 300, size=23).astype(np.int32)
    cfg = HmConfig(pool_size=12, seed=3)
    here = list(hm_pools(targets, groups, cfg))
    pools = hm_pools_in_process(targets, groups, cfg, chunk=5)  # 23 = 4 full chunks + 3
    there = [next(pools)]
    assert _children(1)  # drawn by a child process
    there += list(pools)
    assert _children(0)  # and it is gone when the pools are
    assert len(there) == 23 and all(np.array_equal(a, b) for a, b in zip(here, there, strict=True))


def test_hm_pool_process_failure_is_raised_not_hung():
    import numpy as np

    from ospo_mlx.data.hm_lines import hm_pools_in_process

    with pytest.raises(RuntimeError, match=r"pool process stopped \(exit code 1\)"):
        list(hm_pools_in_process(np.array([99]), np.zeros(3, dtype=np.int64), HmConfig()))
    assert _children(0)
