"""Merge LoRA adapters into the base model and save it in Hugging Face safetensors layout.

The result loads in mlx-lm (``mlx_lm.load``) and, when dequantized, in transformers
(``AutoModelForCausalLM.from_pretrained``). A quantized base fused without ``dequantize``
keeps mlx-lm's behaviour: each fused weight is re-quantized with the base's group size and
bits, so the output is as small as the base but loads in MLX only (transformers cannot read
MLX's affine-quantized tensors).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ospo_mlx.errors import OspoError
from ospo_mlx.export.paths import safe_path, write_json
from ospo_mlx.export.peft import permute_rows_rotate_half, rope_row_heads
from ospo_mlx.export.source import DEFAULT_MODEL
from ospo_mlx.safety import load_json

# Base-model files copied next to the fused weights when present (tokenizer files come from
# the tokenizer itself, so any loader's tokenizer works).
COPY_FILES = ("generation_config.json", "special_tokens_map.json")


def load_base(name: str) -> tuple[Any, Any, dict[str, Any], Path | None]:
    """(model, tokenizer, config dict, local directory or None) of the base model `name`."""
    path = Path(name)
    if path.is_dir() and (path / "config.json").is_file():
        from mlx_lm.utils import load

        model, tokenizer, config = load(str(path), return_config=True)
        return model, tokenizer, dict(config), path
    try:
        from ospo_mlx.models.load import load_model
    except ImportError as exc:  # the loader module lands separately; say what works today
        raise OspoError(
            f"cannot load {name!r}: pass --model as a local mlx-lm model directory"
        ) from exc
    model, tokenizer = load_model(None if name == DEFAULT_MODEL else name)
    local = _local_dir(model)
    config = _config_of(model, local)
    return model, tokenizer, config, local


def _local_dir(model: Any) -> Path | None:
    where = getattr(model, "model_path", None) or getattr(model, "path", None)
    return Path(where) if where and Path(where).is_dir() else None


def _config_of(model: Any, local: Path | None) -> dict[str, Any]:
    """The model's config.json: from its directory, else rebuilt from its ModelArgs."""
    if local is not None and (local / "config.json").is_file():
        return load_json(local / "config.json", "model config")
    import dataclasses

    args = getattr(model, "args", None)
    if args is None or not dataclasses.is_dataclass(args):
        raise OspoError(
            "cannot recover the base model's config.json; pass --model as a model directory"
        )
    config = {k: v for k, v in dataclasses.asdict(args).items() if v is not None}
    quant = _quantization_of(model)
    if quant:
        config["quantization"] = quant
    return config


def _quantization_of(model: Any) -> dict[str, Any] | None:
    import mlx.nn as nn

    for _, module in model.named_modules():
        if isinstance(module, nn.QuantizedLinear):
            return {"group_size": module.group_size, "bits": module.bits}
    return None


def is_quantized(model: Any) -> bool:
    import mlx.nn as nn

    return any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()
    )


def fuse_adapters(model: Any, adapter_dir: Path, dequantize: bool = False) -> Any:
    """Load mlx-lm adapters onto `model` and merge them in place (W += scale * b.T @ a.T).

    With `dequantize`, every quantized layer (fused or not) becomes a float layer.
    """
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import dequantize_model

    try:
        model = load_adapters(model, str(adapter_dir))
    except ValueError as exc:
        raise OspoError(
            f"the adapters in {adapter_dir} do not fit the base model: {exc}".split("\n")[0]
        ) from exc
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
    return model


def hf_layout(model: Any, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, config) in transformers' layout: rotate-half RoPE rows, no MLX-only keys.

    A GGUF-converted llama (``rope_traditional: true``) has interleaved q/k rows; they are
    put back in transformers' order and the flag dropped, so both libraries agree.
    """
    from mlx.utils import tree_flatten

    config = dict(config)
    weights = dict(tree_flatten(model.parameters()))
    if config.get("rope_traditional", False):
        if config.get("model_type") != "llama":
            raise OspoError(
                f"cannot convert traditional RoPE of model_type {config.get('model_type')!r}; only llama"
            )
        for key in list(weights):
            module, _, leaf = key.rpartition(".")
            heads = rope_row_heads(module, config)
            if heads is not None and leaf in {"weight", "scales", "biases", "bias"}:
                # Rows are output features, so packed quantized rows permute like float ones.
                weights[key] = permute_rows_rotate_half(weights[key], heads)
        config["rope_traditional"] = False
    config.pop("_name_or_path", None)
    if config.get("model_type") == "llama":
        config.setdefault("architectures", ["LlamaForCausalLM"])
    return weights, config


def save_hf_model(
    out: Path,
    model: Any,
    tokenizer: Any,
    config: dict[str, Any],
    base_dir: Path | None = None,
) -> list[Path]:
    """Write config.json, model.safetensors and tokenizer files into `out`."""
    import mlx.core as mx

    weights, config = hf_layout(model, config)
    if not is_quantized(model):
        config.pop("quantization", None)
        config.pop("quantization_config", None)
        dtypes = {str(v.dtype).split(".")[-1] for v in weights.values()}
        if len(dtypes) == 1:
            config["dtype"] = dtypes.pop()
    elif "quantization" in config:
        config["quantization_config"] = config["quantization"]
    written = [write_json(out, "config.json", config)]
    target = safe_path(out, "model.safetensors")
    # "pt" metadata: transformers refuses safetensors files without a known format tag.
    mx.save_safetensors(str(target), weights, metadata={"format": "pt"})
    written.append(target)
    written += _save_tokenizer(out, tokenizer)
    if base_dir is not None:
        for name in COPY_FILES:
            if (base_dir / name).is_file() and not (out / name).exists():
                dst = safe_path(out, name)
                shutil.copyfile(base_dir / name, dst)
                written.append(dst)
    return written


def _save_tokenizer(out: Path, tokenizer: Any) -> list[Path]:
    before = {p.name for p in out.iterdir()}
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    if not hasattr(inner, "save_pretrained"):
        raise OspoError("the base model's tokenizer cannot be saved (no save_pretrained)")
    inner.save_pretrained(str(out))
    return [out / name for name in sorted({p.name for p in out.iterdir()} - before)]
