"""Ranking metrics: hand-computed cases and brute-force definitions (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.reward import metrics as M


def test_hand_computed_ndcg():
    # Ranking [E, I, S] with targets E=3, S=2, C=1 (C not retrieved).
    targets = [{"a": 3.0, "b": 2.0, "c": 1.0}]
    out = M.evaluate_ids(["ndcg@3", "recall@3", "mrr", "hit@3", "ap"], [["a", "x", "b"]], targets)
    dcg = 3 + 0 + 2 / math.log2(4)
    idcg = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert out["ndcg@3"][0] == pytest.approx(dcg / idcg)
    assert out["recall@3"][0] == pytest.approx(2 / 3)
    assert out["mrr"][0] == 1.0
    assert out["hit@3"][0] == 1.0
    assert out["ap"][0] == pytest.approx((1 / 1 + 2 / 3) / 3)


def test_binary_and_gain_map():
    targets = [{"a": 1.0, "b": 3.0}]
    binary = M.evaluate_ids(["ndcg@2"], [["a", "b"]], targets, binary=True)
    assert binary["ndcg@2"][0] == pytest.approx(1.0)  # both relevant, order does not matter
    graded = M.evaluate_ids(["ndcg@2"], [["a", "b"]], targets)
    assert graded["ndcg@2"][0] < 1.0
    j = M.Judgments(targets, {"a": 0, "b": 1}, gain_map={"3": 1.0, "1": 0.01})
    np.testing.assert_allclose(j.gains(np.array([[1, 0, -1]])), [[1.0, 0.01, 0.0]])


def test_no_relevant_retrieved_and_unreachable_targets():
    out = M.evaluate_ids(
        ["ndcg@10", "recall@10", "mrr"], [["x", "y"], []], [{"a": 3.0}, {"a": 1.0}]
    )
    for v in out.values():
        np.testing.assert_array_equal(v, [0.0, 0.0])
    # A target outside the integer space still counts in the ideal DCG and in recall.
    j = M.Judgments([{"a": 3.0, "zz": 3.0}], {"a": 0, "b": 1})
    res = M.compute(["ndcg@2", "recall@2"], j.gains(np.array([[0, 1]])), j.ideal(2), j.n_relevant)
    assert res["ndcg@2"][0] == pytest.approx(3 / (3 + 3 / math.log2(3)))
    assert res["recall@2"][0] == pytest.approx(0.5)


def test_parse_metric():
    assert M.parse_metric("NDCG@10") == ("ndcg", 10)
    assert M.parse_metric("map") == ("ap", None)
    with pytest.raises(ValueError, match="unknown metric"):
        M.parse_metric("precision@5")


def _brute(ranked, target, k):
    """Textbook definitions, one ranking at a time."""
    ranked = ranked[:k]
    gains = [target.get(p, 0.0) for p in ranked]
    dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
    ideal = sorted((g for g in target.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    rel = [g > 0 for g in gains]
    n_rel = sum(1 for g in target.values() if g > 0)
    first = next((r for r, x in enumerate(rel) if x), None)
    ap = sum(sum(rel[: r + 1]) / (r + 1) for r, x in enumerate(rel) if x) / n_rel if n_rel else 0.0
    return {
        "ndcg": dcg / idcg if idcg else 0.0,
        "recall": sum(rel) / n_rel if n_rel else 0.0,
        "hit": float(any(rel)),
        "mrr": 1.0 / (first + 1) if first is not None else 0.0,
        "ap": ap,
    }


items = st.sampled_from([f"p{i}" for i in range(12)])
case = st.tuples(
    st.lists(items, unique=True, max_size=12),
    st.dictionaries(items, st.sampled_from([0.0, 1.0, 2.0, 3.0]), min_size=1, max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(case, min_size=1, max_size=6), st.integers(1, 12))
def test_matches_brute_force(cases, k):
    ranked = [r for r, _ in cases]
    targets = [t for _, t in cases]
    names = [f"ndcg@{k}", f"recall@{k}", f"hit@{k}", f"mrr@{k}", f"ap@{k}"]
    out = M.evaluate_ids(names, ranked, targets)
    for b, (r, t) in enumerate(cases):
        ref = _brute(r, t, k)
        for name in names:
            assert out[name][b] == pytest.approx(ref[name.split("@")[0]], abs=1e-12), (name, r, t)
