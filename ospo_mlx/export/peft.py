"""mlx-lm LoRA adapters -> a Hugging Face PEFT LoRA adapter (pure functions over arrays).

mlx-lm computes ``y = W x + scale * (x @ lora_a) @ lora_b`` with lora_a (in, r) and
lora_b (r, out); PEFT computes ``y = W x + (lora_alpha / r) * B(A(x))`` with A.weight (r, in)
and B.weight (out, r). So A = lora_a.T, B = lora_b.T and lora_alpha = scale * r.
mlx-lm parameter paths equal transformers module paths for the llama family (llama,
mistral, qwen2/3, ...), so names carry over with PEFT's ``base_model.model.`` prefix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from ospo_mlx.errors import OspoError

PEFT_PREFIX = "base_model.model."
_LAYER = re.compile(r"^(?P<stem>.*\.layers)\.(?P<index>\d+)\.(?P<module>.+)$")


def _np(value: Any) -> np.ndarray:
    """NumPy copy of an MLX/NumPy tensor (bfloat16, which NumPy lacks, becomes float32)."""
    if "bfloat16" in str(getattr(value, "dtype", "")):
        import mlx.core as mx

        value = value.astype(mx.float32)
    return np.asarray(value)


def _lora_modules(weights: Mapping[str, Any]) -> list[str]:
    return sorted({key.rpartition(".")[0] for key in weights if key.endswith(".lora_a")})


def permute_rows_rotate_half(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo GGUF's q/k row interleave: traditional (pairwise) RoPE rows -> rotate-half rows.

    GGUF stores llama q_proj/k_proj with each head's rows reordered so that the pairs RoPE
    rotates are adjacent; transformers rotates (i, i + d/2). Applying this to the output
    rows of q and k (same permutation for both) leaves attention scores unchanged.
    """
    rows = w.shape[0]
    head_dim = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def rope_row_heads(module: str, model_config: Mapping[str, Any] | None) -> int | None:
    """Heads to un-interleave for `module` when the base uses traditional RoPE, else None."""
    if not model_config or not model_config.get("rope_traditional", False):
        return None
    leaf = module.rsplit(".", 1)[-1]
    if leaf == "q_proj":
        return int(model_config["num_attention_heads"])
    if leaf == "k_proj":
        return int(model_config.get("num_key_value_heads") or model_config["num_attention_heads"])
    return None


def peft_state_dict(
    weights: Mapping[str, Any], model_config: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """PEFT tensors (``...lora_A.weight`` (r, in), ``...lora_B.weight`` (out, r)) from mlx-lm's.

    With a traditional-RoPE base (GGUF-converted llama), q/k LoRA outputs are re-ordered to
    transformers' rotate-half layout so the adapter applies to the original HF checkpoint.
    """
    out: dict[str, np.ndarray] = {}
    for module in _lora_modules(weights):
        a = _np(weights[f"{module}.lora_a"])
        b = _np(weights[f"{module}.lora_b"])
        lora_b = b.T
        if (heads := rope_row_heads(module, model_config)) is not None:
            lora_b = permute_rows_rotate_half(lora_b, heads)
        out[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
        out[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(lora_b)
    return out


def peft_targets(modules: list[str], num_hidden_layers: int | None) -> dict[str, Any]:
    """target_modules (+ layers_to_transform) that select exactly `modules` in PEFT.

    When the adapted modules are a full grid of (layers x module names), PEFT's list form is
    used; otherwise a regex that full-matches each adapted module path.
    """
    grid: dict[str, set[int]] = {}
    stems = set()
    regular = True
    for module in modules:
        match = _LAYER.match(module)
        if match is None:
            regular = False
            break
        stems.add(match["stem"])
        grid.setdefault(match["module"], set()).add(int(match["index"]))
    layer_sets = {frozenset(v) for v in grid.values()}
    if regular and len(stems) == 1 and len(layer_sets) == 1:
        names = sorted(grid)
        leaves = sorted({name.rsplit(".", 1)[-1] for name in names})
        # PEFT matches a list entry against the end of each module path; fall back to the
        # full "self_attn.q_proj" suffix when leaf names alone would be ambiguous.
        targets = leaves if len(leaves) == len(names) else names
        layers = sorted(next(iter(layer_sets)))
        config: dict[str, Any] = {"target_modules": targets}
        if num_hidden_layers is None or layers != list(range(num_hidden_layers)):
            config["layers_to_transform"] = layers
            config["layers_pattern"] = next(iter(stems)).rsplit(".", 1)[-1]
        return config
    pattern = "|".join(re.escape(m) for m in modules)
    return {"target_modules": f"^(?:{pattern})$"}


def peft_adapter_config(
    adapter_config: Mapping[str, Any],
    modules: list[str],
    base_model_name_or_path: str,
    num_hidden_layers: int | None,
) -> dict[str, Any]:
    """PEFT's adapter_config.json for mlx-lm LoRA settings."""
    fine_tune_type = adapter_config.get("fine_tune_type", "lora")
    if fine_tune_type != "lora":
        raise OspoError(
            f"--format peft supports LoRA adapters only, not {fine_tune_type!r}; use --format fused or mlx"
        )
    params = adapter_config["lora_parameters"]
    rank = int(params["rank"])
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": float(params["scale"]) * rank,
        "lora_dropout": float(params.get("dropout", 0.0)),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    config.update(peft_targets(modules, num_hidden_layers))
    return config


def lora_module_names(weights: Mapping[str, Any]) -> list[str]:
    """Sorted module paths that carry a LoRA pair (e.g. ``model.layers.3.self_attn.q_proj``)."""
    return _lora_modules(weights)
