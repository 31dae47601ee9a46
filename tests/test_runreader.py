"""RunReader: the run directory format, incremental polling, corrupt and partial lines."""

from __future__ import annotations

import json

import pytest
from fixtures.fake_run import append_step, tokenize, write_run

from ospo_mlx.errors import DataError, OspoError
from ospo_mlx.ui.runreader import RolloutRecord, RunReader


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run", steps=2, groups=2, group_size=3)


def test_reads_every_record_indexed_by_step_group_member(run):
    reader = RunReader(run)
    assert reader.step_ids() == [1, 2]
    assert reader.group_ids(1) == [0, 1]
    assert [r.member for r in reader.members(2, 1)] == [0, 1, 2]
    assert len(reader.all_records()) == 12
    assert reader.skipped_lines == 0 and reader.warnings == []
    assert (reader.name, reader.algorithm, reader.model) == (
        "esci-ospo-demo",
        "ospo",
        "SmolLM2-135M-Instruct",
    )
    assert reader.last_step == 2
    assert len(reader.metric_series("reward")) == 2


def test_record_fields_match_the_json_line_and_keep_unknown_keys(run):
    row = json.loads((run / "rollouts.jsonl").read_text().splitlines()[0])
    rec = RunReader(run).record(row["step"], row["group"], row["member"])
    assert rec.completion == row["completion"]
    assert rec.token_offsets == [tuple(o) for o in row["token_offsets"]]
    assert rec.owen == row["owen"]
    assert rec.extra == {"ospo/unpaired_players": 0}
    assert rec.segment_texts == [row["completion"][a:b] for a, b in row["segments"]]
    # segment token counts by brute force over characters
    for (a, b), count in zip(rec.segments, rec.segment_token_counts(), strict=True):
        assert count == sum(
            1 for ta, tb in rec.token_offsets if set(range(ta, tb)) & set(range(a, b))
        )


def test_fixture_tokens_tile_the_completion(run):
    for rec in RunReader(run).all_records():
        assert "".join(rec.completion[a:b] for a, b in rec.token_offsets) == rec.completion
        assert tokenize(rec.completion) == rec.token_offsets


def test_poll_returns_only_appended_lines(run):
    reader = RunReader(run)
    assert not reader.poll().changed
    append_step(run, 3, groups=2, group_size=3)
    result = reader.poll()
    assert [r.step for r in result.new_records] == [3] * 6
    assert result.new_metrics == 1
    assert len(reader.all_records()) == 18
    assert not reader.poll().changed


def test_partial_trailing_line_waits_for_its_newline(run):
    reader = RunReader(run)
    line = (run / "rollouts.jsonl").read_text().splitlines()[0]
    row = json.loads(line)
    row["step"] = 9
    text = json.dumps(row)
    with (run / "rollouts.jsonl").open("a") as fh:
        fh.write(text[:40])
    assert reader.poll().new_records == []
    assert reader.skipped_lines == 0
    with (run / "rollouts.jsonl").open("a") as fh:
        fh.write(text[40:] + "\n")
    assert [r.step for r in reader.poll().new_records] == [9]


def test_finish_counts_a_trailing_half_line(run):
    with (run / "rollouts.jsonl").open("a") as fh:
        fh.write('{"step": 3, "gro')
    reader = RunReader(run)
    assert reader.finish() == ["rollouts.jsonl: trailing incomplete line skipped"]
    assert reader.skipped_lines == 1


def test_corrupt_and_invalid_lines_are_skipped_and_counted(run):
    lines = (run / "rollouts.jsonl").read_text().splitlines(keepends=True)
    bad_span = json.loads(lines[1])
    bad_span["segments"] = [[0, 10_000]]
    lines[1] = json.dumps(bad_span) + "\n"
    lines.insert(3, "{not json\n")
    lines.insert(4, "[1, 2]\n")
    lines.insert(5, json.dumps({"step": 1}) + "\n")
    (run / "rollouts.jsonl").write_text("".join(lines))
    reader = RunReader(run)
    assert reader.skipped_lines == 4
    assert len(reader.all_records()) == 12 - 1
    assert all("corrupt line skipped" in w for w in reader.warnings)
    assert any("outside the completion" in w for w in reader.warnings)
    assert any("missing key" in w for w in reader.warnings)


def test_truncated_file_is_read_again_from_the_start(run):
    reader = RunReader(run)
    lines = (run / "rollouts.jsonl").read_text().splitlines(keepends=True)
    (run / "rollouts.jsonl").write_text(lines[0])
    result = reader.poll()
    assert len(result.new_records) == 1  # re-read, replacing the same key


def test_missing_empty_and_wrong_directories_are_user_errors(tmp_path):
    with pytest.raises(OspoError, match="does not exist"):
        RunReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OspoError, match="not a run directory"):
        RunReader(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OspoError, match="not a directory"):
        RunReader(tmp_path / "file")


def test_run_without_rollouts_yet_is_not_an_error(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("train:\n  algorithm: grpo\n  model: {path: m}\n")
    reader = RunReader(tmp_path / "r")
    assert reader.step_ids() == [] and reader.last_step is None
    assert (reader.algorithm, reader.model, reader.name) == ("grpo", "m", "r")


def test_unknown_record_raises_a_data_error_naming_the_steps(run):
    with pytest.raises(DataError, match="steps present: 1-2"):
        RunReader(run).record(7, 0, 0)


def test_from_dict_defaults_optional_attribution_keys():
    rec = RolloutRecord.from_dict(
        {"step": 1, "group": 0, "member": 2, "completion": "abc", "reward": 0.5, "advantage": -1}
    )
    assert rec.segments == [] and rec.owen == [] and rec.algorithm == "ospo"
    assert rec.length == 3  # characters when no tokens were logged


def test_warmup_steps_show_in_the_header(tmp_path):
    from ospo_mlx.ui.renderables import run_header

    run = tmp_path / "w"
    run.mkdir()
    (run / "config.yaml").write_text("algorithm: ospo\nwarmup: {steps: 30, batch_size: 4}\n")
    reader = RunReader(run)
    assert reader.warmup_steps == 30
    assert "+30-step SFT warm-up" in run_header(reader).plain
    (run / "config.yaml").write_text("algorithm: ospo\nwarmup: {steps: 0}\n")
    assert RunReader(run).warmup_steps == 0
    assert "warm-up" not in run_header(RunReader(run)).plain
    (run / "config.yaml").write_text("algorithm: ospo\nsft: {steps: 12}\n")  # the current name
    assert RunReader(run).warmup_steps == 12
