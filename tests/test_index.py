"""Catalog index: build, reopen, refuse mismatches, one-row and batched search."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest

import ospo_mlx  # noqa: F401
from ospo_mlx.data.schema import Product
from ospo_mlx.errors import OspoError
from ospo_mlx.reward.index import CatalogIndex, top_k

TITLES = [
    "red running shoes for men", "blue silicone phone case", "usb c fast charger cable",
    "waterproof hiking boots", "wireless bluetooth headphones", "kids winter jacket",
    "aluminum laptop stand", "noise cancelling earbuds", "stainless steel water bottle",
    "yoga mat non slip", "led desk lamp", "mechanical gaming keyboard",
]  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    from ospo_mlx.reward.encoder import load_encoder

    return load_encoder()


@pytest.fixture(scope="module")
def catalog():
    return {
        f"p{i}": Product(f"p{i}", t, brand="acme" if i % 2 else None) for i, t in enumerate(TITLES)
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, catalog, encoder):
    out = tmp_path_factory.mktemp("index")
    return out, CatalogIndex.build(catalog, encoder, out)


def test_build_and_reopen(built, catalog, encoder):
    out, idx = built
    meta = json.loads((out / "meta.json").read_text())
    assert (
        meta["dtype"] == "f32" and meta["metric"] == "cos" and meta["product_ids"] == list(catalog)
    )
    again = CatalogIndex.open(out, encoder, catalog)
    np.testing.assert_array_equal(again.vectors, idx.vectors)
    viewed = CatalogIndex.open(out, encoder, view=True)  # memory-mapped
    q = encoder.encode(["bluetooth headphones", "running shoes"])
    rows_a, _ = again.search(q, 3, exact=True)
    rows_b, _ = viewed.search(q, 3, exact=True)
    np.testing.assert_array_equal(rows_a, rows_b)
    assert again.product_ids[rows_a[0, 0]] == "p4" and again.product_ids[rows_a[1, 0]] == "p0"


def test_one_row_search_and_padding(built, encoder):
    _, idx = built
    q = encoder.encode(["headphones"])
    rows, scores = idx.search(q, 5)  # one query: usearch returns Matches, not BatchMatches
    assert rows.shape == (1, 5) and scores.shape == (1, 5)
    exact_rows, _ = CatalogIndex(idx.product_ids, idx.vectors, idx.encoder_identity).search(q, 5)
    np.testing.assert_array_equal(rows, exact_rows)
    big, _ = idx.search(np.vstack([q, q]), 50)  # more than the catalog: capped, never fake keys
    assert big.shape == (2, len(TITLES)) and sorted(big[0].tolist()) == list(range(len(TITLES)))


def test_refuses_mismatched_encoder_and_catalog(built, catalog, encoder, monkeypatch):
    out, _ = built
    other = dict(catalog)
    other["p0"] = Product("p0", "something else")
    with pytest.raises(OspoError, match="different catalog"):
        CatalogIndex.open(out, encoder, other)

    class Fake:
        identity: ClassVar = {"name": "bge-small", "fingerprint": "0123456789abcdef"}

    with pytest.raises(OspoError, match="built with encoder"):
        CatalogIndex.open(out, Fake())
    with pytest.raises(OspoError, match="not an ospo index"):
        CatalogIndex.open(out / "nope", encoder)


def test_top_k_is_deterministic_with_ties():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1], [1, 1, 1, 1, 1]], dtype=np.float64)
    cols, _ = top_k(scores, 3)
    np.testing.assert_array_equal(cols, [[1, 3, 0], [0, 1, 2]])
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=(20, 60)).astype(float)
    cols, _ = top_k(s, 7)
    ref = np.lexsort((np.broadcast_to(np.arange(60), s.shape), -s), axis=1)[:, :7]
    np.testing.assert_array_equal(cols, ref)


def test_in_memory_cache(tmp_path, catalog, encoder):
    a = CatalogIndex.in_memory(catalog, encoder, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    before = encoder.texts_encoded
    b = CatalogIndex.in_memory(catalog, encoder, cache_dir=tmp_path)
    assert encoder.texts_encoded == before
    np.testing.assert_array_equal(a.vectors, b.vectors)


@pytest.mark.parametrize("dtype", ["f16", "i8"])
def test_smaller_dtypes_reopen_and_rank_like_f32(tmp_path, built, catalog, encoder, dtype):
    from ospo_mlx.reward.index import IndexConfig

    _, f32 = built
    CatalogIndex.build(catalog, encoder, tmp_path, IndexConfig(dtype=dtype, batch_size=5))
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["dtype"] == dtype and meta["catalog_hash"] == f32.catalog_hash
    again = CatalogIndex.open(tmp_path, encoder, catalog, view=True)
    assert again.vectors.dtype == np.float32  # pool scores stay exact
    np.testing.assert_allclose(np.asarray(again.vectors), f32.vectors, atol=1e-5)
    q = encoder.encode(["bluetooth headphones", "running shoes", "desk lamp"])
    rows, scores = again.search(q, 3, exact=True)
    ref, ref_scores = f32.search(q, 3, exact=True)
    assert (rows[:, 0] == ref[:, 0]).all()  # the best product survives quantization here
    np.testing.assert_allclose(scores, ref_scores, atol=0.02 if dtype == "f16" else 0.1)
    if dtype == "i8":  # a quarter of f32's vector bytes, plus the same graph
        assert (tmp_path / "index.usearch").stat().st_size < (
            built[0] / "index.usearch"
        ).stat().st_size


def test_streaming_build_from_the_catalog_file(tmp_path, built, catalog, encoder):
    from ospo_mlx.data.schema import write_jsonl
    from ospo_mlx.reward.index import IndexConfig, iter_catalog

    write_jsonl(tmp_path / "catalog.jsonl", catalog.values())
    count, products = iter_catalog(tmp_path / "catalog.jsonl")
    seen = []
    idx = CatalogIndex.build_streaming(
        products, count, encoder, tmp_path / "idx", IndexConfig(batch_size=5),
        progress=lambda what, done, total: seen.append((done, total)),
    )  # fmt: skip
    assert seen == [(5, 12), (10, 12), (12, 12)]  # one call per batch of 5
    _, ref = built
    assert idx.product_ids == ref.product_ids and idx.catalog_hash == ref.catalog_hash
    np.testing.assert_allclose(np.asarray(idx.vectors), ref.vectors, atol=1e-5)
    CatalogIndex.open(tmp_path / "idx", encoder, catalog)  # the hash matches the catalog


def test_build_refuses_bad_options_and_duplicates(tmp_path, catalog, encoder):
    from ospo_mlx.errors import ConfigError
    from ospo_mlx.reward.index import IndexConfig

    with pytest.raises(ConfigError, match="dtype must be one of"):
        CatalogIndex.build(catalog, encoder, tmp_path, IndexConfig(dtype="b1"))
    twice = [*catalog.values(), next(iter(catalog.values()))]
    with pytest.raises(OspoError, match="duplicate product_id 'p0'"):
        CatalogIndex.build_streaming(iter(twice), len(twice), encoder, tmp_path)
    with pytest.raises(OspoError, match="has 12 products, expected 20"):
        CatalogIndex.build_streaming(iter(catalog.values()), 20, encoder, tmp_path / "x")
