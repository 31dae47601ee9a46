"""Segmenters: invariants on arbitrary Unicode, answer/think handling, each method's rules."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution.segment import (
    METHODS,
    SegmenterConfig,
    answer_span,
    group_spans,
    scored_answer,
    segment,
    segment_texts,
    think_regions,
)
from ospo_mlx.errors import ConfigError

SETTINGS = settings(max_examples=80, deadline=None)

# Text built from words, punctuation, tags and arbitrary Unicode, so tags and delimiters occur.
pieces = st.one_of(
    st.text(max_size=8),
    st.sampled_from(
        [
            " ",
            ", ",
            ". ",
            "\n",
            " and ",
            " with ",
            "; ",
            "!",
            "。",
            "、",
            "<answer>",
            "</answer>",
            "<think>",
            "</think>",
            "<thinking>",
            "</thinking>",
            "<ANSWER>",
            "shoes",
            "red",
            "é",
        ]
    ),
)
texts = st.lists(pieces, max_size=25).map("".join)


def _punct_only(s: str) -> bool:
    return all(c.isspace() or unicodedata.category(c).startswith("P") for c in s)


def check_invariants(text: str, spans: list[tuple[int, int]]) -> None:
    prev_end = 0
    for s, e in spans:
        assert 0 <= prev_end <= s < e <= len(text)  # ordered, non-overlapping, non-empty
        prev_end = e
        piece = text[s:e]
        assert not piece[0].isspace() and not piece[-1].isspace()
        assert not _punct_only(piece)
    holes = think_regions(text)
    for s, e in spans:
        assert all(e <= hs or s >= he for hs, he in holes)  # never in a think block
    region = answer_span(text)
    if region is not None:
        assert all(region[0] <= s and e <= region[1] for s, e in spans)


@SETTINGS
@given(texts, st.sampled_from(["phrase", "sentence", "word"]))
def test_invariants_on_arbitrary_text(text, method):
    check_invariants(text, segment(text, method))


@SETTINGS
@given(st.text(), st.sampled_from(["phrase", "sentence", "word"]))
def test_invariants_on_arbitrary_unicode(text, method):
    check_invariants(text, segment(text, method))


@SETTINGS
@given(texts, st.integers(1, 40), st.integers(0, 12), st.integers(1, 6))
def test_phrase_limits(text, max_chars, min_chars, max_segments):
    spans = segment(text, "phrase", max_chars=max_chars, min_chars=min_chars)
    check_invariants(text, spans)
    assert all(e - s <= max_chars for s, e in spans)
    capped = segment(text, "phrase", max_segments=max_segments)
    check_invariants(text, capped)
    assert len(capped) <= max_segments
    # Capping only merges: the covered extent is unchanged.
    full = segment(text, "phrase")
    if full:
        assert (capped[0][0], capped[-1][1]) == (full[0][0], full[-1][1])


@SETTINGS
@given(texts, st.sampled_from([r"\s*\|\s*", r",", r"\d+", r"(?=x)"]), st.booleans())
def test_regex_invariants(text, pattern, match):
    mode = "match" if match else "split"
    check_invariants(text, segment(text, "regex", pattern=pattern, pattern_mode=mode))


def test_phrase_rules():
    text = "women's running shoes with arch support for flat feet under $100"
    assert segment_texts(text, segment(text)) == [
        "women's running shoes",
        "with arch support",
        "for flat feet",
        "under $100",
    ]
    text = "Red dress, size M; cotton and linen blend. For summer!"
    assert segment_texts(text, segment(text)) == [
        "Red dress",
        "size M",
        "cotton",
        "and linen blend",
        "For summer",
    ]
    # Short fragments merge into their neighbour ("a, b" -> one segment).
    assert segment_texts("a, b with cd", segment("a, b with cd", min_chars=3)) == [
        "a, b",
        "with cd",
    ]
    # "of" binds ("pair of socks" stays whole); long phrases are cut at whitespace.
    assert segment_texts("pair of socks", segment("pair of socks")) == ["pair of socks"]
    long = "word " * 30
    assert all(e - s <= 20 for s, e in segment(long, max_chars=20))


def test_sentence_word_regex_methods():
    text = "Blue jeans. Slim fit!\nSize 32? ok"
    assert segment_texts(text, segment(text, "sentence")) == [
        "Blue jeans",
        "Slim fit",
        "Size 32",
        "ok",
    ]
    assert segment_texts("3.5 inch heels", segment("3.5 inch heels", "sentence")) == [
        "3.5 inch heels"
    ]
    assert segment_texts("a  b,\tc", segment("a  b,\tc", "word")) == ["a", "b", "c"]
    text = "red | blue || green"
    assert segment_texts(text, segment(text, "regex", pattern=r"\|")) == ["red", "blue", "green"]
    assert segment_texts(text, segment(text, "regex", pattern=r"\w+", pattern_mode="match")) == [
        "red",
        "blue",
        "green",
    ]


def test_answer_and_think_tags():
    text = "<think>maybe shoes, and socks</think> <answer> red shoes with laces </answer> bye"
    spans = segment(text)
    assert segment_texts(text, spans) == ["red shoes", "with laces"]
    s, e = answer_span(text)
    assert text[s:e] == " red shoes with laces "
    # Case-insensitive tags, custom tags, no tags at all.
    assert segment_texts("<ANSWER>blue</Answer>", segment("<ANSWER>blue</Answer>")) == ["blue"]
    custom = "[q] hats [/q] not this"
    assert segment_texts(custom, segment(custom, answer_tags=("[q]", "[/q]"))) == ["hats"]
    assert answer_span("no tags here") is None
    assert answer_span("<answer>x</answer>", None) is None
    # Unclosed answer: runs to the end; unclosed think: never attributed.
    assert segment_texts("<answer>hat and scarf", segment("<answer>hat and scarf")) == [
        "hat",
        "and scarf",
    ]
    assert segment("<think>still thinking about boots") == []
    # The chat template opened the think block: everything before </think> is reasoning.
    assert segment_texts("hmm boots</think>sandals", segment("hmm boots</think>sandals")) == [
        "sandals"
    ]
    # An answer tag inside a think block is not the answer.
    text = "<think>draft <answer>bad</answer></think><answer>good</answer>"
    assert segment_texts(text, segment(text)) == ["good"]
    # <thinking> blocks are excluded when no answer tags exist.
    text = "<thinking>x y z</thinking>final words"
    assert segment_texts(text, segment(text, "word")) == ["final", "words"]


@pytest.mark.parametrize(
    ("text", "missing", "unclosed", "expected", "status"),
    [
        ("think <answer> trail shoes </answer> bye", "zero", "zero", "trail shoes", "ok"),
        ("<answer>a</answer> then <answer>b</answer>", "zero", "zero", "a", "ok"),
        (
            "<think><answer>draft</answer></think><answer>final</answer>",
            "zero",
            "zero",
            "final",
            "ok",
        ),
        ("truncated <answer>waterproof trail", "zero", "keep", "waterproof trail", "unclosed"),
        ("truncated <answer>waterproof trail", "whole", "zero", None, "unclosed"),
        ("no tags here", "whole", "zero", "no tags here", "missing_tags"),
        ("<think>why</think> no tags", "whole", "keep", "no tags", "missing_tags"),
        ("no tags here", "zero", "keep", None, "missing_tags"),
        ("<think><answer>only a draft</answer></think>", "zero", "keep", None, "missing_tags"),
    ],
)
def test_scored_answer_rules(text, missing, unclosed, expected, status):
    assert scored_answer(text, missing_tags=missing, unclosed_answer=unclosed) == (expected, status)


def test_scored_answer_without_tags_and_bad_policies():
    assert scored_answer("<answer>x</answer>", None) == ("<answer>x</answer>", "ok")
    with pytest.raises(ConfigError, match="unclosed_answer"):
        scored_answer("x", unclosed_answer="drop")
    with pytest.raises(ConfigError, match="missing_tags"):
        scored_answer("x", missing_tags="drop")


@SETTINGS
@given(texts, st.sampled_from(["whole", "zero"]), st.sampled_from(["keep", "zero"]))
def test_scored_answer_agrees_with_answer_span(text, missing, unclosed):
    """The scored text is the attributed answer span; None exactly where a zero policy applies."""
    got, status = scored_answer(text, missing_tags=missing, unclosed_answer=unclosed)
    span = answer_span(text)
    assert (span is None) == (status == "missing_tags")
    zeroed = (status == "missing_tags" and missing == "zero") or (
        status == "unclosed" and unclosed == "zero"
    )
    assert (got is None) == zeroed
    if span is not None and got is not None:
        assert got == text[span[0] : span[1]].strip()
    if status == "unclosed":
        assert span[1] == len(text)


def test_empty_and_degenerate_text():
    for method in ("phrase", "sentence", "word"):
        assert segment("", method) == []
        assert segment("   \n\t ", method) == []
        assert segment("...!?", method) == []
        assert segment("<answer></answer>", method) == []
    assert segment("nodelimiters") == [(0, 12)]
    assert segment("🙂") == [(0, 1)]


def test_config_and_errors():
    cfg = SegmenterConfig(method="word")
    assert segment("a b", config=cfg) == [(0, 1), (2, 3)]
    assert segment("a b", "sentence", config=cfg) == [(0, 3)]  # method overrides config
    assert set(METHODS) == {"phrase", "sentence", "word", "regex"}
    with pytest.raises(ConfigError, match="unknown segmentation method"):
        segment("x", "clause")
    with pytest.raises(ConfigError, match="needs a pattern"):
        segment("x", "regex")
    with pytest.raises(ConfigError, match="invalid segmentation pattern"):
        segment("x", "regex", pattern="(")
    with pytest.raises(ConfigError, match="unknown segmenter option"):
        segment("x", max_len=3)
    with pytest.raises(ConfigError):
        segment("x", max_segments=0)


def test_group_spans_by_sentence():
    text = "Red shoes with laces. Blue socks for winter and summer."
    phrases = segment(text, "phrase")
    unions = group_spans(phrases, segment(text, "sentence"))
    assert unions == [[0, 1], [2, 3, 4]]
    assert sorted(i for u in unions for i in u) == list(range(len(phrases)))


def test_real_product_texts(shared_data):
    """Real ESCI queries and product titles: invariants hold and phrases cover the words."""
    import json

    rows = json.loads((shared_data / "esci-sample" / "esci_subset.json").read_text())[:60]
    texts = [r["query"] for r in rows] + [
        p["product_text"] for r in rows for p in r["products"][:3]
    ]
    n_multi = 0
    for text in texts:
        for method in ("phrase", "sentence", "word"):
            spans = segment(text, method)
            check_invariants(text, spans)
        phrases = segment(f"<answer>{text}</answer>", "phrase")
        n_multi += len(phrases) > 1
        # Only separators are dropped: every letter and digit lies inside a phrase.
        covered = {i - len("<answer>") for s, e in phrases for i in range(s, e)}
        assert all(i in covered for i, c in enumerate(text) if c.isalnum())
    assert n_multi > len(texts) // 4  # phrases actually split real titles
