"""Untrusted files: no pickle anywhere, safe YAML, path containment, shape checks on adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
from test_policy import tiny_llama

from ospo_mlx import safety
from ospo_mlx.config import LoraConfig
from ospo_mlx.errors import DataError, OspoError
from ospo_mlx.train.checkpoint import save_adapters
from ospo_mlx.train.policy import adapter_config, adapter_weights, apply_lora, lora_modules

REPO = Path(__file__).resolve().parents[1]


def python_files() -> list[Path]:
    return sorted([*(REPO / "ospo_mlx").rglob("*.py"), *(REPO / "cli").rglob("*.py")])


def test_codebase_never_unpickles():
    problems = safety.audit_source(python_files())
    assert problems == [], "\n".join(problems)


def test_audit_finds_planted_unsafe_loads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport numpy as np\nx = np.load('a.npy')\ny = np.load('b.npy', allow_pickle=False)\n"
        "import torch\nz = torch.load('w.pt')\nimport yaml\nc = yaml.load(open('c'))\n"
        "tok = AutoTokenizer.from_pretrained('m', trust_remote_code=True)\n"
    )
    found = safety.audit_source([bad])
    kinds = sorted(p.split(": ", 1)[1] for p in found)
    assert kinds == sorted([
        "pickle import", "np.load without allow_pickle=False", "torch.load",
        "unsafe YAML loader", "hard-coded remote code trust",
    ])  # fmt: skip
    assert any(p.endswith(":3: np.load without allow_pickle=False") for p in found)


def test_yaml_python_tags_are_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"a: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(DataError, match="invalid"):
        safety.load_yaml(evil, "config")
    assert not marker.exists()
    # The training config loader refuses it the same way (one line, no execution).
    from ospo_mlx.config import load_config

    with pytest.raises(OspoError):
        load_config(evil)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl", ".npy", ".npz"])
def test_pickle_formats_are_refused(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(DataError, match="pickle"):
        safety.load_tensors(path)


def test_corrupt_and_truncated_safetensors_are_refused(tmp_path):
    good = tmp_path / "good.safetensors"
    mx.save_safetensors(str(good), {"w": mx.arange(64, dtype=mx.float32)})
    assert np.array(safety.load_tensors(good)["w"]).sum() == sum(range(64))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-40])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    for path in (cut, junk):
        with pytest.raises(DataError, match="corrupt or truncated"):
            safety.load_tensors(path)
    with pytest.raises(DataError, match="not found"):
        safety.load_tensors(tmp_path / "missing.safetensors")
    with pytest.raises(DataError, match=r"\.safetensors"):
        safety.load_tensors(tmp_path / "weights.onnx")


def test_model_dir_with_only_pickle_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="pickle weights"):
        safety.check_model_dir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert safety.check_model_dir(tmp_path) == tmp_path
    (tmp_path / "config.json").unlink()
    with pytest.raises(DataError, match=r"config\.json"):
        safety.check_model_dir(tmp_path)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "sub/../../.."])
def test_paths_cannot_escape_their_root(tmp_path, name):
    with pytest.raises(OspoError):
        safety.inside(tmp_path / "out", name)


def test_symlinks_out_of_the_root_are_refused(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(OspoError, match="resolves outside"):
        safety.inside(root, "link/secret.txt")
    assert safety.inside(root, "sub/file.txt") == root / "sub" / "file.txt"


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "", "x\\y"])
def test_run_names_are_single_components(name):
    with pytest.raises(OspoError, match="single directory name"):
        safety.check_run_name(name)
    assert safety.check_run_name("esci-ospo_1") == "esci-ospo_1"


def test_export_writes_only_inside_out(tmp_path):
    from ospo_mlx.export.paths import safe_path

    for name in ("../x.json", "/tmp/x.json"):
        with pytest.raises(OspoError):
            safe_path(tmp_path, name)
    assert safe_path(tmp_path, "a/b.json") == tmp_path / "a" / "b.json"


# ----------------------------------------------------------------------------- adapter shapes


def _trained_adapters(tmp_path: Path, rank: int = 4) -> Path:
    model = tiny_llama(0)
    lora = LoraConfig(rank=rank)
    apply_lora(model, lora, seed=0)
    for _, layer in lora_modules(model):
        layer.lora_b = mx.full(layer.lora_b.shape, 0.01)
    out = tmp_path / f"adapters_r{rank}"
    save_adapters(out, adapter_weights(model), adapter_config(model, lora))
    return out


def _other_base(hidden: int = 32):
    from mlx_lm.models import llama

    args = llama.ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=3,
                           intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=97)  # fmt: skip
    return llama.Model(args)


def test_adapters_for_another_base_are_refused_before_loading(tmp_path):
    adapters = _trained_adapters(tmp_path)
    with pytest.raises(DataError, match="expects"):
        safety.load_adapters_checked(_other_base(), adapters)
    # On the right base they load and change the output exactly like mlx-lm's loader.
    from mlx_lm.tuner.utils import load_adapters

    ours = safety.load_adapters_checked(tiny_llama(0), adapters)
    theirs = load_adapters(tiny_llama(0), str(adapters))
    tokens = mx.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(np.array(ours(tokens)), np.array(theirs(tokens)), atol=1e-6)
    assert not np.allclose(np.array(ours(tokens)), np.array(tiny_llama(0)(tokens)))


def test_adapters_with_wrong_rank_or_bad_config_are_refused(tmp_path):
    adapters = _trained_adapters(tmp_path, rank=4)
    config = json.loads((adapters / "adapter_config.json").read_text())
    config["lora_parameters"]["rank"] = 8  # the tensors say 4
    (adapters / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="shape"):
        safety.load_adapters_checked(tiny_llama(0), adapters)
    (adapters / "adapter_config.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid adapter config"):
        safety.load_adapters_checked(tiny_llama(0), adapters)
    (adapters / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "full"}))
    with pytest.raises(DataError, match="not supported"):
        safety.load_adapters_checked(tiny_llama(0), adapters)


def test_check_weight_shapes_names_the_first_problem():
    expected = {"a": mx.zeros((2, 3)), "b": mx.zeros((4,))}
    safety.check_weight_shapes(expected, {"a": mx.zeros((2, 3)), "b": mx.zeros((4,))}, "x")
    with pytest.raises(DataError, match=r"'c' is not a parameter"):
        safety.check_weight_shapes(expected, {"c": mx.zeros(1)}, "x")
    with pytest.raises(DataError, match=r"b has shape \(5,\), the model expects \(4,\)"):
        safety.check_weight_shapes(expected, {"a": mx.zeros((2, 3)), "b": mx.zeros((5,))}, "x")
    with pytest.raises(DataError, match="'b' is missing"):
        safety.check_weight_shapes(expected, {"a": mx.zeros((2, 3))}, "x")
    safety.check_weight_shapes(expected, {"a": mx.zeros((2, 3))}, "x", exact=False)


def test_trust_remote_code_is_off_unless_asked(monkeypatch):
    import mlx_lm.utils

    from ospo_mlx.config import TrainConfig, load_config
    from ospo_mlx.models import load as model_load

    assert TrainConfig().model.trust_remote_code is False
    assert load_config(None, ["model.trust_remote_code=true"]).model.trust_remote_code is True
    seen = []

    def fake_load(path, **kwargs):
        seen.append(kwargs)
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(mlx_lm.utils, "load", fake_load)
    for flag in (False, True):
        with pytest.raises(OspoError):
            model_load.load_model("tiny", trust_remote_code=flag)
        assert seen[-1]["trust_remote_code"] is flag
        assert seen[-1]["tokenizer_config"]["trust_remote_code"] is flag
    with pytest.raises(OspoError):
        model_load.load_model("tiny")
    assert seen[-1]["trust_remote_code"] is False


def test_checkpoint_latest_cannot_point_outside(tmp_path):
    from ospo_mlx.train import checkpoint as ckpt

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(OspoError, match="inside"):
        ckpt.load_checkpoint(tmp_path)
