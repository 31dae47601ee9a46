"""`ospo plot`: PNG of training curves and the dependency-free terminal view."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from ospo_mlx.errors import OspoError
from ospo_mlx.plot import (
    SPARK_BLOCKS,
    load_curves,
    plot_png,
    plot_runs,
    read_metrics,
    sparkline,
    terminal_chart,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    root: Path, name: str, algorithm: str, steps: int = 12, keys=None, tail: str = ""
) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"algorithm: {algorithm}\n")
    keys = keys or ("reward", "ndcg@10", "kl", "clip_ratio/region_mean", "time/step")
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s}
        for i, key in enumerate(keys):
            row[key] = 0.1 * s + i + (0.05 if algorithm == "ospo" else 0.0)
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return run


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def render(renderable, width: int = 140) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_png_written_with_expected_size(tmp_path):
    pytest.importorskip("matplotlib")
    a = make_run(tmp_path, "ospo-run", "ospo")
    b = make_run(tmp_path, "grpo-run", "grpo")
    runs, path, notes = plot_runs([a, b], tmp_path / "out" / "curves.png")
    assert path == tmp_path / "out" / "curves.png"
    assert png_size(path) == (1500, 800)
    assert notes == []
    assert [r.label for r in runs] == ["ospo-run (ospo)", "grpo-run (grpo)"]
    small = plot_png(runs, tmp_path / "small.png", width_px=600, height_px=400)
    assert png_size(small) == (600, 400)


def test_terminal_chart_one_and_two_runs(tmp_path):
    a = make_run(tmp_path, "ospo-run", "ospo")
    one = render(terminal_chart([load_curves(a)]))
    for title in ("reward", "NDCG@10", "KL to reference", "clip ratio", "step time"):
        assert title in one
    assert "ospo-run (ospo)" in one
    b = make_run(tmp_path, "grpo-run", "grpo", steps=5)
    two = render(terminal_chart([load_curves(a), load_curves(b)], width=20))
    assert two.count("grpo-run (grpo)") == 5 and two.count("ospo-run (ospo)") == 5
    # increasing curves on a shared range: each sparkline rises; ospo's ends at the top block
    lines = [ln for ln in two.splitlines() if "ospo-run" in ln]
    assert all(SPARK_BLOCKS[-1] in ln for ln in lines)


def test_missing_metrics_and_bad_lines_are_noted(tmp_path):
    a = make_run(
        tmp_path, "a", "ospo", keys=("reward",), tail='not json\n[1, 2]\n{"step": 13, "rew'
    )
    rows, skipped = read_metrics(a)
    assert len(rows) == 12 and skipped == 3
    b = make_run(tmp_path, "b", "grpo", keys=("reward", "kl"))
    runs, path, notes = plot_runs([a, b], png=False)
    assert path is None
    assert any("a (ospo): no ndcg@10, kl, clip_ratio/region_mean, time/step" in n for n in notes)
    assert any("skipped 3 unreadable" in n for n in notes)
    text = render(terminal_chart(runs))
    assert "KL to reference" in text and "NDCG@10" not in text


def test_png_needs_matplotlib_and_runs_need_metrics(tmp_path, monkeypatch):
    a = make_run(tmp_path, "a", "ospo")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(OspoError, match=r"pip install 'ospo\[plot\]'"):
        plot_runs([a], tmp_path / "x.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OspoError, match="no readable steps"):
        load_curves(empty)
    with pytest.raises(OspoError, match="does not exist"):
        load_curves(tmp_path / "nope")


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.integers(1, 60))
def test_sparkline_length_and_levels(values, width):
    lo, hi = min(values), max(values)
    line = sparkline(values, width, lo, hi)
    assert len(line) == min(width, len(values))
    assert set(line) <= set(SPARK_BLOCKS)
    if hi > lo and width >= len(values):
        assert (
            line[values.index(hi)] == SPARK_BLOCKS[-1] and line[values.index(lo)] == SPARK_BLOCKS[0]
        )


def test_cli_plot(tmp_path):
    pytest.importorskip("matplotlib")
    import typer
    from typer.testing import CliRunner

    from cli import plot as cli_plot

    app = typer.Typer()
    cli_plot.register(app)
    app.command("noop")(lambda: None)
    a, b = make_run(tmp_path, "o", "ospo"), make_run(tmp_path, "g", "grpo")
    res = CliRunner().invoke(
        app, ["plot", "--run", str(a), "--compare", str(b), "--out", str(tmp_path / "p.png")]
    )
    assert res.exit_code == 0, res.output
    assert (
        "o (ospo)" in res.output
        and "g (grpo)" in res.output
        and png_size(tmp_path / "p.png") == (1500, 800)
    )
