"""Synthetic generator: determinism, hidden attributes decide relevance, demo set is current."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.data.report import write_dataset
from ospo_mlx.data.schema import load_catalog, load_tasks, to_dict
from ospo_mlx.data.synthetic import CATEGORIES, SyntheticConfig, generate
from ospo_mlx.errors import ConfigError

SMALL = SyntheticConfig(n_products=80, n_train=20, n_test=6, categories=3, pool_size=30, seed=3)


def _dump(products, tasks):
    return [to_dict(p) for p in products], [to_dict(t) for t in tasks]


def test_same_seed_same_data_other_seed_differs():
    a, b = generate(SMALL), generate(SMALL)
    assert _dump(*a[:2]) == _dump(*b[:2])
    other = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert _dump(*other[:2]) != _dump(*a[:2])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), categories=st.integers(1, len(CATEGORIES)))
def test_hidden_attributes_decide_relevance(seed, categories):
    cfg = SyntheticConfig(
        n_products=16 * categories + 7,
        n_train=12,
        n_test=3,
        categories=categories,
        pool_size=40,
        seed=seed,
    )
    products, tasks, report = generate(cfg)
    catalog = {p.product_id: p for p in products}
    intents = report.extra["hidden_intents"]
    assert len({t.query for t in tasks}) == len(tasks)  # distinct queries, no train/test leak
    for task in tasks:
        hidden = intents[task.id]
        # The query never names a hidden attribute: it must be inferred from the context.
        assert hidden["use"] not in task.query and hidden["material"] not in task.query
        for pid, product in catalog.items():
            same_cat = product.category == hidden["category"]
            hits = (product.attributes["use"] == hidden["use"]) + (
                product.attributes["material"] == hidden["material"]
            )
            expected = 0.0 if not same_cat else {2: 3.0, 1: 1.0, 0: 0.0}[hits]
            assert task.targets.get(pid, 0.0) == expected
        assert 3.0 in task.targets.values()  # every query has fully matching products
        assert len(task.pool) == min(cfg.pool_size, len(catalog)) and set(task.targets) <= set(
            task.pool
        )
        # Same-category non-matching products stay in the pool as hard negatives.
        distractors = {p for p, x in catalog.items() if x.category == hidden["category"]} - set(
            task.targets
        )
        assert distractors and distractors <= set(task.pool)


def test_context_phrase_fixes_the_intent():
    """The same context phrase always implies the same hidden intent (so it is learnable)."""
    _, tasks, report = generate(SyntheticConfig(seed=1))
    by_context = {}
    for cat in CATEGORIES:
        for intent in cat.intents:
            for ctx in intent.contexts:
                by_context.setdefault(ctx, set()).add((cat.name, intent.use, intent.material))
    assert all(len(v) == 1 for v in by_context.values())
    for task in tasks:
        ctx = next(c for c in by_context if task.query.endswith(" " + c))
        ((cat, use, material),) = by_context[ctx]
        assert report.extra["hidden_intents"][task.id] == {
            "category": cat,
            "use": use,
            "material": material,
        }


def test_split_counts_and_roundtrip(tmp_path):
    products, tasks, report = generate(SMALL)
    write_dataset(tmp_path, products, tasks, report)
    catalog = load_catalog(tmp_path / "catalog.jsonl")
    train = load_tasks(tmp_path / "train.jsonl", catalog)
    test = load_tasks(tmp_path / "test.jsonl", catalog)
    assert (len(catalog), len(train), len(test)) == (80, 20, 6)
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kept"] == {"catalog products": 80, "train tasks": 20, "test tasks": 6}
    assert summary["options"]["seed"] == 3


@pytest.mark.parametrize(
    "kwargs", [{"n_products": 10}, {"categories": 0}, {"n_train": 10_000}, {"full_gain": 0.0}]
)
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        generate(SyntheticConfig(**kwargs))


def test_demo_set_is_current(repo_root):
    """data/demo/ is exactly what the documented command regenerates."""
    demo = repo_root / "data" / "demo"
    products, tasks, _ = generate(SyntheticConfig(seed=0))
    catalog = load_catalog(demo / "catalog.jsonl")
    loaded = load_tasks(demo / "train.jsonl", catalog) + load_tasks(demo / "test.jsonl", catalog)
    assert [to_dict(p) for p in catalog.values()] == [to_dict(p) for p in products]
    assert [to_dict(t) for t in loaded] == [to_dict(t) for t in tasks]
    assert sum(f.stat().st_size for f in demo.iterdir()) < 1_000_000
