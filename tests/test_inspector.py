"""The Textual inspector driven headless by Pilot at 80x24, and the `ospo inspect` command."""

from __future__ import annotations

import asyncio

import pytest
from fixtures.fake_run import append_step, write_run
from textual.widgets import DataTable, Static, Tree
from typer.testing import CliRunner

from ospo_mlx.ui.inspector import InspectorApp
from ospo_mlx.ui.renderables import sort_segments
from ospo_mlx.ui.runreader import RunReader


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run", steps=2, groups=2, group_size=3)


def drive(app: InspectorApp, script, size=(80, 24)):
    async def main():
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await script(app, pilot)

    asyncio.run(main())


def screen_text(app: InspectorApp) -> str:
    """The screen's characters, from the SVG screenshot (tags stripped, entities decoded)."""
    import html
    import re

    svg = app.export_screenshot()
    return html.unescape(re.sub(r"<[^>]+>", "", svg)).replace("\xa0", " ")


def plain(widget: Static, width: int = 120) -> str:
    """What a Static shows, as plain text."""
    from rich.console import Console

    console = Console(record=True, width=width)
    console.print(widget.content)
    return console.export_text()


def test_opens_on_last_step_and_navigates_with_keys(run):
    reader = RunReader(run)

    async def script(app, pilot):
        assert app.current == (2, 0, 0)
        assert app.query_one("#members", DataTable).row_count == 3
        await pilot.press("j")  # tree: step 2 prompt 0 -> prompt 1
        await pilot.pause()
        assert app.current == (2, 1, 0)
        await pilot.press("k", "k", "k")  # back past "step 2" to step 1's last prompt
        await pilot.pause()
        assert app.current == (1, 1, 0)
        await pilot.press("enter")  # enter on a prompt focuses its completions
        assert app.focused.id == "members"
        await pilot.press("down", "j")
        await pilot.pause()
        assert app.current == (1, 1, 2)
        body = plain(app.query_one("#credit-body", Static))
        assert "OSPO" in body and "GRPO" in body
        await pilot.press("tab")
        assert app.focused.id != "members"

    drive(InspectorApp(reader, follow=False), script)


def test_sort_key_cycles_segment_order(run):
    async def script(app, pilot):
        table = app.query_one("#segment-table", DataTable)
        rec = app.reader.record(*app.current)
        args = (rec.segment_texts, rec.owen, rec.segment_token_counts())
        for expected in ("owen", "tokens", "text", "position"):
            if expected != "owen":
                await pilot.press("s")
                await pilot.pause()
            assert app.sort_by == expected
            order = [int(table.get_row_at(i)[0]) for i in range(table.row_count)]
            assert order == sort_segments(*args, expected)
        assert app.query_one("#views").active == "segments"

    drive(InspectorApp(RunReader(run), follow=False), script)


def test_search_jumps_to_matching_completions(run):
    reader = RunReader(run)
    needle = "Stainless"
    hits = [r.key for r in reader.all_records() if needle.lower() in r.completion]
    assert len(hits) >= 2, "fixture should contain the phrase more than once"

    async def script(app, pilot):
        await pilot.press("slash")
        await pilot.press(*needle)
        await pilot.press("enter")
        await pilot.pause()
        first = app.current
        assert first in hits
        await pilot.press("n")
        await pilot.pause()
        assert app.current in hits and app.current != first
        spans = (
            next(
                r
                for r in app.query_one("#credit-body", Static).content.renderables
                if hasattr(r, "columns")  # the OSPO | GRPO comparison (the check line follows)
            )
            .columns[0]
            ._cells[1]
            .spans
        )
        assert any(s.style.underline for s in spans)  # matches are underlined

    drive(InspectorApp(reader, follow=False), script)


def test_follow_mode_shows_appended_steps_and_corrupt_line_warning(run):
    async def script(app, pilot):
        tree = app.query_one("#steps", Tree)
        assert [n.data for n in tree.root.children] == [1, 2]
        append_step(run, 3, groups=2, group_size=3)
        with (run / "rollouts.jsonl").open("a") as fh:
            fh.write("{this is not json}\n")
        await pilot.pause(0.5)
        assert [n.data for n in tree.root.children] == [1, 2, 3]
        assert "step 3" in str(app.query_one("#header", Static).content)
        assert "1 bad line" in str(app.query_one("#header", Static).content)
        assert any("corrupt line skipped" in n.message for n in app._notifications)

    drive(InspectorApp(RunReader(run), poll_interval=0.1), script)


def test_empty_run_waits_then_fills(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "rollouts.jsonl").touch()

    async def script(app, pilot):
        assert app.current is None
        assert "waiting for rollouts" in plain(app.query_one("#credit-body", Static))
        append_step(run, 1, groups=1, group_size=2)
        await pilot.pause(0.5)
        assert app.current == (1, 0, 0)

    drive(InspectorApp(RunReader(run), poll_interval=0.1), script)


def test_screen_at_80x24_shows_every_pane(run):
    async def script(app, pilot):
        svg = screen_text(app)
        for word in (
            "esci-ospo-demo",
            "step 2",
            "reward",
            "adv",
            "credit",
            "segments",
            "coalitions",
        ):
            assert word in svg, word

    drive(InspectorApp(RunReader(run), follow=False), script)


# -- the command ---------------------------------------------------------------------------------
def _invoke(*args):
    from cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args))


def test_cli_static_prints_views_and_counts_bad_lines(run):
    with (run / "rollouts.jsonl").open("a") as fh:
        fh.write("garbage\n")
    result = _invoke(
        "inspect", str(run), "--static", "--step", "1", "--group", "1", "--member", "2"
    )
    assert result.exit_code == 0, result.output
    assert "step 1 · group 1 · member 2" in result.output
    assert "1 bad line(s) skipped" in result.output and "corrupt line skipped" in result.output
    # stdout is not a TTY under CliRunner: static output without --static too
    assert "coalitions" in _invoke("inspect", str(run)).output


def test_cli_missing_run_is_a_one_line_error(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cli", "inspect", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: run directory") and proc.stderr.count("\n") == 1
