"""Untrusted files: what ospo agrees to load, and where it agrees to write.

Run directories, adapters, model directories and data files may come from someone else. ospo
loads only safetensors (and GGUF tensors), JSON and YAML through the safe loader, never pickle;
it refuses tensors whose names or shapes do not fit the model before `load_weights`; and file
names taken from data never escape the directory they are meant for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ospo_mlx.errors import DataError, OspoError

# Formats ospo reads tensors from: both are plain headers + raw buffers (no code execution).
TENSOR_SUFFIXES = (".safetensors", ".gguf")
# Weight files that need pickle to read; ospo refuses them instead of unpickling.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".npy", ".npz")


# ----------------------------------------------------------------------------- paths


def inside(root: Path | str, name: Path | str, what: str = "path") -> Path:
    """`root / name`, refusing absolute names, `..` parts and symlinks that resolve outside.

    Returns the joined (unresolved) path; nothing is created.
    """
    root, name = Path(root), Path(name)
    if name.is_absolute() or ".." in name.parts:
        raise OspoError(f"{what} {str(name)!r} must be a plain relative name inside {root}")
    target = root / name
    base = root.resolve()
    resolved = target.resolve()
    if resolved != base and base not in resolved.parents:
        raise OspoError(f"{what} {target} resolves outside {root}; use a name without links out")
    return target


def check_run_name(name: str) -> str:
    """A run name becomes runs/<name>: one path component, no separators, no dot names."""
    if not name or name in {".", ".."} or re.search(r"[/\\\x00]", name):
        raise OspoError(
            f"run.name {name!r} must be a single directory name (no '/', '\\\\' or '..'); "
            "use run.out for a path"
        )
    return name


# ----------------------------------------------------------------------------- loaders


def load_json(path: Path | str, what: str = "JSON file") -> Any:
    """Parse a JSON file; a missing or malformed file is a one-line DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: invalid {what} ({exc}); fix or regenerate it") from None


def load_yaml(path: Path | str, what: str = "YAML file") -> Any:
    """Parse YAML with the safe loader (plain data only: no Python object tags)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: invalid {what} ({first}); fix or regenerate it") from None


def load_tensors(path: Path | str, what: str = "weights") -> dict[str, Any]:
    """mx.load a safetensors/GGUF file; pickle-based formats and corrupt files are refused."""
    import mlx.core as mx

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise DataError(
            f"{path}: {what} in a pickle-based format are not loaded (they can run code); "
            "convert them to .safetensors"
        )
    if suffix not in TENSOR_SUFFIXES:
        raise DataError(f"{path}: {what} must be a .safetensors file")
    if not path.is_file():
        raise DataError(f"{what} {path} not found")
    try:
        return dict(mx.load(str(path)))
    except Exception as exc:  # mlx raises bare RuntimeError/ValueError on a bad header
        raise DataError(
            f"{path}: cannot read {what} ({exc}); the file is corrupt or truncated"
        ) from None


def check_model_dir(path: Path | str) -> Path:
    """A local model directory must hold config.json and safetensors/GGUF weights, not pickles."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"model directory {path} not found")
    files = [p.name for p in path.iterdir() if p.is_file()]
    if path.suffix.lower() == ".gguf":
        return path
    has_tensors = any(f.endswith(TENSOR_SUFFIXES) for f in files)
    if not has_tensors:
        pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise DataError(
                f"{path}: only pickle weights ({pickles[0]}); ospo loads safetensors only, "
                "convert with `mlx_lm.convert` or save with safe_serialization=True"
            )
        raise DataError(f"{path}: no .safetensors weights in the model directory")
    if "config.json" not in files:
        raise DataError(f"{path}: config.json is missing; copy the base model's config.json")
    return path


# ----------------------------------------------------------------------------- shapes


def check_weight_shapes(
    expected: Mapping[str, Any],
    weights: Mapping[str, Any],
    source: Path | str,
    hint: str = "they were made for another base model or LoRA setting",
    exact: bool = True,
) -> None:
    """Refuse `weights` unless every tensor names a parameter of the same shape.

    `expected` is the model's flat parameter dict (e.g. trainable_parameters()); with `exact`,
    every expected name must also be present. Runs before `load_weights`, which would
    otherwise accept mismatched shapes with strict=False and fail later, far from the cause.
    """
    unknown = sorted(k for k in weights if k not in expected)
    if unknown:
        raise DataError(f"{source}: tensor {unknown[0]!r} is not a parameter of the model; {hint}")
    for key, value in weights.items():
        want, got = tuple(expected[key].shape), tuple(value.shape)
        if want != got:
            raise DataError(f"{source}: {key} has shape {got}, the model expects {want}; {hint}")
    if exact:
        missing = sorted(k for k in expected if k not in weights)
        if missing:
            raise DataError(
                f"{source}: tensor {missing[0]!r} is missing ({len(missing)} in all); {hint}"
            )


def load_adapters_checked(model: Any, adapter_dir: Path | str) -> Any:
    """mlx-lm adapters onto `model` after checking config, format and shapes (OspoError otherwise).

    Equivalent to `mlx_lm.tuner.utils.load_adapters` on good input.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    adapter_dir = Path(adapter_dir)
    config = load_json(adapter_dir / "adapter_config.json", "adapter config")
    if not isinstance(config, dict):
        raise DataError(f"{adapter_dir / 'adapter_config.json'}: expected a JSON object")
    kind = config.get("fine_tune_type", "lora")
    if kind not in {"lora", "dora"}:
        raise DataError(
            f"{adapter_dir}: fine_tune_type {kind!r} is not supported; expected lora or dora"
        )
    weights = load_tensors(adapter_dir / "adapters.safetensors", "adapters")
    try:
        linear_to_lora_layers(model, int(config["num_layers"]), dict(config["lora_parameters"]),
                              use_dora=kind == "dora")  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{adapter_dir / 'adapter_config.json'}: cannot apply these adapters to the model ({exc}); "
            "they were made for another base model"
        ) from None
    leaves = {"lora_a", "lora_b", "m"}
    expected = {k: v for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in leaves}
    check_weight_shapes(expected, weights, adapter_dir / "adapters.safetensors", exact=False)
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return model


# ----------------------------------------------------------------------------- audit

# Source patterns that would load untrusted data with code execution.
_FORBIDDEN = (
    (
        re.compile(
            r"^\s*(import pickle|from pickle|import cPickle|import dill|import joblib)", re.M
        ),
        "pickle import",
    ),
    (re.compile(r"\btorch\.load\("), "torch.load"),
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"\byaml\.(load|unsafe_load|full_load)\("), "unsafe YAML loader"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "hard-coded remote code trust"),
)
_NP_LOAD = re.compile(r"\bnp\.load\(([^()]|\([^()]*\))*\)", re.S)


def audit_source(files: Iterable[Path]) -> list[str]:
    """'path:line: problem' for each unsafe loading pattern in the given Python files."""
    problems = []
    for path in files:
        text = Path(path).read_text(encoding="utf-8")
        for pattern, label in _FORBIDDEN:
            for m in pattern.finditer(text):
                problems.append(f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {label}")
        for m in _NP_LOAD.finditer(text):
            if "allow_pickle=False" not in m.group(0):
                problems.append(
                    f"{path}:{text.count(chr(10), 0, m.start()) + 1}: np.load without allow_pickle=False"
                )
    return problems
