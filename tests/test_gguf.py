"""GGUF import: the real SmolLM2 file, and a tiny GGUF written here with mx.save_gguf."""

from __future__ import annotations

import json

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from ospo_mlx.errors import OspoError
from ospo_mlx.models import gguf
from ospo_mlx.models.assets import smollm2_gguf_path
from ospo_mlx.models.load import load_model


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory):
    try:
        path = smollm2_gguf_path()
    except OspoError as exc:
        pytest.skip(str(exc))
    return gguf.convert_gguf(path, tmp_path_factory.mktemp("smol") / "model")


def test_smollm2_config(smol_dir):
    config = json.loads((smol_dir / "config.json").read_text())
    expected = {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_traditional": True,
        "eos_token_id": 2,
        "bos_token_id": 1,
    }
    assert {k: config[k] for k in expected} == expected
    # Linears are 4-bit, the embedding 8-bit: a per-module override.
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }


def test_smollm2_tensors_stay_quantized(smol_dir):
    weights = mx.load(str(smol_dir / "model.safetensors"))
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == mx.uint32 and q.shape == (576, 576 * 4 // 32)
    emb = weights["model.embed_tokens.weight"]
    assert emb.dtype == mx.uint32 and emb.shape == (49152, 576 * 8 // 32)
    assert weights["model.layers.0.self_attn.q_proj.scales"].shape == (576, 576 // 32)
    assert "lm_head.weight" not in weights  # tied
    assert len([k for k in weights if k.endswith(".scales")]) == 30 * 7 + 1

    model, _ = load_model(str(smol_dir), dequantize=False, lazy=True)
    assert isinstance(model.model.embed_tokens, nn.QuantizedEmbedding)
    assert model.model.embed_tokens.bits == 8
    layer = model.model.layers[3].mlp.down_proj
    assert isinstance(layer, nn.QuantizedLinear) and layer.bits == 4 and layer.group_size == 32


def test_smollm2_dequantized_matches_gguf_values(smol_dir):
    raw, _ = gguf.read_gguf(smollm2_gguf_path())
    f32 = lambda name: raw[name].astype(mx.float32)  # noqa: E731
    ref = mx.dequantize(
        raw["blk.2.ffn_up.weight"], f32("blk.2.ffn_up.scales"), f32("blk.2.ffn_up.biases"), 32, 4
    )
    model, _ = load_model(str(smol_dir), dequantize=True)
    got = model.model.layers[2].mlp.up_proj.weight
    assert got.dtype == mx.float32
    np.testing.assert_allclose(np.array(got), np.array(ref), atol=1e-6)


def test_smollm2_tokenizer(smol_dir):
    _, tok = load_model(str(smol_dir), lazy=True)
    for text in [
        "Hello world 123",
        "  spaces\tand\nnewlines ",
        "ünïcödé 🙂 日本語",
        "<|im_start|>user",
    ]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("123") == [tok.encode("1")[0], tok.encode("2")[0], tok.encode("3")[0]]
    assert tok.encode("<|im_end|>") == [2]  # special tokens are single ids
    assert tok.eos_token_ids == {2}
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_greedy_is_coherent(smol_dir):
    from mlx_lm import generate

    model, tok = load_model(str(smol_dir))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    text = generate(model, tok, prompt, max_tokens=12)
    assert "Paris" in text


# A tiny llama GGUF written with MLX's own writer: float tensors, byte-level vocabulary.
def _byte_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    chars = sorted(set(pre_tokenizers.ByteLevel.alphabet()))
    return ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *chars, "Ġt", "he", "Ġthe"]


def _tiny_gguf(path, *, with_output: bool):
    from mlx_lm.models.llama import Model, ModelArgs

    tokens = _byte_vocab()
    args = ModelArgs(
        model_type="llama",
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=len(tokens),
        rope_theta=5000.0,
        rope_traditional=True,
        tie_word_embeddings=not with_output,
    )
    mx.random.seed(3)
    model = Model(args)
    inverse = {v: k for k, v in gguf._GLOBAL_NAMES.items()}
    inverse.update({f"layers.{{}}.{v}": k for k, v in gguf._BLOCK_NAMES.items()})
    arrays = {}
    for name, value in tree_flatten(model.parameters()):
        base = name.rsplit(".", 1)[0]
        if base.startswith("model.layers."):
            _, _, layer, rest = base.split(".", 3)
            key = next(k for k, v in gguf._BLOCK_NAMES.items() if v == rest)
            arrays[f"blk.{layer}.{key}.weight"] = value
        else:
            arrays[f"{inverse[base]}.weight"] = value
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731
    metadata = {
        "general.architecture": "llama",
        "llama.embedding_length": u32(32),
        "llama.block_count": u32(2),
        "llama.feed_forward_length": u32(48),
        "llama.attention.head_count": u32(4),
        "llama.attention.head_count_kv": u32(2),
        "llama.attention.layer_norm_rms_epsilon": mx.array(1e-5, dtype=mx.float32),
        "llama.rope.freq_base": mx.array(5000.0, dtype=mx.float32),
        "llama.context_length": u32(512),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"],
        "tokenizer.ggml.token_type": mx.array([3, 3, 3] + [1] * (len(tokens) - 3), dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        "tokenizer.chat_template": "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}",
    }
    mx.save_gguf(str(path), arrays, metadata)
    return model


@pytest.mark.parametrize("with_output", [False, True])
def test_tiny_gguf_converts_and_matches(tmp_path, with_output):
    original = _tiny_gguf(tmp_path / "tiny.gguf", with_output=with_output)
    out = gguf.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is (not with_output)
    assert config["vocab_size"] == len(_byte_vocab()) and "quantization" not in config
    model, tok = load_model(str(out))
    x = mx.array([[5, 9, 200, 3, 77, 1]])
    np.testing.assert_allclose(np.array(model(x)), np.array(original(x)), rtol=1e-5, atol=1e-5)
    assert tok.encode(" the") == [len(_byte_vocab()) - 1]  # merges applied
    assert tok.decode(tok.encode("Ünïcode the end")) == "Ünïcode the end"
    assert tok.eos_token_ids == {2}
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == (
        "<|im_start|>x<|im_end|>"
    )


def test_errors(tmp_path):
    with pytest.raises(OspoError, match="not found"):
        gguf.convert_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(OspoError, match="cannot read"):
        gguf.convert_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    with pytest.raises(OspoError, match="unsupported GGUF tensor"):
        gguf.convert_weights({"blk.0.attn_qkv.weight": mx.zeros((2, 2))})
    with pytest.raises(OspoError, match="architecture"):
        gguf.build_config({"general.architecture": "qwen2"}, {}, {})
    with pytest.raises(OspoError, match="tokenizer model"):
        gguf.build_tokenizer({"tokenizer.ggml.model": "llama"})


def test_atomic_output(tmp_path, monkeypatch):
    _tiny_gguf(tmp_path / "tiny.gguf", with_output=False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(OspoError, match="--force"):
        gguf.convert_gguf(tmp_path / "tiny.gguf", target)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(gguf, "write_model_dir", boom)
    with pytest.raises(RuntimeError):
        gguf.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert (target / "keep.txt").read_text() == "x"
