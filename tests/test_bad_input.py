"""Bad input: every case of docs/reliability.md gets a one-line error or a counted skip.

CLI cases run `python -m cli train ...` in subprocesses (all started at once, so the file stays
fast) and assert exit code 2, one stderr line starting with `error:`, and no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import numpy as np
import pytest

from ospo_mlx.errors import OspoError

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "tiny.yaml"
CATALOG = REPO / "data" / "demo" / "catalog.jsonl"
TRAIN = REPO / "data" / "demo" / "train.jsonl"


def _tiny_model_copy(root: Path, name: str, edit_config=None, edit_tokenizer=None) -> Path:
    """The cached tiny model, with its config or tokenizer config edited (weights linked)."""
    from ospo_mlx.models.load import tiny_model_dir

    src = tiny_model_dir()
    out = root / name
    out.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (out / f.name).symlink_to(f)
        else:
            shutil.copy(f, out / f.name)
    for fname, edit in (("config.json", edit_config), ("tokenizer_config.json", edit_tokenizer)):
        if edit is not None:
            data = json.loads((out / fname).read_text())
            edit(data)
            (out / fname).write_text(json.dumps(data))
    for extra in ("chat_template.jinja", "chat_template.json"):
        if edit_tokenizer is not None and (out / extra).exists():
            (out / extra).unlink()
    return out


def _cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (extra `ospo train` arguments, a phrase the error line must contain)."""
    (tmp / "bad.yaml").write_text("optim:\n  steps: [1,\n")
    (tmp / "toplist.yaml").write_text("- a\n- b\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "blank.jsonl").write_text("\n\n")
    (tmp / "notjson.jsonl").write_text('{"product_id": "a", "title": "x"}\n{oops\n')
    lost = json.loads(TRAIN.read_text().splitlines()[0])
    lost["targets"] = {"no-such-product": 1.0}
    (tmp / "lost.jsonl").write_text(json.dumps(lost) + "\n")
    no_template = _tiny_model_copy(
        tmp, "no_template", edit_tokenizer=lambda d: d.pop("chat_template", None)
    )
    short = _tiny_model_copy(tmp, "short_context",
                             edit_config=lambda d: d.update(max_position_embeddings=40))  # fmt: skip
    (tmp / "pickled").mkdir()
    (tmp / "pickled" / "config.json").write_text("{}")
    (tmp / "pickled" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    (tmp / "existing" / "checkpoints").mkdir(parents=True)
    (tmp / "existing" / "checkpoints" / "latest").write_text("step_000001\n")
    (tmp / "corrupt" / "checkpoints" / "step_000001").mkdir(parents=True)
    (tmp / "corrupt" / "checkpoints" / "latest").write_text("step_000001\n")
    (tmp / "corrupt" / "checkpoints" / "step_000001" / "state.json").write_text('{"step": 1')
    c = ["--config", str(TINY_YAML)]
    return {
        "malformed yaml": (["--config", str(tmp / "bad.yaml")], "invalid YAML"),
        "yaml not a mapping": (["--config", str(tmp / "toplist.yaml")], "mapping"),
        "missing config": (["--config", str(tmp / "nope.yaml")], "not found"),
        "unknown key": ([*c, "--set", "optim.stesp=3"], "did you mean 'optim.steps'"),
        "mistyped value": ([*c, "--set", "optim.steps=ten"], "optim.steps: expected an integer"),
        "bad choice": ([*c, "--algorithm", "ppo"], "algorithm"),
        "invalid range": ([*c, "--set", "sampling.temperature=0"], "sampling.temperature"),
        "missing data file": ([*c, "--set", f"data.train={tmp / 'none.jsonl'}"], "not found"),
        "empty tasks file": ([*c, "--set", f"data.train={tmp / 'empty.jsonl'}"], "no tasks"),
        "blank tasks file": ([*c, "--set", f"data.train={tmp / 'blank.jsonl'}"], "no tasks"),
        "malformed catalog row": ([*c, "--set", f"data.catalog={tmp / 'notjson.jsonl'}"], "invalid JSON"),
        "targets not in catalog": ([*c, "--set", f"data.train={tmp / 'lost.jsonl'}"], "not in the catalog"),
        "missing model": ([*c, "--model", str(tmp / "no-model")], "not found"),
        "pickle-only model": ([*c, "--model", str(tmp / "pickled")], "pickle"),
        "no chat template": ([*c, "--model", str(no_template)], "chat template"),
        "prompts longer than context": ([*c, "--model", str(short)], "context"),
        "run name escapes runs/": ([*c, "--name", "../../escape", "--set", f"data.catalog={CATALOG}",
                                    "--set", f"data.train={TRAIN}"], "single directory name"),
        "existing run without --resume": ([*c, "--out", str(tmp / "existing")], "already holds"),
        "corrupt checkpoint": ([*c, "--resume", "--out", str(tmp / "corrupt")], "incomplete"),
        "resume without checkpoint": ([*c, "--resume", "--out", str(tmp / "fresh")], "no checkpoint"),
        "batch not divisible by accumulation": (
            [*c, "--set", "optim.gradient_accumulation_steps=3"], "does not divide"),
    }  # fmt: skip


# These run as real `python -m cli` subprocesses (all at once); the others run the same entry
# point, cli.main.main(), in this process, which keeps the file fast on 2 shared cores.
SUBPROCESS_CASES = ("malformed yaml", "unknown key", "targets not in catalog", "no chat template",
                    "run name escapes runs/")  # fmt: skip


def _in_process(args: list[str], cwd: Path, capsys) -> tuple[int, str, str]:
    from cli.main import main

    old_argv, old_cwd = sys.argv, Path.cwd()
    sys.argv = ["ospo", "train", *args]
    os.chdir(cwd)
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, out = {}, {}
    for name, (args, phrase) in _cases(tmp).items():
        args = ["--plain", *args]
        if "--out" not in args and "--name" not in args:
            args += ["--out", str(tmp / "runs" / name.replace(" ", "_").replace("/", ""))]
        cwd = REPO
        if "--name" in args:  # a deep cwd: even without the check nothing lands outside tmp
            cwd = tmp / "deep" / "er"
            cwd.mkdir(parents=True, exist_ok=True)
        if name in SUBPROCESS_CASES:
            cmd = [sys.executable, "-m", "cli", "train", *args]
            procs[name] = (subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), phrase)  # fmt: skip
        else:
            out[name] = (args, cwd, phrase)  # run in-process by the test itself
    for name, (proc, phrase) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        out[name] = (proc.returncode, stdout, stderr, phrase)
    return out


CLI_CASES = [
    "malformed yaml", "yaml not a mapping", "missing config", "unknown key", "mistyped value",
    "bad choice", "invalid range", "missing data file", "empty tasks file", "blank tasks file",
    "malformed catalog row", "targets not in catalog", "missing model", "pickle-only model",
    "no chat template", "prompts longer than context", "run name escapes runs/",
    "resume without checkpoint", "batch not divisible by accumulation",
    "existing run without --resume", "corrupt checkpoint",
]  # fmt: skip


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_bad_input_is_one_error_line(cli_results, case, capsys):
    if case in SUBPROCESS_CASES:
        code, _, stderr, phrase = cli_results[case]
    else:
        args, cwd, phrase = cli_results[case]
        capsys.readouterr()
        code, _, stderr = _in_process(args, cwd, capsys)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-2000:]
    assert code == 2, (code, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert phrase.lower() in lines[0].lower(), lines[0]


def test_every_case_is_in_the_reliability_table():
    table = (REPO / "docs" / "reliability.md").read_text()
    for case in CLI_CASES:
        assert f"| {case} |" in table, case


# ----------------------------------------------------------------------------- library cases


class _FakeEncoder:
    """Stands in for a sentence encoder: the index only needs identity, dim and encode."""

    def __init__(self, name: str, dim: int = 8):
        self.identity = {"name": name, "fingerprint": name}
        self.dim = dim

    def encode(self, texts):
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_index_built_with_another_encoder_is_refused(tmp_path):
    from ospo_mlx.data.schema import load_catalog
    from ospo_mlx.reward.index import CatalogIndex

    catalog = dict(list(load_catalog(CATALOG).items())[:20])
    CatalogIndex.build(catalog, _FakeEncoder("minilm"), tmp_path / "index")
    CatalogIndex.open(tmp_path / "index", _FakeEncoder("minilm"), catalog)  # the same one opens
    with pytest.raises(OspoError, match="built with encoder") as err:
        CatalogIndex.open(tmp_path / "index", _FakeEncoder("other-encoder"), catalog)
    assert "\n" not in str(err.value)


def test_nonfinite_and_flat_rewards_are_counted_not_propagated():
    from ospo_mlx.attribution import credit
    from ospo_mlx.train.trainer import sanitize_rewards, zero_std_groups

    raw = np.array([np.nan, 0.5, np.inf, -np.inf, 0.2, 0.2])
    rewards, bad = sanitize_rewards(raw)
    assert bad == 3 and np.isfinite(rewards).all()
    flat = zero_std_groups(rewards, 2)
    assert flat.tolist() == [False, True, True]  # inf and -inf both became 0
    adv = credit.grpo_advantages(rewards, 2, "group")
    adv[np.repeat(flat, 2)] = 0.0
    assert np.isfinite(adv).all() and adv[4] == adv[5] == 0.0


def test_completions_without_segments_fall_back_to_uniform_credit():
    from ospo_mlx.train.trainer import fallback_weights

    weights = [np.zeros(3), np.array([0.2, 0.8])]
    spans = [[], [(0, 4)]]
    out, count = fallback_weights(spans, weights)
    assert count == 1
    np.testing.assert_array_equal(out[0], np.ones(3))  # the whole sequence advantage, like GRPO
    np.testing.assert_array_equal(out[1], [0.2, 0.8])


def test_missing_answer_tags_are_counted():
    from ospo_mlx.attribution.segment import segment

    # Without tags the whole text is attributed (reward.missing_tags=whole) and the step's
    # `ospo/no_answer_tags` counts it; the trainer test checks the metric end to end.
    assert segment("red shoes with white soles") != []
    assert segment("<answer></answer>") == []


class _StubReward:
    """Rewards with NaN/inf and flat groups, as a broken retriever could produce."""

    name = "stub"

    def score(self, texts, tasks):
        return np.array([np.nan, np.inf, 0.3, 0.3][: len(texts)])

    def metrics(self, texts, tasks):
        return {}

    def coalition_values(self, *args):
        raise AssertionError("flat groups have nothing to attribute")

    def scored(self, text):
        return text, "missing_tags"


def test_counted_skips_are_visible_in_the_metrics(tmp_path, monkeypatch):
    """One real step on the tiny model: every counted case shows up in the metrics row."""
    from ospo_mlx.config import load_config
    from ospo_mlx.train import attribute as attribute_module
    from ospo_mlx.train.trainer import Trainer

    monkeypatch.chdir(REPO)
    cfg = load_config(TINY_YAML, ["optim.steps=1"], **{"run.out": str(tmp_path / "run")})
    trainer = Trainer.from_config(cfg)
    trainer.reward = _StubReward()
    monkeypatch.setattr(attribute_module, "segment", lambda text, config=None: [])
    record = trainer.train_step()
    m = record.metrics
    assert m["reward/nonfinite"] == 2.0  # NaN and inf, replaced by 0
    assert m["frac_reward_zero_std"] == 1.0  # both groups flat: (0, 0) and (0.3, 0.3)
    assert m["ospo/no_segments"] == 4.0  # every completion, each keeps uniform credit
    assert m["ospo/no_answer_tags"] == 4.0  # the random tiny model never writes the tags
    assert m["skipped/prompt_too_long"] == 0.0
    assert m["loss"] == 0.0 and all(r["advantage"] == 0.0 for r in record.rollouts)
    assert all(r["reward"] in (0.0, 0.3) for r in record.rollouts)
    trainer.log.close()


class _FormatZeroReward:
    """Completions 0 and 2 fail the format rule (reward 0); 1 and 3 score by content."""

    name = "stub"

    def __init__(self):
        self.zeroed: set[str] = set()
        self.attributed: list[str] = []

    def score(self, texts, tasks):
        self.zeroed = {texts[0], texts[2]}
        return np.array([0.0, 0.6, 0.0, 0.4])

    def metrics(self, texts, tasks):
        return {}

    def scored(self, text):
        return (None, "unclosed") if text in self.zeroed else (text, "ok")

    def coalition_values(self, responses, segments, masks, tasks):
        self.attributed += list(responses)
        return [m.sum(axis=1) * 0.1 + m[:, 0] * 0.3 for m in masks]  # segment 0 matters most


def test_format_zeroed_completions_get_uniform_credit(tmp_path, monkeypatch):
    """Under OSPO a completion the format rule scored 0 is not attributed: its credit is GRPO's."""
    from ospo_mlx.config import load_config
    from ospo_mlx.train import attribute as attribute_module
    from ospo_mlx.train.trainer import Trainer

    monkeypatch.chdir(REPO)
    cfg = load_config(TINY_YAML, ["optim.steps=1"], **{"run.out": str(tmp_path / "run")})
    trainer = Trainer.from_config(cfg)
    stub = _FormatZeroReward()
    trainer.reward = stub
    halves = lambda text, config=None: [(0, len(text) // 2), (len(text) // 2, len(text))]  # noqa: E731
    monkeypatch.setattr(attribute_module, "segment", halves)
    record = trainer.train_step()
    texts = [r["completion"] for r in record.rollouts]
    assert len(set(texts)) == 4 and all(len(t) >= 2 for t in texts)
    assert record.metrics["ospo/format_zeroed"] == 2.0
    assert record.metrics["ospo/unclosed_answer"] == 2.0
    assert stub.attributed == [texts[1], texts[3]]  # zeroed ones evaluate no coalitions
    for i, row in enumerate(record.rollouts):
        adv = np.asarray(row["token_advantages"])
        assert row["advantage"] != 0.0
        if i in (0, 2):
            np.testing.assert_allclose(adv, row["advantage"])  # uniform, like GRPO
            assert row["coalitions"] == []
        else:
            assert adv.std() > 0  # the first segment earned more credit
            assert np.mean(adv) == pytest.approx(row["advantage"], abs=1e-6)
    trainer.log.close()
