"""Rich views: rendered to a recording Console and checked for text and colours."""

from __future__ import annotations

import json
import math

import pytest
from fixtures.fake_run import write_run
from hypothesis import given
from hypothesis import strategies as st
from rich.color import Color
from rich.console import Console

from ospo_mlx.errors import DataError
from ospo_mlx.ui import palette
from ospo_mlx.ui.renderables import (
    SPARK_BLOCKS,
    coalition_table,
    comparison,
    completion_panel,
    credit_shares,
    credit_text,
    format_members,
    segment_table,
    sort_segments,
    sparkline,
    static_views,
)
from ospo_mlx.ui.runreader import RunReader


def render(renderable, width: int = 100) -> str:
    console = Console(record=True, width=width, color_system="truecolor")
    for item in renderable if isinstance(renderable, list) else [renderable]:
        console.print(item)
    return console.export_text()


def rgb(color: Color) -> tuple[int, int, int]:
    return tuple(color.get_truecolor())


# -- sparkline -------------------------------------------------------------------------------
@given(st.lists(st.floats(-1e6, 1e6), max_size=60), st.integers(1, 30))
def test_sparkline_length_and_alphabet(values, width):
    line = sparkline(values, width)
    assert len(line) == min(len(values), width)
    assert set(line) <= set(SPARK_BLOCKS)


def test_sparkline_shape():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == SPARK_BLOCKS
    assert sparkline(list(range(100)), 10) == "".join(sorted(sparkline(list(range(100)), 10)))
    assert sparkline([3, 3, 3], 5) == SPARK_BLOCKS[3] * 3
    assert sparkline([1, math.nan, 2], 5)[1] == " "
    assert sparkline([], 5) == "" and sparkline([1.0], 0) == ""


# -- palette -----------------------------------------------------------------------------------
@given(st.floats(-10, 10), st.floats(0.01, 10))
def test_level_is_antisymmetric_and_bounded(x, scale):
    assert palette.level(-x, scale) == -palette.level(x, scale)
    assert -4 <= palette.level(x, scale) <= 4


@given(st.floats(0, 5), st.floats(0, 5))
def test_level_is_monotone_in_magnitude(a, b):
    lo, hi = sorted((a, b))
    assert palette.level(lo, 1.0) <= palette.level(hi, 1.0)


def test_palette_extremes_are_green_and_red_with_contrasting_text():
    r, g, b = rgb(palette.advantage_style(1.0, 1.0).bgcolor)
    assert g > r + 60 and g > b
    r, g, b = rgb(palette.advantage_style(-1.0, 1.0).bgcolor)
    assert r > g + 60 and r > b
    assert (
        palette.advantage_style(0.01, 1.0).bgcolor is None
    )  # neutral band keeps the terminal's colours
    for bg, fg in palette.POSITIVE + palette.NEGATIVE:  # WCAG-style luminance contrast >= 4.5
        lum = [_luminance(Color.parse(c)) for c in (bg, fg)]
        assert (max(lum) + 0.05) / (min(lum) + 0.05) >= 4.5, (bg, fg)


def _luminance(color: Color) -> float:
    def chan(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = rgb(color)
    return 0.2126 * chan(r) + 0.7152 * chan(g) + 0.0722 * chan(b)


# -- credit text ------------------------------------------------------------------------------
TEXT = "<answer>burr grinder, cheap gift</answer>"
SEGS = [(8, 20), (22, 32)]
OFFSETS = [(0, 8), (8, 13), (13, 20), (20, 21), (21, 27), (27, 32), (32, 41)]
ADVS = [0.0, 0.9, 0.5, 0.0, -0.2, -0.7, 0.0]


def _style_of(text, substring):
    start = text.plain.index(substring)
    styles = [s.style for s in text.spans if s.start <= start < s.end]
    return styles[-1] if styles else None


def test_credit_text_colours_tokens_and_marks_segments():
    text = credit_text(TEXT, OFFSETS, ADVS, SEGS)
    assert text.plain.replace(palette.SEGMENT_MARK, "") == TEXT
    assert text.plain.count(palette.SEGMENT_MARK) == len(SEGS)
    assert text.plain.index(palette.SEGMENT_MARK) == SEGS[0][0]
    most_pos, most_neg = _style_of(text, "burr"), _style_of(text, " gift")
    r, g, _ = rgb(most_pos.bgcolor)
    assert g > r  # green-ish
    r, g, _ = rgb(most_neg.bgcolor)
    assert r > g  # red-ish
    assert _style_of(text, "<answer>").dim  # outside every segment
    assert _style_of(text, "<answer>").bgcolor is None


def test_credit_text_shared_scale_and_highlight():
    weak = credit_text(TEXT, OFFSETS, ADVS, SEGS, scale=100.0)
    assert all(s.style.bgcolor is None for s in weak.spans)  # everything in the neutral band
    hl = credit_text(TEXT, OFFSETS, ADVS, SEGS, highlight="GRINDER", marks=False)
    assert hl.plain == TEXT
    assert _style_of(hl, "grinder").underline
    assert not _style_of(hl, "burr").underline


def test_credit_text_tolerates_no_tokens_or_segments():
    assert credit_text("hello", [], [], []).plain == "hello"
    assert credit_text("", [], [], []).plain == ""


# -- tables -------------------------------------------------------------------------------------
def test_segment_table_sorting_and_shares():
    texts, owen, toks = ["burr grinder", "cheap gift", "stainless"], [0.3, -0.1, 0.1], [2, 2, 1]
    assert sort_segments(texts, owen, toks, "owen") == [0, 2, 1]
    assert sort_segments(texts, owen, toks, "tokens") == [0, 1, 2]
    assert sort_segments(texts, owen, toks, "text") == [0, 1, 2]
    assert sort_segments(texts, owen, toks, "position") == [0, 1, 2]
    with pytest.raises(ValueError, match="sort_by"):
        sort_segments(texts, owen, toks, "size")
    assert credit_shares(owen) == pytest.approx([0.6, -0.2, 0.2])
    out = render(segment_table(texts, owen, toks, sort_by="owen"))
    rows = [line for line in out.splitlines() if "+" in line or "-0.1000" in line]
    assert [r.split("│")[2].strip() for r in rows] == ["burr grinder", "stainless", "cheap gift"]
    assert "+60.0%" in out and "-20.0%" in out and "-0.1000" in out


@given(st.lists(st.floats(0.001, 10), min_size=1, max_size=8))
def test_positive_shares_sum_to_one(owen):
    assert sum(credit_shares(owen)) == pytest.approx(1.0)


def test_coalition_table_and_member_format():
    assert format_members([3, 0, 1, 2, 5]) == "{0-3,5}"
    assert format_members([]) == "{}"
    out = render(
        coalition_table([[0], [0, 1]], ["burr grinder", "burr grinder … cheap"], [0.2, 0.55])
    )
    assert "{0-1}" in out and "burr grinder … cheap" in out and "0.5500" in out
    out = render(
        coalition_table([[0], [1], [0, 1]], ["a", "b", "a … b"], [0.1, 0.2, 0.3], max_rows=2)
    )
    assert "1 more" in out


# -- whole-record views -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("runs") / "demo", steps=2, groups=2, group_size=3)


def test_completion_panel_accepts_a_json_row(run):
    row = json.loads((run / "rollouts.jsonl").read_text().splitlines()[0])
    out = render(completion_panel(row))
    assert "step 1 · group 0 · member 0 (ospo)" in out
    assert f"R {row['reward']:.4f}" in out
    for a, b in row["segments"]:
        assert row["completion"][a:b].split()[0] in out


def test_comparison_shows_grpo_flat_advantage_on_the_same_scale(run):
    rec = RunReader(run).record(1, 0, 1)
    grid = comparison(rec)
    out = render(grid, width=160)
    assert f"GRPO: flat A = {rec.advantage:+.3f}" in out
    grpo_text = grid.columns[1]._cells[1]
    styles = {str(s.style.bgcolor) for s in grpo_text.spans if s.style.bgcolor is not None}
    assert len(styles) == 1  # every GRPO token (inside segments) has one colour
    stacked = render(comparison(rec, stacked=True), width=60)
    assert stacked.index("OSPO") < stacked.index("GRPO")


def test_static_views_default_to_the_last_step_best_member(run):
    reader = RunReader(run)
    out = render(static_views(reader), width=100)
    best = max(reader.members(2, 0), key=lambda r: r.reward)
    assert "esci-ospo-demo" in out and "ospo" in out
    assert f"step 2 · group 0 · member {best.member}" in out
    assert "segments" in out and "coalitions" in out and "v(S)" in out
    with pytest.raises(DataError, match="step 9"):
        static_views(reader, step=9)
    with pytest.raises(DataError, match="no group 5"):
        static_views(reader, step=1, group=5)


def test_credit_check_flags_a_baseline_that_misses_the_query():
    from ospo_mlx.ui.renderables import credit_check

    coalitions = [[], [0], [1], [0, 1]]
    # The old defect: v(empty) = 0 while every single segment already scores the query's 0.8.
    bad = credit_check([0.42, 0.42], coalitions, [0.0, 0.8, 0.8, 0.84]).plain
    assert "baseline misses" in bad and "gap +0.0000" in bad
    good = credit_check([0.01, 0.03], coalitions, [0.8, 0.81, 0.83, 0.84]).plain
    assert "⚠" not in good and "v(∅) 0.8000" in good
    off = credit_check([0.3, 0.3], coalitions, [0.8, 0.81, 0.83, 0.84]).plain
    assert "do not add up" in off
    assert credit_check([0.1], [[0]], [0.5]).plain == ""  # no baseline row: nothing to check
