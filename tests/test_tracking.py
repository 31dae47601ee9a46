"""run.report_to: TensorBoard event files read back offline, W&B offline runs, the table."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from ospo_mlx.errors import ConfigError
from ospo_mlx.train.tracking import (
    Tracking,
    build_tracking,
    completion_rows,
    credit_text,
    tensorboard_tag,
)


def read_events(log_dir: Path) -> tuple[dict[str, dict[int, float]], dict[int, str]]:
    """Scalars {tag: {step: value}} and text summaries {step: text} from TF event files.

    Reads the TFRecord framing (length, crc, payload, crc) with tensorboardX's protobufs, so the
    check needs neither TensorFlow nor the tensorboard server.
    """
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    texts: dict[int, str] = {}
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {log_dir}"
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            payload = data[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
                elif value.tag.startswith("completions"):
                    texts[event.step] = value.tensor.string_val[0].decode("utf-8")
    return scalars, texts


ROWS = [
    {
        "step": 2, "group": 0, "prompt": "red shoes", "completion": "<answer>red | shoes</answer>",
        "reward": 0.5, "advantage": 1.0, "segments": [[8, 11], [14, 19]], "owen": [0.25, -0.1],
    },
    {
        "step": 2, "group": 0, "prompt": "red shoes", "completion": "x",
        "reward": 0.0, "advantage": -1.0, "segments": [], "owen": [],
    },
]  # fmt: skip


def test_completion_rows_carry_reward_advantage_and_credit():
    rows = completion_rows(ROWS)
    assert rows[0][:6] == [2, 0, "red shoes", "<answer>red | shoes</answer>", 0.5, 1.0]
    assert credit_text(ROWS[0]) == "'red': +0.250 | 'shoes': -0.100"
    assert rows[1][6] == ""


def test_tensorboard_tags():
    assert tensorboard_tag("ndcg@10") == "ndcg_10"
    assert tensorboard_tag("clip_ratio/low_mean") == "clip_ratio/low_mean"
    assert tensorboard_tag("time/step") == "time/step"


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboardX")
    tracking = build_tracking(["tensorboard"], tmp_path, name="t", config={}, every=2)
    assert tracking is not None
    tracking.metrics({"step": 1, "reward": 0.25, "clip_ratio/low_mean": 0.0, "kl": float("nan")})
    tracking.rollouts([{**r, "step": 1} for r in ROWS])  # step 1: not a table step
    tracking.metrics({"step": 2, "reward": 0.5, "clip_ratio/low_mean": 0.125, "kl": 0.5})
    tracking.rollouts(ROWS)
    tracking.close()
    scalars, texts = read_events(tmp_path / "tensorboard")
    assert scalars["reward"] == {1: 0.25, 2: 0.5}
    assert scalars["clip_ratio/low_mean"] == {1: 0.0, 2: 0.125}
    assert scalars["kl"] == {2: 0.5}  # a NaN is left out (as metrics.jsonl writes null)
    assert "step" not in scalars
    assert set(texts) == {2}
    assert "red shoes" in texts[2] and "'red': +0.250" in texts[2] and "red \\| shoes" in texts[2]


def test_wandb_offline_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'ospo[track]')")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = build_tracking(["wandb"], tmp_path, name="t", config={"optim": {"steps": 1}})
    assert tracking is not None
    tracking.metrics({"step": 1, "reward": 0.5})
    tracking.rollouts([{**r, "step": 10} for r in ROWS])
    tracking.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb")), "the offline run log is missing"


def test_missing_package_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"tensorboard needs the tensorboardX package; pip"):
        build_tracking(["tensorboard"], tmp_path, name="t", config={})
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"wandb needs the wandb package"):
        build_tracking(["wandb"], tmp_path, name="t", config={})
    assert build_tracking(["none"], tmp_path, name="t", config={}) is None
    assert build_tracking([], tmp_path, name="t", config={}) is None


def test_tables_every_n_steps_and_switch():
    class Spy:
        def __init__(self):
            self.tables, self.metrics, self.closed = [], [], False

        def log_metrics(self, step, metrics):
            self.metrics.append((step, metrics))

        def log_completions(self, step, rows):
            self.tables.append((step, len(rows)))

        def close(self):
            self.closed = True

    spy, off = Spy(), Spy()
    on_tracking, off_tracking = Tracking([spy], every=3), Tracking([off], log_completions=False)
    for step in range(1, 8):
        for t in (on_tracking, off_tracking):
            t.metrics({"step": step, "reward": step / 10, "algorithm": "ospo"})
            t.rollouts([{**r, "step": step} for r in ROWS])
    on_tracking.close()
    assert spy.tables == [(3, 2), (6, 2)] and off.tables == []
    assert spy.metrics[0] == (1, {"reward": 0.1})  # non-numeric values stay in metrics.jsonl
    assert spy.closed


def test_report_to_config_validation(repo_root):
    from ospo_mlx.config import load_config

    cfg = load_config(repo_root / "configs" / "tiny.yaml", ["run.report_to=tensorboard,wandb"])
    assert cfg.run.report_to == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"run.report_to: 'mlflow' is not one of"):
        load_config(repo_root / "configs" / "tiny.yaml", ["run.report_to=mlflow"])
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        load_config(repo_root / "configs" / "tiny.yaml", ["run.report_to=[none, wandb]"])
