"""Repeated words are collapsed before retrieval, so repetition earns no reward."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution.segment import after_answer
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.errors import ConfigError
from ospo_mlx.reward import RewardConfig
from ospo_mlx.reward.bm25 import BM25Retriever
from ospo_mlx.reward.repetition import collapse_repeats, repetition, word_key
from ospo_mlx.reward.retrieval import RetrievalReward


@pytest.mark.parametrize(
    "text, expected, removed",
    [
        ("water bottle water bottle water bottle", "water bottle", 4),
        ("mesh, mesh, foam", "mesh, foam", 1),
        (
            "trail running, waterproof gore-tex, trail running",
            "trail running, waterproof gore-tex",
            2,
        ),
        ("Jackets jackets JACKETS.", "Jackets", 2),
        ("red shoes", "red shoes", 0),
        ("", "", 0),
    ],
)
def test_collapse_by_hand(text, expected, removed):
    assert collapse_repeats(text) == (expected, removed)


words = st.lists(st.sampled_from(["mesh", "foam,", "Mesh", "red", "shoes;", "a", ",", "gore-tex"]))


@settings(max_examples=200, deadline=None)
@given(words)
def test_collapse_keeps_each_word_once_and_is_idempotent(tokens):
    text = " ".join(tokens)
    out, removed = collapse_repeats(text)
    keys = [k for k in (word_key(w) for w in out.split()) if k]
    assert len(keys) == len(set(keys))
    assert set(keys) == {k for k in (word_key(w) for w in tokens) if k}
    assert collapse_repeats(out) == (out, 0)
    assert removed == len([k for k in map(word_key, tokens) if k]) - len(keys)


def test_repetition_measures():
    r = repetition("water bottle water bottle")
    assert (r.words, r.distinct_ratio, r.repeated_rate) == (4, 0.5, 0.5)
    assert repetition("").distinct_ratio == 1.0


def test_after_answer():
    assert after_answer("<answer>a</answer> bottle</material")
    assert not after_answer("<answer>a</answer>\n")
    assert not after_answer("<answer>a")


@pytest.fixture(scope="module")
def bm25_reward():
    titles = ["water bottle steel", "water bottle plastic", "glass bottle", "hiking boots"]
    catalog = {f"p{i}": Product(f"p{i}", t) for i, t in enumerate(titles)}
    task = Task("t", "query_expansion", {"p0": 3}, query="bottle", pool=list(catalog))
    return BM25Retriever(catalog), task


def test_repetition_earns_nothing_under_collapse(bm25_reward):
    retriever, task = bm25_reward
    collapse = RetrievalReward(retriever, RewardConfig())
    keep = RetrievalReward(retriever, RewardConfig(repeats="keep"))
    once = "<answer>steel water bottle</answer>"
    many = "<answer>steel steel steel water water bottle bottle</answer>"
    assert collapse.score([many], [task])[0] == pytest.approx(collapse.score([once], [task])[0])
    assert collapse.repeats_removed(many) == 4 and keep.repeats_removed(many) == 0
    # the full coalition scores what the response scores
    spans = [(8, 25), (26, 45)]
    import numpy as np

    full = collapse.coalition_values([many], [spans], [np.ones((1, 2), bool)], [task])[0][0]
    assert full == pytest.approx(collapse.score([many], [task])[0])


def test_bad_repeats_option():
    with pytest.raises(ConfigError, match="repeats"):
        RewardConfig(repeats="squash").validate()
