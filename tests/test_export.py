"""`ospo export`: mlx/PEFT/fused exports of LoRA adapters on a tiny random llama."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ospo_mlx  # noqa: F401  (BLAS before mlx)
from ospo_mlx.errors import OspoError
from ospo_mlx.export import ExportArgs, export, peft_adapter_config, peft_state_dict, plan_upload
from ospo_mlx.export.paths import prepare_out_dir, safe_path
from ospo_mlx.export.peft import peft_targets, permute_rows_rotate_half
from ospo_mlx.export.source import resolve_source

TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "vocab_size": 320,
    "tie_word_embeddings": True,
    "bos_token_id": 0,
    "eos_token_id": 0,
}
# A minimal chat template so prompts encode like an instruct model's (eval tests).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant: {% endif %}"
)
TOKENS = [[5, 17, 99, 250, 3, 42, 7, 300, 12, 64, 128, 1]]


def gguf_permute(w, n_heads: int):
    """What llama.cpp's converter does to q/k rows (HF rotate-half -> interleaved)."""
    shape = w.shape
    return w.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(
        ["red running shoes for women", "wireless noise cancelling headphones"] * 20, trainer
    )
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|endoftext|>",
                "bos_token": "<|endoftext|>",
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )


def make_tiny_llama(
    path: Path, *, seed: int = 0, rope_traditional: bool = False, quantize: bool = False
) -> Path:
    """A random tiny llama dir loadable by mlx-lm and transformers (HF names, tied embeddings).

    rope_traditional=True writes the same network in GGUF's interleaved-q/k form.
    """
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(seed)
    config = dict(TINY_CONFIG)
    model = Model(ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    if rope_traditional:
        config["rope_traditional"] = True
        for key in list(weights):
            if "q_proj" in key:
                weights[key] = gguf_permute(weights[key], config["num_attention_heads"])
            elif "k_proj" in key:
                weights[key] = gguf_permute(weights[key], config["num_key_value_heads"])
    if quantize:
        model.load_weights(list(weights.items()))
        nn.quantize(model, group_size=32, bits=4)
        weights = dict(tree_flatten(model.parameters()))
        config["quantization"] = {"group_size": 32, "bits": 4}
    path.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(path)
    return path


def make_adapters(
    base: Path,
    out: Path,
    *,
    num_layers: int = 2,
    keys=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj"),
    seed: int = 1,
) -> Path:
    """Random non-zero mlx-lm LoRA adapters for the last `num_layers` blocks of `base`."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load

    model, _ = load(str(base))
    params = {"rank": 4, "scale": 2.5, "dropout": 0.0, "keys": list(keys) if keys else None}
    linear_to_lora_layers(model, num_layers, params)
    mx.random.seed(seed)
    lora = {
        k: 0.2 * mx.random.normal(v.shape)
        for k, v in tree_flatten(model.parameters())
        if k.endswith(("lora_a", "lora_b"))
    }
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), lora)
    config = {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def mlx_logits(model_dir: Path, adapter_dir: Path | None = None) -> np.ndarray:
    import mlx.core as mx
    from mlx_lm.utils import load

    model, _ = load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def make_run(tmp: Path, base: Path, adapters: Path) -> Path:
    run = tmp / "run-ospo"
    (run / "adapters").mkdir(parents=True)
    for name in ("adapters.safetensors", "adapter_config.json"):
        (run / "adapters" / name).write_bytes((adapters / name).read_bytes())
    (run / "config.yaml").write_text(
        f"algorithm: ospo\nmodel:\n  name: {base}\ndata:\n  catalog: data/demo/catalog.jsonl\n  train: data/demo/train.jsonl\n"
    )
    rows = [{"step": s, "reward": 0.1 * s, "ndcg@10": 0.05 * s, "kl": 0.01 * s} for s in (1, 2, 3)]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rew'
    )
    (run / "eval.json").write_text(
        json.dumps({"results": [{"system": "adapters", "retriever": "minilm", "ndcg@10": 0.4321}]})
    )
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_llama(root / "base")
    adapters = make_adapters(base, root / "adapters")
    return {"root": root, "base": base, "adapters": adapters, "run": make_run(root, base, adapters)}


# ----------------------------------------------------------------------------- pure conversion


@settings(max_examples=25, deadline=None)
@given(
    d_in=st.integers(1, 12),
    d_out=st.integers(1, 12),
    r=st.integers(1, 6),
    scale=st.floats(0.1, 30),
    seed=st.integers(0, 999),
)
def test_peft_math_matches_mlx_lora(d_in, d_out, r, scale, seed):
    rng = np.random.default_rng(seed)
    a, b, x = rng.normal(size=(d_in, r)), rng.normal(size=(r, d_out)), rng.normal(size=(3, d_in))
    weights = {
        "model.layers.0.self_attn.q_proj.lora_a": a,
        "model.layers.0.self_attn.q_proj.lora_b": b,
    }
    tensors = peft_state_dict(weights)
    config = peft_adapter_config(
        {"lora_parameters": {"rank": r, "scale": scale}},
        ["model.layers.0.self_attn.q_proj"],
        "m",
        1,
    )
    big_a = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    big_b = tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    assert big_a.shape == (r, d_in) and big_b.shape == (d_out, r)
    mlx_delta = scale * (x @ a) @ b
    peft_delta = (config["lora_alpha"] / config["r"]) * (x @ big_a.T) @ big_b.T
    np.testing.assert_allclose(peft_delta, mlx_delta, rtol=1e-10, atol=1e-10)


def test_peft_targets_grid_partial_and_irregular():
    mods = [f"model.layers.{i}.{m}" for i in (2, 3) for m in ("self_attn.q_proj", "mlp.down_proj")]
    assert peft_targets(mods, 4) == {
        "target_modules": ["down_proj", "q_proj"],
        "layers_to_transform": [2, 3],
        "layers_pattern": "layers",
    }
    assert peft_targets(mods, 2 + 2) != peft_targets(
        [m.replace("layers.2", "layers.0") for m in mods], 4
    )
    full = [f"model.layers.{i}.self_attn.v_proj" for i in range(4)]
    assert peft_targets(full, 4) == {"target_modules": ["v_proj"]}
    odd = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    pattern = peft_targets(odd, 4)["target_modules"]
    import re

    assert all(re.fullmatch(pattern, m) for m in odd)
    assert not re.fullmatch(pattern, "model.layers.0.mlp.up_proj")


def test_rope_unpermute_inverts_gguf_permutation():
    w = np.arange(8 * 16 * 3).reshape(8 * 16, 3)
    np.testing.assert_array_equal(permute_rows_rotate_half(gguf_permute(w, 8), 8), w)
    assert not np.array_equal(gguf_permute(w, 8), w)


def test_peft_refuses_dora():
    with pytest.raises(OspoError, match="LoRA adapters only"):
        peft_adapter_config(
            {"fine_tune_type": "dora", "lora_parameters": {"rank": 2, "scale": 1}}, [], "m", 2
        )


# ----------------------------------------------------------------------------- end to end (MLX)


def test_mlx_export_loads_in_mlx_lm_and_fuse_cli(tiny, tmp_path):
    out = tmp_path / "mlx"
    result = export(ExportArgs(out=out, format="mlx", run=tiny["run"]))
    assert {f for f, _ in result.files} == {
        "adapters.safetensors",
        "adapter_config.json",
        "README.md",
    }
    np.testing.assert_array_equal(
        mlx_logits(tiny["base"], out), mlx_logits(tiny["base"], tiny["adapters"])
    )
    fused = tmp_path / "fused-by-mlx-lm"
    cmd = [
        sys.executable,
        "-m",
        "mlx_lm",
        "fuse",
        "--model",
        str(tiny["base"]),
        "--adapter-path",
        str(out),
        "--save-path",
        str(fused),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    np.testing.assert_allclose(mlx_logits(fused), mlx_logits(tiny["base"], out), atol=1e-4)


def test_fused_export_matches_adapter_logits(tiny, tmp_path):
    out = tmp_path / "fused"
    export(ExportArgs(out=out, format="fused", adapters=tiny["adapters"], model=str(tiny["base"])))
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert (out / "tokenizer.json").is_file() and (out / "README.md").is_file()
    base, adapted, fused = (
        mlx_logits(tiny["base"]),
        mlx_logits(tiny["base"], tiny["adapters"]),
        mlx_logits(out),
    )
    assert np.abs(adapted - base).max() > 1e-2  # the adapter really changes the model
    np.testing.assert_allclose(fused, adapted, atol=1e-4)


def test_fused_export_of_gguf_form_base_is_rotate_half(tmp_path):
    hf = make_tiny_llama(tmp_path / "hf", seed=3)
    gguf = make_tiny_llama(tmp_path / "gguf", seed=3, rope_traditional=True)
    np.testing.assert_allclose(mlx_logits(gguf), mlx_logits(hf), atol=1e-4)  # same network
    adapters = make_adapters(gguf, tmp_path / "ad", num_layers=4)
    out = tmp_path / "fused"
    export(ExportArgs(out=out, format="fused", adapters=adapters, model=str(gguf)))
    config = json.loads((out / "config.json").read_text())
    assert config["rope_traditional"] is False
    np.testing.assert_allclose(mlx_logits(out), mlx_logits(gguf, adapters), atol=1e-4)


def test_fused_quantized_base_keeps_mlx_quantization_or_dequantizes(tmp_path):
    import mlx.core as mx

    base = make_tiny_llama(tmp_path / "q", seed=4, quantize=True)
    adapters = make_adapters(base, tmp_path / "ad")
    kept = export(
        ExportArgs(out=tmp_path / "kept", format="fused", adapters=adapters, model=str(base))
    )
    assert any("MLX only" in n for n in kept.notes)
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["quantization"]["bits"] == 4
    reference = mlx_logits(base, adapters)
    export(
        ExportArgs(
            out=tmp_path / "deq",
            format="fused",
            adapters=adapters,
            model=str(base),
            dequantize=True,
        )
    )
    config = json.loads((tmp_path / "deq" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    np.testing.assert_allclose(mlx_logits(tmp_path / "deq"), reference, atol=1e-4)
    # kept = mlx-lm's fused-quantized behaviour: the exact fused float weight, re-quantized;
    # modules without LoRA keep the base's packed weights bit for bit.
    k, d, b = (mx.load(str(tmp_path / n / "model.safetensors")) for n in ("kept", "deq", "q"))
    fused_key = "model.layers.3.self_attn.q_proj"
    packed, scales, _ = mx.quantize(d[f"{fused_key}.weight"], group_size=32, bits=4)
    assert mx.array_equal(k[f"{fused_key}.weight"], packed) and mx.allclose(
        k[f"{fused_key}.scales"], scales
    )
    assert mx.array_equal(
        k["model.layers.0.self_attn.q_proj.weight"], b["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not mx.array_equal(k[f"{fused_key}.weight"], b[f"{fused_key}.weight"])


def test_peft_export_files_and_config(tiny, tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "peft"
    export(ExportArgs(out=out, format="peft", run=tiny["run"]))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == pytest.approx(10.0)
    assert config["layers_to_transform"] == [2, 3]
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str(tiny["base"])
    tensors = load_file(out / "adapter_model.safetensors")
    assert len(tensors) == 2 * 4 * 2
    assert tensors["base_model.model.model.layers.3.mlp.down_proj.lora_A.weight"].shape == (4, 96)


# ----------------------------------------------------------------------------- card, hub, paths


def test_model_card_has_base_data_metrics_and_eval(tiny, tmp_path):
    result = export(ExportArgs(out=tmp_path / "m", format="mlx", run=tiny["run"]))
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nbase_model: " + str(tiny["base"]))
    assert "| reward | 0.1 | 0.3 | 0.3 |" in card
    assert "| kl | 0.01 | 0.03 | 0.01 |" in card
    assert "data/demo/train.jsonl" in card and "0.4321" in card
    assert any("skipped 1 unreadable line" in n for n in result.notes)


def test_dry_run_lists_files_without_network(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    def boom(*a, **k):
        raise AssertionError("dry run touched the hub")

    monkeypatch.setattr(huggingface_hub, "HfApi", boom)
    result = export(
        ExportArgs(
            out=tmp_path / "d",
            format="mlx",
            run=tiny["run"],
            push_to_hub="alice/ospo-tiny",
            dry_run=True,
        )
    )
    assert result.upload is not None and result.url is None
    assert result.upload.repo == "alice/ospo-tiny"
    sizes = dict(result.upload.files)
    assert (
        sizes["adapters.safetensors"] == (tiny["adapters"] / "adapters.safetensors").stat().st_size
    )
    assert result.upload.total_bytes == sum(sizes.values())


def test_push_without_huggingface_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    from ospo_mlx.export.hub import push_to_hub

    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(OspoError, match=r"pip install 'ospo\[hub\]'"):
        push_to_hub(plan_upload(tmp_path, "alice/x"))
    with pytest.raises(OspoError, match="not a hub repo id"):
        plan_upload(tmp_path, "../etc")


def test_refuses_non_empty_out_and_path_traversal(tiny, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(OspoError, match="not empty"):
        export(ExportArgs(out=out, format="mlx", run=tiny["run"]))
    export(ExportArgs(out=out, format="mlx", run=tiny["run"], force=True))
    assert (out / "keep.txt").read_text() == "user file"
    for bad in ("../evil.json", "/tmp/evil.json", "a/../../evil"):
        with pytest.raises(OspoError, match="refusing"):
            safe_path(prepare_out_dir(tmp_path / "o", force=True), bad)
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(OspoError, match="outside"):
        safe_path(out, "link/evil.json")


def test_checkpoint_pointer_cannot_escape_run(tiny, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("../../adapters\n")
    with pytest.raises(OspoError, match="not a checkpoint inside the run"):
        resolve_source(run=run, model="x")
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    ckpt = run / "checkpoints" / "step_000002"
    ckpt.mkdir()
    for name in ("adapters.safetensors", "adapter_config.json"):
        (ckpt / name).write_bytes((tiny["adapters"] / name).read_bytes())
    assert resolve_source(run=run, model="x").adapter_dir == ckpt


def test_adapters_inside_a_run_take_the_runs_config(tiny, tmp_path):
    """--adapters RUN/warmup or RUN/checkpoints/step_N: the base model comes from RUN/config.yaml."""
    run = tmp_path / "run"
    for sub in ("warmup", "checkpoints/step_000002"):
        (run / sub).mkdir(parents=True)
        for name in ("adapters.safetensors", "adapter_config.json"):
            (run / sub / name).write_bytes((tiny["adapters"] / name).read_bytes())
    (run / "config.yaml").write_text("model:\n  name: some/base-model\n")
    with pytest.raises(OspoError, match="pass --model"):  # not a run yet: no metrics.jsonl
        resolve_source(adapters=run / "warmup")
    (run / "metrics.jsonl").write_text("")
    for sub in ("warmup", "checkpoints/step_000002"):
        source = resolve_source(adapters=run / sub)
        assert source.base_model == "some/base-model" and source.adapter_dir == run / sub
    assert resolve_source(adapters=run / "warmup", model="x").base_model == "x"


def test_bad_inputs_are_user_errors(tiny, tmp_path):
    with pytest.raises(OspoError, match="exactly one"):
        resolve_source()
    with pytest.raises(OspoError, match="pass --model"):
        resolve_source(adapters=tiny["adapters"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapters.safetensors").write_bytes(
        (tiny["adapters"] / "adapters.safetensors").read_bytes()
    )
    (bad / "adapter_config.json").write_text(
        json.dumps({"num_layers": 2, "lora_parameters": {"rank": 8, "scale": 1}})
    )
    with pytest.raises(OspoError, match="rank 8"):
        export(ExportArgs(out=tmp_path / "o", format="mlx", adapters=bad, model=str(tiny["base"])))
    with pytest.raises(OspoError, match="--dequantize applies"):
        export(ExportArgs(out=tmp_path / "o2", format="peft", run=tiny["run"], dequantize=True))


def test_cli_export_dry_run(tiny, tmp_path):
    import typer
    from typer.testing import CliRunner

    from cli import export as cli_export

    app = typer.Typer()
    cli_export.register(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    args = [
        "export",
        "--run",
        str(tiny["run"]),
        "--format",
        "peft",
        "--out",
        str(tmp_path / "c"),
        "--push-to-hub",
        "a/b",
        "--dry-run",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (
        "adapter_model.safetensors" in res.output
        and "a/b" in res.output
        and "dry run" in res.output
    )


def test_base_model_is_read_through_the_run_config_reader():
    from ospo_mlx.config import TrainConfig
    from ospo_mlx.export.source import DEFAULT_MODEL, model_from_config

    current = TrainConfig().to_dict()
    assert model_from_config(current) == DEFAULT_MODEL
    current["model"]["name"] = "mlx-community/Qwen2.5-1.5B-Instruct-4bit"
    assert model_from_config(current) == "mlx-community/Qwen2.5-1.5B-Instruct-4bit"
    # Older layouts still name their model.
    assert model_from_config({"model": "some/model"}) == "some/model"
    assert model_from_config({"model": {"path": "/models/x"}}) == "/models/x"
    assert model_from_config({}) is None
