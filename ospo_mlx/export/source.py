"""Where an export's inputs come from: a run directory or an adapter path plus a base model.

Everything read here is validated up front (adapter file, adapter config, base model name)
so a bad run directory fails with one clear line before any weights are written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ospo_mlx.errors import DataError, OspoError

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
LORA_LEAVES = ("lora_a", "lora_b")


@dataclass
class AdapterSource:
    """Resolved inputs of an export."""

    adapter_dir: Path = field(
        metadata={"help": "Directory with adapters.safetensors and adapter_config.json."}
    )
    adapter_config: dict[str, Any] = field(
        metadata={"help": "The parsed mlx-lm adapter_config.json."}
    )
    base_model: str = field(
        metadata={"help": "Base model name or path the adapters were trained on."}
    )
    run_dir: Path | None = field(
        default=None, metadata={"help": "The run directory, when exporting a run."}
    )
    train_config: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "The run's config.yaml."}
    )

    @property
    def fine_tune_type(self) -> str:
        return str(self.adapter_config.get("fine_tune_type", "lora"))

    def load_weights(self) -> dict[str, Any]:
        """The adapter tensors as MLX arrays, keyed like mlx-lm parameters."""
        import mlx.core as mx

        path = self.adapter_dir / ADAPTER_FILE
        try:
            weights = mx.load(str(path))
        except Exception as exc:  # mlx raises a bare RuntimeError/ValueError on a bad file
            raise DataError(
                f"cannot read {path}: {exc}; re-run training or point --adapters at a valid file"
            ) from exc
        validate_lora_weights(weights, self.adapter_config, path)
        return weights


def _read_yaml(path: Path) -> dict[str, Any]:
    from ospo_mlx.safety import load_yaml

    data = load_yaml(path, "run config") or {}
    if not isinstance(data, dict):
        raise DataError(f"{path} must be a YAML mapping of config keys")
    return data


DEFAULT_MODEL = "default"  # the embedded SmolLM2-135M-Instruct (config.yaml `model: {name: null}`)
# The hub checkpoint an embedded model was converted from: what PEFT and model cards name.
HUB_NAMES = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}


def hub_name(base_model: str) -> str:
    """The name a PEFT config / model card should give the base model."""
    return HUB_NAMES.get(base_model, base_model)


def model_from_config(config: dict[str, Any]) -> str | None:
    """The base model named by a run's config.yaml (`model: {name: NAME}`; null = the default)."""
    if "model" not in config:
        return None
    from ospo_mlx.config import config_from_run
    from ospo_mlx.errors import ConfigError

    try:  # the same reader as training and `ospo eval`
        name = config_from_run(config).model.name
        return str(name) if name else DEFAULT_MODEL
    except ConfigError:  # older run layouts: `model: NAME` or `model: {path: ...}`
        model = config["model"]
        if isinstance(model, dict):
            model = model.get("name") or model.get("path")
        return str(model) if model else DEFAULT_MODEL


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _run_adapter_dir(run_dir: Path) -> Path:
    """adapters/ of the run, or the checkpoint named by checkpoints/latest when adapters/ is absent."""
    adapters = run_dir / "adapters"
    if (adapters / ADAPTER_FILE).is_file():
        return adapters
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        # checkpoints/latest is data from disk: it must not lead outside the run directory.
        candidate = (run_dir / "checkpoints" / name) if name else None
        if candidate is None or not _inside(candidate, run_dir):
            raise DataError(
                f"{latest} names {name!r}, which is not a checkpoint inside the run; fix or delete it"
            )
        if (candidate / ADAPTER_FILE).is_file():
            return candidate
    raise DataError(
        f"no adapters in {run_dir} (expected adapters/{ADAPTER_FILE}); has the run saved a step yet?"
    )


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    """Parse and check an mlx-lm adapter_config.json."""
    path = adapter_dir / ADAPTER_CONFIG
    if not path.is_file():
        raise DataError(
            f"{path} is missing; an mlx-lm adapter directory needs {ADAPTER_FILE} and {ADAPTER_CONFIG}"
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON (line {exc.lineno}); regenerate it") from exc
    if not isinstance(config, dict):
        raise DataError(f"{path} must hold a JSON object")
    fine_tune_type = config.get("fine_tune_type", "lora")
    if fine_tune_type not in {"lora", "dora", "full"}:
        raise DataError(
            f"{path}: unknown fine_tune_type {fine_tune_type!r} (expected lora, dora or full)"
        )
    if fine_tune_type != "full":
        params = config.get("lora_parameters")
        if not isinstance(params, dict) or not {"rank", "scale"} <= params.keys():
            raise DataError(
                f"{path}: lora_parameters must give rank and scale (mlx-lm's LoRA config)"
            )
        if "num_layers" not in config:
            raise DataError(f"{path}: num_layers is missing (mlx-lm's LoRA config)")
    return config


def validate_lora_weights(weights: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Check that every LoRA module has both factors with the configured rank."""
    if config.get("fine_tune_type", "lora") == "full":
        return
    if not weights:
        raise DataError(f"{path} holds no tensors; re-run training or export another checkpoint")
    rank = int(config["lora_parameters"]["rank"])
    modules: dict[str, set[str]] = {}
    for key in weights:
        prefix, _, leaf = key.rpartition(".")
        if leaf not in (*LORA_LEAVES, "m"):
            raise DataError(
                f"{path}: unexpected tensor {key!r} (LoRA adapters hold only lora_a/lora_b)"
            )
        modules.setdefault(prefix, set()).add(leaf)
    for prefix, leaves in modules.items():
        if not set(LORA_LEAVES) <= leaves:
            raise DataError(
                f"{path}: {prefix} has {sorted(leaves)} but needs both lora_a and lora_b"
            )
        a, b = weights[f"{prefix}.lora_a"], weights[f"{prefix}.lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != rank or b.shape[0] != rank:
            raise DataError(
                f"{path}: {prefix} has lora_a {tuple(a.shape)} and lora_b {tuple(b.shape)}, "
                f"not (in, {rank}) and ({rank}, out) for rank {rank} in the adapter config"
            )


def resolve_source(
    run: Path | str | None = None,
    adapters: Path | str | None = None,
    model: str | None = None,
) -> AdapterSource:
    """Resolve `--run DIR` or `--adapters PATH --model M` (model overrides the run's config)."""
    if (run is None) == (adapters is None):
        raise OspoError("give exactly one of --run DIR or --adapters PATH (with --model M)")
    train_config: dict[str, Any] = {}
    run_dir = None
    if run is not None:
        run_dir = Path(run)
        if not run_dir.is_dir():
            raise DataError(
                f"run directory {run_dir} does not exist; pass the directory `ospo train` wrote"
            )
        if (run_dir / "config.yaml").is_file():
            train_config = _read_yaml(run_dir / "config.yaml")
        adapter_dir = _run_adapter_dir(run_dir)
    else:
        adapter_dir = Path(adapters)  # type: ignore[arg-type]
        if adapter_dir.is_file() and adapter_dir.name == ADAPTER_FILE:
            adapter_dir = adapter_dir.parent
        if not (adapter_dir / ADAPTER_FILE).is_file():
            raise DataError(
                f"{adapter_dir / ADAPTER_FILE} not found; --adapters takes an mlx-lm adapter directory"
            )
        # Adapters inside a run (RUN/warmup, RUN/checkpoints/step_N): that run's config applies.
        for parent in (adapter_dir.parent, adapter_dir.parent.parent):
            if (parent / "config.yaml").is_file() and (parent / "metrics.jsonl").is_file():
                train_config = _read_yaml(parent / "config.yaml")
                break
    config = read_adapter_config(adapter_dir)
    base = model or model_from_config(train_config) or config.get("model")
    if not base:
        raise OspoError(f"cannot tell the base model of {adapter_dir}; pass --model NAME_OR_PATH")
    return AdapterSource(
        adapter_dir=adapter_dir,
        adapter_config=config,
        base_model=str(base),
        run_dir=run_dir,
        train_config=train_config,
    )
