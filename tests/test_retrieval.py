"""RetrievalReward: scores, metrics, coalition values (vectorized vs sequential), text strategies."""

from __future__ import annotations

import numpy as np
import pytest

import ospo_mlx  # noqa: F401
from ospo_mlx.attribution import contiguous_coalitions, segment
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward import BM25Retriever, RetrievalReward, RewardConfig, coalition_text
from ospo_mlx.reward.config import legacy_empty_value
from ospo_mlx.reward.index import CatalogIndex
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


def _phrase_inputs(responses, max_coalitions=8, seed=0):
    from ospo_mlx.attribution.config import AttributionConfig
    from ospo_mlx.attribution.estimators import sample_coalitions

    segs = [segment(r, "phrase") for r in responses]
    rng = np.random.default_rng(seed)
    config = AttributionConfig(max_coalitions=max_coalitions)
    return segs, [sample_coalitions(len(s), config, rng) for s in segs]


def test_stand_in_game_matches_the_reward_at_its_anchors_without_encoding(dense, tasks):
    """v~ equals v at the empty coalition and every singleton (the texts it is built from),
    and reads their pooled sums from the coalition pass: no text is encoded again."""
    from ospo_mlx.attribution.surrogate import surrogate_masks

    reward = RetrievalReward(dense, RewardConfig())
    segs, masks = _phrase_inputs(RESPONSES)
    values = reward.coalition_values(RESPONSES, segs, masks, tasks)
    rng = np.random.default_rng(1)
    wide = [surrogate_masks(m, 1024, rng) for m in masks]
    before = dense.encoder.texts_encoded
    stand_in = reward.surrogate_values(RESPONSES, segs, wide, tasks)
    assert dense.encoder.texts_encoded == before
    for m, v, w, s in zip(masks, values, wide, stand_in, strict=True):
        assert s.shape == (len(w),)
        assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
        lookup = {row.tobytes(): x for row, x in zip(w, s, strict=True)}
        anchors = m.sum(1) <= 1
        np.testing.assert_allclose([lookup[row.tobytes()] for row in m[anchors]], v[anchors])
    assert max(float(np.ptp(s)) for s in stand_in[:3]) > 0  # not a constant game
    # Texts not scored just before are encoded once, on demand.
    fresh = reward.surrogate_values(["<answer>yoga mat, led lamp</answer>"], [[(8, 16), (18, 26)]],
                                    [np.eye(2, dtype=bool)], tasks[:1])  # fmt: skip
    assert dense.encoder.texts_encoded > before and fresh[0].shape == (2,)


def test_stand_in_game_where_it_does_not_apply(dense, tasks, catalog):
    segs, masks = _phrase_inputs(RESPONSES[:1])
    for reward in (
        RetrievalReward(dense, RewardConfig(mode="catalog")),  # no candidate pool to rank
        RetrievalReward(BM25Retriever(catalog), RewardConfig()),  # no pooled states
    ):
        assert reward.surrogate_values(RESPONSES[:1], segs, masks, tasks[:1]) == [None]
    # No query prepended (shopper profiles): v~(empty) is 0, as v(empty) is.
    bare = RetrievalReward(dense, RewardConfig(prepend_query=False))
    got = bare.surrogate_values(RESPONSES[:1], segs, masks, tasks[:1])[0]
    assert got[0] == 0.0 and not masks[0][0].any()


def test_combined_reward_weights_the_stand_in_games(dense, tasks, catalog):
    from ospo_mlx.reward.base import CombinedReward

    segs, masks = _phrase_inputs(RESPONSES[:2])
    a = RetrievalReward(dense, RewardConfig())
    b = RetrievalReward(dense, RewardConfig(k=5))
    b.name = "retrieval5"
    combined = CombinedReward([a, b], [0.5, 2.0])
    got = combined.surrogate_values(RESPONSES[:2], segs, masks, tasks[:2])
    want_a = a.surrogate_values(RESPONSES[:2], segs, masks, tasks[:2])
    want_b = b.surrogate_values(RESPONSES[:2], segs, masks, tasks[:2])
    for g, x, y in zip(got, want_a, want_b, strict=True):
        np.testing.assert_allclose(g, 0.5 * x + 2.0 * y)
    bm25 = RetrievalReward(BM25Retriever(catalog), RewardConfig())
    bm25.name = "bm25"
    mixed = CombinedReward([a, bm25])
    assert mixed.surrogate_values(RESPONSES[:2], segs, masks, tasks[:2]) == [None, None]


@pytest.mark.parametrize("surrogate", ["pooled", "none"])
def test_training_credit_uses_the_stand_in_game(dense, tasks, surrogate):
    """train/attribute.py: completions not enumerated in full get the control variate (and
    the metric counts them); the values equal estimate() with the reward's own stand-in game."""
    import re

    from ospo_mlx.attribution.config import AttributionConfig
    from ospo_mlx.attribution.estimators import estimate
    from ospo_mlx.attribution.segment import SegmenterConfig
    from ospo_mlx.train.attribute import attribute

    long = "<answer>wireless, bluetooth, headphones, noise cancelling, over ear, studio, travel</answer>"
    texts = [long, RESPONSES[1]]
    offsets = [[m.span() for m in re.finditer(r"\S+", t)] for t in texts]
    config = AttributionConfig(max_coalitions=16, surrogate=surrogate)
    reward = RetrievalReward(dense, RewardConfig())
    attr = attribute(
        texts, offsets, tasks[:2], np.array([1.0, -0.5]), np.array([True, True]),
        segmenter=SegmenterConfig(), reward=reward, config=config, rng=np.random.default_rng(0),
    )  # fmt: skip
    assert len(attr.segments[0]) == 7 and len(attr.segments[1]) == 3
    assert attr.exact == [False, True]  # 3 segments: all 8 coalitions fit the budget
    assert attr.surrogate == [surrogate == "pooled", False]
    assert attr.metrics()["ospo/surrogate_values"] == float(surrogate == "pooled")
    game = None
    if surrogate == "pooled":
        from ospo_mlx.attribution.surrogate import stand_in_games

        game = stand_in_games(
            reward, texts[:1], attr.segments[:1], attr.coalitions[:1], tasks[:1], config,
            np.random.default_rng(9),
        )[0]  # fmt: skip
        assert game.complete  # 2^7 = 128 stand-in coalitions fit the default 1024
    want = estimate(attr.coalitions[0], attr.values[0], config, game).phi
    np.testing.assert_allclose(attr.owen[0], want, atol=1e-12)
    masks, values = attr.coalitions[0], attr.values[0]
    full, empty = values[masks.all(1)][0], values[~masks.any(1)][0]
    assert attr.owen[0].sum() == pytest.approx(full - empty)
