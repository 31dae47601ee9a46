"""RetrievalReward: scores, metrics, coalition values (vectorized vs sequential), text strategies."""

from __future__ import annotations

import numpy as np
import pytest

import ospo_mlx  # noqa: F401
from ospo_mlx.attribution import contiguous_coalitions, segment
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward import BM25Retriever, RetrievalReward, RewardConfig, coalition_text
from ospo_mlx.reward.index import CatalogIndex
from ospo_mlx.reward.retrieval import legacy_empty_value
from ospo_mlx.reward.retrievers import DenseRetriever

TITLES = [
    "red running shoes for men", "blue silicone phone case", "usb c fast charger cable",
    "waterproof hiking boots", "wireless bluetooth headphones", "kids winter jacket",
    "aluminum laptop stand", "noise cancelling earbuds", "stainless steel water bottle",
    "yoga mat non slip", "led desk lamp", "mechanical gaming keyboard", "trail running shoes women",
    "over ear studio headphones", "iphone 15 clear case", "hiking backpack 30l",
]  # fmt: skip
RESPONSES = [
    "<answer>wireless bluetooth headphones, noise cancelling, over ear, long battery</answer>",
    "<answer>over ear headphones, studio quality, wired</answer>",
    "<answer>running shoes for men, lightweight, red, breathable mesh</answer>",
    "<think>hmm</think><answer>waterproof boots for hiking; trail; backpack</answer>",
]


@pytest.fixture(scope="module")
def catalog():
    return {f"p{i}": Product(f"p{i}", t) for i, t in enumerate(TITLES)}


@pytest.fixture(scope="module")
def dense(catalog):
    from ospo_mlx.reward.encoder import load_encoder

    enc = load_encoder()
    return DenseRetriever(enc, CatalogIndex.in_memory(catalog, enc))


@pytest.fixture(scope="module")
def tasks(catalog):
    pool = list(catalog)
    return [
        Task("h1", "query_expansion", {"p4": 3, "p7": 2, "p13": 1}, query="headphones", pool=pool),
        Task("h1", "query_expansion", {"p4": 3, "p7": 2, "p13": 1}, query="headphones", pool=pool),
        Task(
            "s1",
            "query_expansion",
            {"p0": 3, "p12": 2},
            query="shoes",
            pool=["p0", "p3", "p12", "p5"],
        ),
        Task(
            "b1", "query_expansion", {"p3": 3, "p15": 1}, query="boots", pool=["p1", "p2"]
        ),  # pool lacks targets
    ]


def _inputs(responses, n_max=64, seed=0):
    segs = [segment(r, "phrase") for r in responses]
    masks = [contiguous_coalitions(len(s), None, n_max, seed) for s in segs]
    return segs, masks


@pytest.mark.parametrize("mode", ["pool", "catalog"])
@pytest.mark.parametrize("strategy", ["drop", "keep-gaps"])
@pytest.mark.parametrize("prepend", [None, False])
def test_vectorized_matches_sequential(dense, tasks, mode, strategy, prepend):
    reward = RetrievalReward(
        dense, RewardConfig(mode=mode, coalition_text=strategy, prepend_query=prepend)
    )
    segs, masks = _inputs(RESPONSES)
    fast = reward.coalition_values(RESPONSES, segs, masks, tasks)
    slow = reward.coalition_values_sequential(RESPONSES, segs, masks, tasks)
    assert [v.shape for v in fast] == [(m.shape[0],) for m in masks]
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert max(v.max() for v in fast) > 0  # not trivially all zeros
    # The pool without targets scores 0 everywhere in pool mode.
    if mode == "pool":
        np.testing.assert_array_equal(fast[3], 0.0)


def test_dedupe_reduces_encoder_work(dense, tasks):
    reward = RetrievalReward(dense, RewardConfig())
    segs, masks = _inputs(RESPONSES[:2])
    # Two completions of the same task, one repeated: each distinct text is encoded once.
    responses = [RESPONSES[0], RESPONSES[0], RESPONSES[1]]
    segs, masks = [segs[0], segs[0], segs[1]], [masks[0], masks[0], masks[1]]
    texts = [
        t
        for r, s, m in zip(responses, segs, masks, strict=True)
        for t in reward.coalition_texts(r, s, m, tasks[0])
    ]
    distinct = {t for t in texts if t is not None}
    enc = dense.encoder
    before_texts, before_calls = enc.texts_encoded, enc.forward_calls
    reward.coalition_values(responses, segs, masks, [tasks[0], tasks[1], tasks[0]])
    assert enc.texts_encoded - before_texts == len(distinct) < len(texts)
    assert enc.forward_calls - before_calls <= 2  # one batched pass (maybe split by token budget)
    before_texts = enc.texts_encoded
    reward.coalition_values_sequential(responses, segs, masks, [tasks[0], tasks[1], tasks[0]])
    assert enc.texts_encoded - before_texts == sum(t is not None for t in texts)


def test_empty_coalition_is_the_query_alone_when_it_is_prepended(dense, tasks, catalog):
    segs, masks = _inputs(RESPONSES[:1])
    prepended = RetrievalReward(dense, RewardConfig())
    bare = RetrievalReward(dense, RewardConfig(prepend_query=False))
    assert not masks[0][0].any()  # row 0 is the empty coalition
    v_query = prepended.coalition_values(RESPONSES[:1], segs, masks, tasks[:1])[0]
    v_bare = bare.coalition_values(RESPONSES[:1], segs, masks, tasks[:1])[0]
    raw = prepended.score(["<answer></answer>"], tasks[:1])
    # v(empty) is scored like every other coalition: the query with no answer after it.
    assert v_query[0] == pytest.approx(raw[0]) and raw[0] > 0
    assert v_bare[0] == 0.0
    profile = Task("u1", "shopper_profile", {"p4": 1.0}, history=[], pool=tasks[0].pool)
    assert prepended.empty_text(profile) is None  # shopper profiles: the empty text is worth 0


def test_inconsistent_empty_value_is_refused():
    with pytest.raises(ConfigError, match="prepended"):
        RewardConfig(empty_value="zero").validate()
    with pytest.raises(ConfigError, match="prepend_query is false"):
        RewardConfig(empty_value="query", prepend_query=False).validate()
    RewardConfig(empty_value="zero", prepend_query=False).validate()  # consistent: allowed
    RewardConfig(empty_value="query", prepend_query=True).validate()
    # An old run's config (zero was the default) still loads, mapped to the consistent rule.
    old = legacy_empty_value({"reward": {"empty_value": "zero", "prepend_query": None}})
    assert old["reward"]["empty_value"] == "auto"


def test_a_segment_without_effect_gets_no_credit(dense, tasks):
    """The review's defect: with v(empty) = 0 and the query prepended, a segment that repeats
    the query took the query's whole score as its credit."""
    task = tasks[0]
    response = f"<answer>{task.query}</answer>"
    reward = RetrievalReward(dense, RewardConfig())
    spans = segment(response, "phrase")
    masks = np.array([[False] * len(spans), [True] * len(spans)])
    values = reward.coalition_values([response], [spans], [masks], [task])[0]
    q = float(reward.score(["<answer></answer>"], [task])[0])
    assert q > 0.1  # the query alone retrieves well, so the old rule's error would be large
    assert abs((values[1] - values[0]) / len(spans)) < 0.05 < q


def test_coalition_text_strategies():
    text = "<answer>red shoes, size 9 and waterproof</answer>"
    spans = [(8, 17), (19, 25), (30, 40)]
    assert [text[s:e] for s, e in spans] == ["red shoes", "size 9", "waterproof"]
    assert coalition_text(text, spans, np.array([1, 0, 1]), "drop") == "red shoes waterproof"
    assert (
        coalition_text(text, spans, np.array([1, 0, 1]), "keep-gaps") == "red shoes, and waterproof"
    )
    assert coalition_text(text, spans, np.array([0, 1, 1]), "keep-gaps") == "size 9 and waterproof"
    assert (
        coalition_text(text, spans, np.array([1, 1, 1]), "keep-gaps")
        == "red shoes, size 9 and waterproof"
    )
    assert coalition_text(text, spans, np.array([0, 0, 0]), "drop") == ""
    with pytest.raises(ConfigError):
        coalition_text(text, spans, np.array([1, 0, 0]), "glue")


def test_score_metrics_and_tags(dense, tasks):
    reward = RetrievalReward(dense, RewardConfig(missing_tags="zero"))
    good, bad = RESPONSES[0], "no tags at all: bluetooth headphones"
    r = reward.score([good, bad], tasks[:2])
    assert r[0] > 0.5 and r[1] == 0.0 and reward.stats["missing_tags"] == 1
    whole = RetrievalReward(dense, RewardConfig(missing_tags="whole"))
    assert whole.score([bad], tasks[:1])[0] > 0.5
    m = whole.metrics([good, RESPONSES[2]], [tasks[0], tasks[2]])
    assert set(m) == {"ndcg@10", "recall@10", "recall@100", "mrr", "hit@10"}
    assert all(v.shape == (2,) and ((v >= 0) & (v <= 1)).all() for v in m.values())
    np.testing.assert_allclose(
        m["ndcg@10"], whole.score([good, RESPONSES[2]], [tasks[0], tasks[2]])
    )


def test_unclosed_answers_score_zero_only_when_asked(dense, tasks):
    cut = RESPONSES[0].split("</answer>")[0]  # the same answer, cut before its closing tag
    strict = RetrievalReward(dense, RewardConfig(unclosed_answer="zero"))
    r = strict.score([RESPONSES[0], cut], tasks[:1] * 2)
    assert r[0] > 0.5 and r[1] == 0.0 and strict.stats["unclosed"] == 1
    assert strict.format_zeroed(cut) and not strict.format_zeroed(RESPONSES[0])
    keep = RetrievalReward(dense, RewardConfig())
    np.testing.assert_allclose(keep.score([cut], tasks[:1]), r[:1])  # scored to the end of text
    assert keep.stats["unclosed"] == 1 and not keep.format_zeroed(cut)


def test_prepend_query_changes_text(dense, tasks):
    on = RetrievalReward(dense, RewardConfig())
    off = RetrievalReward(dense, RewardConfig(prepend_query=False))
    assert on.with_query("x", tasks[0]) == "headphones x" and off.with_query("x", tasks[0]) == "x"


def test_errors(dense, tasks):
    with pytest.raises(ConfigError, match="mode"):
        RewardConfig(mode="web").validate()
    no_pool = Task("n", "query_expansion", {"p0": 1}, query="q")
    with pytest.raises(OspoError, match="no candidate pool"):
        RetrievalReward(dense, RewardConfig()).score(["<answer>x</answer>"], [no_pool])
    bad_pool = Task("n", "query_expansion", {"p0": 1}, query="q", pool=["p0", "zz"])
    with pytest.raises(OspoError, match="not in the catalog"):
        RetrievalReward(dense, RewardConfig()).score(["<answer>x</answer>"], [bad_pool])


def test_bm25_retriever_swaps_in(catalog, tasks):
    bm25 = BM25Retriever(catalog)
    reward = RetrievalReward(bm25, RewardConfig(mode="catalog"))
    assert reward.score([RESPONSES[0]], tasks[:1])[0] > 0.5
    assert bm25.rank(["zzzz qqq"], 5)[0].tolist() == [-1] * 5  # nothing matches: nothing ranked
    segs, masks = _inputs(RESPONSES)
    for cfg in (RewardConfig(mode="catalog"), RewardConfig(mode="pool")):
        r = RetrievalReward(bm25, cfg)
        for a, b in zip(
            r.coalition_values(RESPONSES, segs, masks, tasks),
            r.coalition_values_sequential(RESPONSES, segs, masks, tasks),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, atol=1e-12)


def test_real_esci_sample(shared_data):
    """A few real ESCI queries against their labelled products (pool mode)."""
    import json

    from ospo_mlx.reward import build_reward

    rows = json.loads((shared_data / "esci-sample" / "esci_subset.json").read_text())[:20]
    catalog, tasks = {}, []
    for row in rows:
        for p in row["products"]:
            catalog.setdefault(p["product_id"], Product(p["product_id"], p["product_text"]))
        targets = {
            p["product_id"]: float(p["relevance"]) for p in row["products"] if p["relevance"] > 0
        }
        if targets:
            tasks.append(
                Task(
                    str(row["query_id"]),
                    "query_expansion",
                    targets,
                    query=row["query"],
                    pool=list(catalog),
                )
            )
    reward = build_reward(catalog, RewardConfig(mode="catalog"))
    scores = reward.score([f"<answer>{t.query}</answer>" for t in tasks], tasks)
    assert scores.shape == (len(tasks),) and scores.mean() > 0.2


def test_query_prefixed_is_what_training_and_eval_score():
    from ospo_mlx.data.schema import HistoryItem, Task
    from ospo_mlx.reward.retrieval import query_prefixed

    qe = Task(id="q", kind="query_expansion", targets={"a": 1.0}, query="trail shoes")
    shop = Task(id="s", kind="shopper_profile", targets={"a": 1.0}, history=[HistoryItem("a")])
    assert query_prefixed("waterproof", qe, None) == "trail shoes waterproof"
    assert query_prefixed("waterproof", qe, False) == "waterproof"
    assert query_prefixed("linen dress", shop, None) == "linen dress"
    assert query_prefixed("linen dress", shop, True) == "linen dress"  # no query to prepend
