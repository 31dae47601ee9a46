"""Model loading: local directories, the 'tiny' and default aliases, dtypes, user errors."""

from __future__ import annotations

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from ospo_mlx.errors import OspoError
from ospo_mlx.models import load as load_mod
from ospo_mlx.models.load import load_model, resolve_model
from ospo_mlx.models.tiny import make_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def _params(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def test_tiny_loads_with_real_tokenizer(tiny_dir):
    model, tok = load_model(str(tiny_dir))
    assert model.args.hidden_size == 64 and len(model.layers) == 2
    assert tok.eos_token_ids == {2} and tok.vocab_size == 49152
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), 49152) and logits.dtype == mx.float32


def test_tiny_eos_probability_is_calibrated(tiny_dir):
    model, _ = load_model(str(tiny_dir))
    tokens = mx.random.randint(3, 49152, (4, 48), key=mx.random.key(123))
    p_eos = mx.exp(nn.log_softmax(model(tokens), axis=-1)[..., 2])
    # Target 0.03 per step on average; every context can stop.
    assert 0.01 < p_eos.mean().item() < 0.06
    assert p_eos.min().item() > 1e-3


def test_tiny_seed_determinism(tmp_path, tiny_dir):
    again = _params(load_model(str(make_tiny_model(tmp_path / "a", seed=0)))[0])
    other = _params(load_model(str(make_tiny_model(tmp_path / "b", seed=1)))[0])
    base = _params(load_model(str(tiny_dir))[0])
    assert all(np.array_equal(base[k], again[k]) for k in base)
    assert not np.array_equal(
        base["model.layers.0.self_attn.q_proj.weight"],
        other["model.layers.0.self_attn.q_proj.weight"],
    )


def test_quantized_tiny_and_dequantize(tmp_path):
    path = make_tiny_model(tmp_path / "q4", seed=0, bits=4)
    quantized, _ = load_model(str(path), dequantize=False)
    assert isinstance(quantized.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert quantized.layers[0].self_attn.q_proj.bits == 4
    dense, _ = load_model(str(path), dequantize=True)
    assert type(dense.layers[0].self_attn.q_proj) is nn.Linear
    x = mx.array([[5, 10, 400, 2]])
    np.testing.assert_allclose(np.array(quantized(x)), np.array(dense(x)), atol=1e-4)


def test_dtype_option(tiny_dir):
    model, _ = load_model(str(tiny_dir), dtype="bfloat16")
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.bfloat16}
    with pytest.raises(OspoError, match="dtype"):
        load_model(str(tiny_dir), dtype="int8")


def test_aliases_use_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OSPO_CACHE", str(tmp_path))
    path = resolve_model("tiny")
    assert path == tmp_path / "models" / "tiny-llama"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("TINY") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    default = resolve_model(None)
    assert default == tmp_path / "models" / "smollm2-135m-instruct"
    assert resolve_model("default") == resolve_model("smollm2-135m") == default
    assert (default / "config.json").is_file()
    # Only the two finished directories: no leftover temp dirs from the atomic writes.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "smollm2-135m-instruct",
        "tiny-llama",
    ]


def test_incomplete_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("OSPO_CACHE", str(tmp_path))
    broken = tmp_path / "models" / "tiny-llama"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # as if a copy had been interrupted
    assert load_mod.tiny_model_dir() == broken
    assert (broken / "model.safetensors").is_file()


def test_user_errors(tmp_path):
    with pytest.raises(OspoError, match="not found"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(OspoError, match="not found"):
        load_model("./relative/missing")
    (tmp_path / "file.gguf").write_bytes(b"x")
    with pytest.raises(OspoError, match="import-gguf"):
        load_model(str(tmp_path / "file.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(OspoError, match=r"config\.json"):
        load_model(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-arch"}')
    mx.save_safetensors(str(bad / "model.safetensors"), {"w": mx.zeros((2,))})
    with pytest.raises(OspoError, match="could not be loaded"):
        load_model(str(bad))
    assert resolve_model("mlx-community/Qwen2.5-1.5B-Instruct-4bit") == (
        "mlx-community/Qwen2.5-1.5B-Instruct-4bit"
    )


def test_cli_model_commands(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cli.main

    monkeypatch.setenv("OSPO_CACHE", str(tmp_path))
    if not any(g.name == "model" for g in cli.main.app.registered_groups):
        cli.main._register_commands()
    runner = CliRunner()
    result = runner.invoke(cli.main.app, ["model", "make-tiny"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.main.app, ["model", "info", "tiny", "--json"])
    assert result.exit_code == 0 and '"layers": 2' in result.output
    result = runner.invoke(
        cli.main.app, ["model", "generate", "Hi", "-m", "tiny", "-n", "2", "--max-new-tokens", "5"]
    )
    assert result.exit_code == 0 and "[1]" in result.output
