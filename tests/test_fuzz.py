"""Fuzzing: segmenters, token offsets and the data readers on arbitrary and malformed input.

Invariants: segmenters return ordered, non-overlapping, in-bounds spans for any Unicode;
decoded token offsets tile the decoded text; credit weights stay in [0, 1]; the readers
either return valid records or raise a one-line DataError/OspoError, never another exception.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.segment import (
    DEFAULT_ANSWER_TAGS,
    DEFAULT_THINK_TAGS,
    METHODS,
    attributable_regions,
    segment,
)
from ospo_mlx.data.schema import Product, Task, load_catalog, load_tasks
from ospo_mlx.errors import OspoError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that exercises tags, reasoning blocks, punctuation, CJK, combining marks and surrogates'
# neighbours: plain st.text() rarely produces the tag strings the segmenter looks for.
PIECES = st.sampled_from([
    "<answer>", "</answer>", "<think>", "</think>", "<thinking>", "</thinking>", " and ", " with ",
    ", ", "; ", ". ", "! ", "\n", "\n\n", "。", "，", "red shoes", "für", "e\u0301", "🙂", "\u200b",
    "-", " — ", "(", ")", "|", "/", "   ", "\t", "\x00", "\ufffd",
])  # fmt: skip
TEXT = st.lists(st.one_of(PIECES, st.text(max_size=12)), max_size=40).map("".join)


def check_spans(text: str, spans: list[tuple[int, int]]) -> None:
    prev_end = 0
    for s, e in spans:
        assert isinstance(s, int) and isinstance(e, int)
        assert prev_end <= s < e <= len(text), (spans, len(text))
        assert text[s:e].strip(), "a segment is never blank"
        prev_end = e


@FAST
@given(text=TEXT, method=st.sampled_from([m for m in METHODS if m != "regex"]),
       max_segments=st.one_of(st.none(), st.integers(1, 5)),
       max_chars=st.integers(0, 40), min_chars=st.integers(0, 10))  # fmt: skip
# Found by a fresh-clone CI run: the cap merged the text on both sides of a <think> block.
@example(text="</answer><think></think></answer>", method="phrase", max_segments=1,
         max_chars=0, min_chars=0)  # fmt: skip
def test_segmenters_on_arbitrary_unicode(text, method, max_segments, min_chars, max_chars):
    spans = segment(
        text, method, max_segments=max_segments, min_chars=min_chars, max_chars=max_chars
    )
    check_spans(text, spans)
    if max_segments is not None:
        # Segments of separate regions (text around a reasoning block) never merge, so a
        # cap below the number of regions keeps one per region.
        regions = attributable_regions(text, DEFAULT_ANSWER_TAGS, DEFAULT_THINK_TAGS)
        used = {next(r for r, (a, b) in enumerate(regions) if a <= s < b) for s, _ in spans}
        assert len(spans) <= max(max_segments, len(used))
    # Reasoning is never attributed: no span overlaps a closed <think> block.
    start = text.find("<think>")
    end = text.find("</think>", start + 1) if start >= 0 else -1
    if start >= 0 and end >= 0 and "<answer>" not in text:
        assert all(e <= start or s >= end + len("</think>") for s, e in spans)


@FAST
@given(text=TEXT, pattern=st.sampled_from([r",", r"\s+", r"\W+", r"(a|b)*", r"", r"x?"]),
       mode=st.sampled_from(["split", "match"]))  # fmt: skip
def test_regex_segmenter_never_breaks(text, pattern, mode):
    try:
        spans = segment(text, "regex", pattern=pattern, pattern_mode=mode)
    except OspoError:
        return  # an empty pattern is a configuration error, reported as such
    check_spans(text, spans)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "regex"])
def test_segmenters_on_empty_and_huge_inputs(method):
    assert segment("", method) == []
    assert segment("<answer></answer>", method) == []
    huge = ("red running shoes with white soles, for trail runs. " * 4000) + "🙂" * 1000
    spans = segment(f"<answer>{huge}</answer>", method)
    check_spans(f"<answer>{huge}</answer>", spans)
    assert len(spans) > 100


# ----------------------------------------------------------------------------- token offsets


@pytest.fixture(scope="module")
def byte_bpe():
    """The real SmolLM2 byte-level BPE tokenizer (from the tiny test model's directory)."""
    from tokenizers import Tokenizer

    from ospo_mlx.models.load import tiny_model_dir

    tok = Tokenizer.from_file(str(tiny_model_dir() / "tokenizer.json"))
    return tok


def check_offsets(text: str, offsets: list[tuple[int, int]], n: int) -> None:
    assert len(offsets) == n
    pos = 0
    for s, e in offsets:
        assert s == pos and s <= e <= len(text), (offsets, len(text))
        pos = e
    assert pos == len(text), "the offsets tile the whole decoded text"


@settings(max_examples=60, deadline=None)
@given(text=TEXT)
def test_offsets_of_encoded_text_tile_it(byte_bpe, text):
    from ospo_mlx.train.rollout import decode_with_offsets

    ids = byte_bpe.encode(text, add_special_tokens=False).ids
    decode = lambda t: byte_bpe.decode(t, skip_special_tokens=False)  # noqa: E731
    out, offsets = decode_with_offsets(decode, ids)
    assert out == decode(ids)
    check_offsets(out, offsets, len(ids))


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(0, 49151), max_size=30), context=st.integers(1, 6))
def test_offsets_of_random_token_ids(byte_bpe, ids, context):
    """Random ids make invalid UTF-8 byte runs (U+FFFD) and cut characters: offsets still tile."""
    from ospo_mlx.train.rollout import decode_with_offsets

    decode = lambda t: byte_bpe.decode(t, skip_special_tokens=False)  # noqa: E731
    out, offsets = decode_with_offsets(decode, ids, context=context)
    assert out == decode(ids)
    check_offsets(out, offsets, len(ids))


def test_offsets_of_empty_and_huge_completions(byte_bpe):
    from ospo_mlx.train.rollout import decode_with_offsets

    decode = lambda t: byte_bpe.decode(t, skip_special_tokens=False)  # noqa: E731
    assert decode_with_offsets(decode, []) == ("", [])
    text = "<answer>Trail shoes für Regen 🙂, 防水 — with grip.</answer> " * 300
    ids = byte_bpe.encode(text, add_special_tokens=False).ids
    out, offsets = decode_with_offsets(decode, ids)
    assert out == decode(ids) and len(ids) > 3000
    check_offsets(out, offsets, len(ids))


@FAST
@given(
    data=st.data(),
    length=st.integers(0, 60),
    n_tokens=st.integers(0, 25),
    floor=st.floats(0, 1),
)
def test_token_weights_stay_in_unit_interval(data, length, n_tokens, floor):
    cuts = sorted(data.draw(st.lists(st.integers(0, length), min_size=n_tokens, max_size=n_tokens)))
    offsets = list(zip([0, *cuts][:-1] if cuts else [], cuts, strict=True)) if cuts else []
    bounds = sorted(set(data.draw(st.lists(st.integers(0, length), max_size=10))))
    spans = [(a, b) for a, b in zip(bounds[::2], bounds[1::2], strict=False) if a < b]
    phi = np.array(data.draw(st.lists(
        st.floats(-1e6, 1e6, allow_nan=False), min_size=len(spans), max_size=len(spans))))  # fmt: skip
    w = credit.token_weights(spans, np.array(offsets, dtype=np.int64).reshape(-1, 2), phi, floor)
    assert w.shape == (len(offsets),)
    assert np.all(np.isfinite(w)) and np.all((w >= 0) & (w <= 1 + 1e-12))


# ----------------------------------------------------------------------------- readers

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True)
    | st.text(max_size=6),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
CATALOG_ROW = st.dictionaries(
    st.sampled_from(["product_id", "title", "brand", "color", "category", "description",
                     "bullets", "attributes", "junk"]),
    JSON_VALUES, max_size=6,
)  # fmt: skip
TASK_ROW = st.dictionaries(
    st.sampled_from(["id", "kind", "targets", "query", "history", "pool", "split"]),
    JSON_VALUES | st.sampled_from(["query_expansion", "shopper_profile", {"p1": 1.0}, ["p1"]]),
    max_size=7,
)
RAW_LINE = st.one_of(
    st.text(max_size=20),  # not JSON at all
    st.sampled_from(["", "   ", "[1, 2]", "null", '{"product_id": "p1"', "\ufeff{}"]),
)


def _write(path: Path, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.one_of(CATALOG_ROW, RAW_LINE), max_size=6))
def test_catalog_reader_raises_only_user_errors(tmp_path, rows):
    path = tmp_path / "catalog.jsonl"
    _write(path, rows)
    try:
        catalog = load_catalog(path)
    except OspoError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert catalog and all(isinstance(p, Product) for p in catalog.values())
    for pid, p in catalog.items():
        assert isinstance(pid, str) and pid == p.product_id and isinstance(p.title, str)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in p.attributes.items())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.one_of(TASK_ROW, RAW_LINE), max_size=6), with_catalog=st.booleans())
def test_task_reader_raises_only_user_errors(tmp_path, rows, with_catalog):
    path = tmp_path / "tasks.jsonl"
    _write(path, rows)
    catalog = {"p1": Product("p1", "red shoe")} if with_catalog else None
    try:
        tasks = load_tasks(path, catalog)
    except OspoError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert tasks and all(isinstance(t, Task) for t in tasks)
    for t in tasks:
        assert t.kind in ("query_expansion", "shopper_profile") and t.targets
        assert all(isinstance(k, str) and isinstance(v, float) for k, v in t.targets.items())
        if t.kind == "query_expansion":
            assert isinstance(t.query, str)
        if catalog is not None:
            assert set(t.targets) <= set(catalog)


CSV_CELL = st.one_of(
    st.text(max_size=8), st.sampled_from(["E", "S", "C", "I", "", "us", "1", "0", "nan"])
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.lists(st.sampled_from(["query_id", "query", "product_id", "esci_label", "product_title",
                                     "product_locale", "split", "junk"]), min_size=1, max_size=8),
    body=st.lists(st.lists(CSV_CELL, min_size=0, max_size=9), max_size=5),
)  # fmt: skip
def test_esci_csv_reader_raises_only_user_errors(tmp_path, header, body):
    from ospo_mlx.data.esci import EsciConfig, read_csv
    from ospo_mlx.data.report import ConversionReport

    assume(len(set(header)) == len(header))
    path = tmp_path / "esci.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(body)
    try:
        labels, products = read_csv(path, EsciConfig(), ConversionReport(str(path), "esci"))
    except OspoError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert all(isinstance(p, Product) for p in products.values())
    assert all(lab.product_id and lab.query_id for lab in labels)


def test_a_token_that_completes_a_character_and_starts_another_owns_the_first():
    """Review defect: such a byte token got a zero-width span, so it took no segment's credit."""
    from ospo_mlx.train.rollout import decode_with_offsets

    raw = "a防水b".encode()  # 1 + 3 + 3 + 1 bytes
    chunks = [raw[0:2], raw[2:5], raw[5:8]]  # "a"+1/3 of 防 | 2/3 of 防 + 1/3 of 水 | rest
    decode = lambda t: b"".join(chunks[i] for i in t).decode("utf-8", "replace")  # noqa: E731
    for context in (1, 4):
        out, offsets = decode_with_offsets(decode, [0, 1, 2], context=context)
        assert out == "a防水b"
        assert offsets == [(0, 1), (1, 2), (2, 4)]
