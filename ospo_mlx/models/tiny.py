"""A tiny random-weight llama with the real SmolLM2 tokenizer, for tests and quick benchmarks.

Its text is gibberish, but every token is a real vocabulary token, the chat template is the real
one, and the end-of-sequence token is sampled often enough (about `eos_prob` per step at
temperature 1) that completions stop on their own. Loading and sampling take seconds.

How EOS gets a steady probability with random weights: embedding column 0 is a constant, and
no layer writes to residual dimension 0, so after the final RMSNorm that dimension is positive
for every position; the (untied) lm_head row of EOS reads only that dimension, while every
other row ignores it. One calibration pass then sets the EOS logit to reach `eos_prob`.
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ospo_mlx.errors import OspoError

TINY_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": False,
    "rope_traditional": True,
    "attention_bias": False,
    "mlp_bias": False,
}
_EMBED_CONSTANT = 1.0  # value of embedding column 0; the other columns are ~N(0, 1/64)


def _build(config: dict, eos_id: int, seed: int) -> nn.Module:
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    m = model.model
    m.embed_tokens.weight[:, 0] = _EMBED_CONSTANT
    for layer in m.layers:
        # Keep residual dimension 0 untouched by the blocks so it stays positive.
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    head = model.lm_head.weight
    head[:, 0] = 0.0
    head[eos_id, :] = 0.0
    head[eos_id, 0] = 1.0
    mx.eval(model.parameters())
    return model


def _calibrate_eos(model: nn.Module, eos_id: int, eos_prob: float, seed: int) -> None:
    """Set the EOS row's scale `a` so the mean EOS probability over random contexts is `eos_prob`.

    With h the final hidden states, P(eos) = sigmoid(a * h[0] - logsumexp(other logits)),
    which is monotone in `a` (h[0] > 0), so bisection finds it.
    """
    vocab = model.lm_head.weight.shape[0]
    tokens = mx.random.randint(3, vocab, (4, 64), key=mx.random.key(seed + 1))
    hidden = model.model(tokens)
    logits = model.lm_head(hidden)
    others = mx.logsumexp(mx.concatenate([logits[..., :eos_id], logits[..., eos_id + 1 :]], -1), -1)
    h0 = hidden[..., 0]
    mx.eval(others, h0)
    lo, hi = 0.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        p = mx.sigmoid(mid * h0 - others).mean().item()
        lo, hi = (mid, hi) if p < eos_prob else (lo, mid)
    model.lm_head.weight[eos_id, 0] = (lo + hi) / 2
    mx.eval(model.lm_head.weight)


def make_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    *,
    eos_prob: float = 0.03,
    bits: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random llama (hidden 64, 2 layers, 4 heads, 2 kv heads) as an mlx-lm dir.

    Args:
        out_dir: destination directory (written atomically).
        seed: weight initialization seed (the same seed gives the same weights).
        eos_prob: target mean probability of EOS per step at temperature 1.
        bits: quantize the linear layers and embedding to this many bits (group size 32),
            to exercise quantized code paths; None keeps float32.
        overwrite: replace an existing non-empty `out_dir`.
    """
    from ospo_mlx.models.assets import smollm2_gguf_path
    from ospo_mlx.models.gguf import (
        atomic_dir,
        build_tokenizer,
        build_tokenizer_config,
        read_gguf,
        write_model_dir,
    )

    if not 0.0 < eos_prob < 1.0:
        raise OspoError(f"eos_prob must be in (0, 1), got {eos_prob}")
    _, metadata = read_gguf(smollm2_gguf_path())
    eos_id = int(metadata["tokenizer.ggml.eos_token_id"])
    config = dict(TINY_CONFIG)
    config["vocab_size"] = len(metadata["tokenizer.ggml.tokens"])
    for key in ("bos_token_id", "eos_token_id"):
        config[key] = int(metadata[f"tokenizer.ggml.{key}"])

    model = _build(config, eos_id, seed)
    _calibrate_eos(model, eos_id, eos_prob, seed)
    if bits is not None:
        if bits not in (2, 3, 4, 5, 6, 8):
            raise OspoError(f"bits must be one of 2, 3, 4, 5, 6, 8, got {bits}")
        nn.quantize(model, group_size=32, bits=bits)
        config["quantization"] = {"group_size": 32, "bits": bits}
    weights = dict(tree_flatten(model.parameters()))
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        write_model_dir(
            tmp, weights, config, build_tokenizer(metadata), build_tokenizer_config(metadata)
        )
    return Path(out_dir)
