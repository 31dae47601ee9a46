"""Convert a llama-architecture GGUF file into an mlx-lm model directory.

`mx.load(path, return_metadata=True)` reads GGUF natively and returns Q4_0/Q4_1/Q8_0 tensors
as MLX affine-quantized triples (``weight`` uint32, ``scales``, ``biases``; group size 32), so
the conversion only renames tensors, keeps them quantized (bits may differ per tensor) and
rebuilds ``config.json``, ``tokenizer.json`` and ``tokenizer_config.json`` from the metadata.

GGUF stores the q/k projections permuted for interleaved ("traditional") RoPE, hence
``rope_traditional: true`` in the written config; without it the model writes garbage.

Public API:
    convert_gguf(gguf_path, out_dir, *, dtype="float32", overwrite=False) -> Path
    read_gguf(gguf_path) -> (weights, metadata)
    build_tokenizer(metadata) -> tokenizers.Tokenizer
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx

from ospo_mlx.errors import OspoError

# GGUF tensor name (without the ".weight"/".scales"/".biases" suffix) -> mlx-lm llama name.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|scales|biases|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|scales|biases|bias)$")

# Pre-tokenizer split patterns for the byte-level BPE vocabularies we know (llama.cpp's
# `tokenizer.ggml.pre` names). gpt2-style names use the ByteLevel pre-tokenizer's own regex.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_STYLE_PRE = {"gpt2", "smollm", "default", "starcoder", "refact", "gpt-2"}
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact"}  # split numbers into single digits
_LLAMA3_PRE = {"llama-bpe", "llama3", "llama-v3"}

_CONTROL_TOKEN = 3  # llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
_USER_DEFINED_TOKEN = 4


def _scalar(value: Any) -> Any:
    """GGUF metadata scalars arrive as 0-d mx.arrays; lists and strings as Python objects."""
    if isinstance(value, mx.array):
        return value.item() if value.ndim == 0 else value.tolist()
    return value


def read_gguf(gguf_path: str | Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Load a GGUF file's tensors (quantized types stay quantized) and its metadata."""
    path = Path(gguf_path)
    if not path.is_file():
        raise OspoError(f"GGUF file not found: {path}; pass the path of an existing .gguf file")
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except Exception as exc:  # MLX raises bare RuntimeError/ValueError for bad files
        raise OspoError(f"cannot read {path} as GGUF ({exc}); is it a valid .gguf file?") from exc
    return weights, {k: _scalar(v) for k, v in metadata.items()}


def _mlx_name(gguf_name: str) -> str:
    if m := _BLOCK_RE.match(gguf_name):
        layer, part, kind = m.groups()
        if part not in _BLOCK_NAMES:
            raise OspoError(
                f"unsupported GGUF tensor {gguf_name!r}: only plain llama blocks convert"
            )
        return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    if (m := _GLOBAL_RE.match(gguf_name)) and m.group(1) in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[m.group(1)]}.{m.group(2)}"
    raise OspoError(f"unsupported GGUF tensor {gguf_name!r}: only plain llama models convert")


def convert_weights(
    weights: dict[str, mx.array], dtype: mx.Dtype = mx.float32
) -> tuple[dict[str, mx.array], dict[str, int]]:
    """Rename GGUF tensors to mlx-lm llama names; returns (weights, bits per quantized module).

    Packed uint32 weights are kept; float tensors, scales and biases are cast to `dtype`
    (float32 by default: MLX's CPU backend computes fastest and most exactly in it).
    """
    out: dict[str, mx.array] = {}
    for name, value in weights.items():
        new_name = _mlx_name(name)
        out[new_name] = value if value.dtype == mx.uint32 else value.astype(dtype)
    bits = {}
    for name, value in out.items():
        if name.endswith(".scales"):
            module = name[: -len(".scales")]
            # Each uint32 packs 32/bits values and each group of 32 values has one scale.
            bits[module] = out[f"{module}.weight"].shape[-1] // value.shape[-1]
    return out, bits


def _meta(metadata: dict[str, Any], key: str, default: Any = None, *, required: bool = True) -> Any:
    arch = metadata.get("general.architecture", "llama")
    value = metadata.get(f"{arch}.{key}", default)
    if value is None and required:
        raise OspoError(f"GGUF metadata lacks {arch}.{key}; the file is not a complete llama model")
    return value


def build_config(
    metadata: dict[str, Any], weights: dict[str, mx.array], bits: dict[str, int]
) -> dict[str, Any]:
    """mlx-lm llama config.json from the `llama.*` metadata (and weight shapes where missing)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise OspoError(f"GGUF architecture {arch!r} is not supported; only 'llama' models convert")
    hidden = int(_meta(metadata, "embedding_length"))
    heads = int(_meta(metadata, "attention.head_count"))
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    vocab = _meta(metadata, "vocab_size", None, required=False) or len(tokens)
    head_dim = _meta(metadata, "attention.key_length", None, required=False) or _meta(
        metadata, "rope.dimension_count", hidden // heads
    )
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(metadata, "block_count")),
        "intermediate_size": int(_meta(metadata, "feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_meta(metadata, "attention.head_count_kv", heads)),
        "head_dim": int(head_dim),
        # GGUF stores float32; round so 1e-5 reads as 1e-05, not 9.999999747378752e-06.
        "rms_norm_eps": float(f"{_meta(metadata, 'attention.layer_norm_rms_epsilon', 1e-5):.7g}"),
        "rope_theta": float(_meta(metadata, "rope.freq_base", 10000.0)),
        "max_position_embeddings": int(_meta(metadata, "context_length", 2048)),
        "vocab_size": int(vocab),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        # GGUF permutes q/k for interleaved RoPE.
        "rope_traditional": True,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if (value := metadata.get(f"tokenizer.ggml.{key}")) is not None:
            config[key.replace("padding", "pad")] = int(value)
    if bits:
        # The most common bit width is the default; modules that differ are listed by path
        # (mlx-lm's class_predicate looks module paths up in config["quantization"]).
        default_bits = Counter(bits.values()).most_common(1)[0][0]
        quant: dict[str, Any] = {"group_size": 32, "bits": default_bits}
        for module, b in sorted(bits.items()):
            if b != default_bits:
                quant[module] = {"group_size": 32, "bits": b}
        config["quantization"] = quant
    return config


def build_tokenizer(metadata: dict[str, Any]):
    """A `tokenizers.Tokenizer` (byte-level BPE) from `tokenizer.ggml.*` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = metadata.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise OspoError(
            f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2') converts"
        )
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))

    pre = metadata.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _LLAMA3_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(
                    pattern=_regex(_LLAMA3_SPLIT), behavior="isolated", invert=False
                ),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _DIGIT_SPLIT_PRE:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _GPT2_STYLE_PRE:
        tokenizer.pre_tokenizer = byte_level
    else:
        raise OspoError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: "
            f"{', '.join(sorted(_GPT2_STYLE_PRE | _LLAMA3_PRE))}"
        )
    tokenizer.decoder = decoders.ByteLevel()

    types = metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    specials = [tokens[i] for i, t in enumerate(types) if t == _CONTROL_TOKEN]
    user = [tokens[i] for i, t in enumerate(types) if t == _USER_DEFINED_TOKEN]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])

    bos = metadata.get("tokenizer.ggml.bos_token_id")
    if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
        name = tokens[int(bos)]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{name} $A", pair=f"{name} $A {name} $B", special_tokens=[(name, int(bos))]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _regex(pattern: str):
    from tokenizers import Regex

    return Regex(pattern)


def build_tokenizer_config(metadata: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json: special tokens, chat template, no space clean-up."""
    tokens = metadata["tokenizer.ggml.tokens"]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "model_max_length": int(_meta(metadata, "context_length", 2048)),
    }
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token")):
        if (idx := metadata.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            config[name] = tokens[int(idx)]
    if (idx := metadata.get("tokenizer.ggml.padding_token_id")) is not None:
        config["pad_token"] = tokens[int(idx)]
    if template := metadata.get("tokenizer.chat_template"):
        config["chat_template"] = template
    return config


def write_model_dir(
    out_dir: Path,
    weights: dict[str, mx.array],
    config: dict[str, Any],
    tokenizer,
    tokenizer_config: dict[str, Any],
) -> None:
    """Write an mlx-lm model directory (no atomicity: see `atomic_dir`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


class atomic_dir:
    """Context manager: yields a temp dir next to `target`, renamed onto it on success.

    A killed or failed conversion leaves at most a hidden temp dir, never a half-written
    `target` that later loads would trust.
    """

    def __init__(self, target: Path, *, overwrite: bool = False):
        self.target = Path(target)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.target.exists() and any(self.target.iterdir()) and not self.overwrite:
            raise OspoError(
                f"{self.target} already exists and is not empty; pass --force to replace it"
            )
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent)
        )
        self.tmp.chmod(0o755)  # mkdtemp makes it private; the model dir is an ordinary folder
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.target.exists():
            shutil.rmtree(self.target)
        os.replace(self.tmp, self.target)


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Convert a llama GGUF file into an mlx-lm model directory at `out_dir` (atomically).

    Args:
        gguf_path: the .gguf file (Q4_0/Q4_1/Q8_0 tensors stay quantized; F16/F32 stay float).
        out_dir: destination directory; must be absent or empty unless `overwrite`.
        dtype: float dtype of norms, scales/biases and unquantized tensors.
        overwrite: replace an existing non-empty `out_dir`.
    """
    if dtype not in ("float32", "float16", "bfloat16"):
        raise OspoError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16")
    raw, metadata = read_gguf(gguf_path)
    weights, bits = convert_weights(raw, getattr(mx, dtype))
    config = build_config(metadata, weights, bits)
    tokenizer = build_tokenizer(metadata)
    tokenizer_config = build_tokenizer_config(metadata)
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        write_model_dir(tmp, weights, config, tokenizer, tokenizer_config)
    return Path(out_dir)
