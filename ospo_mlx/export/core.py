"""`ospo export`: adapters of a run -> an mlx-lm adapter dir, a PEFT adapter or a fused model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ospo_mlx.errors import ConfigError
from ospo_mlx.export.card import read_eval_report, render_model_card
from ospo_mlx.export.hub import UploadPlan, check_repo_id, plan_upload, push_to_hub
from ospo_mlx.export.paths import list_files, prepare_out_dir, safe_path, write_json, write_text
from ospo_mlx.export.peft import lora_module_names, peft_adapter_config, peft_state_dict
from ospo_mlx.export.source import (
    ADAPTER_CONFIG,
    ADAPTER_FILE,
    DEFAULT_MODEL,
    AdapterSource,
    hub_name,
    resolve_source,
)
from ospo_mlx.safety import load_json

FORMATS = ("mlx", "peft", "fused")


@dataclass
class ExportArgs:
    """Options of `ospo export`."""

    out: Path = field(
        metadata={"help": "Directory to write the export into (must be empty unless force)."}
    )
    format: Literal["mlx", "peft", "fused"] = field(
        default="mlx", metadata={"help": "mlx, peft or fused."}
    )
    run: Path | None = field(
        default=None, metadata={"help": "Run directory written by `ospo train`."}
    )
    adapters: Path | None = field(
        default=None, metadata={"help": "mlx-lm adapter directory (instead of run)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Base model; overrides the run's config."}
    )
    dequantize: bool = field(
        default=False, metadata={"help": "fused: write float weights from a quantized base."}
    )
    force: bool = field(default=False, metadata={"help": "Write into a non-empty out directory."})
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub repo id to upload the export to."}
    )
    private: bool = field(default=False, metadata={"help": "Create the hub repo as private."})
    dry_run: bool = field(
        default=False, metadata={"help": "Show the upload plan instead of uploading."}
    )


@dataclass
class ExportResult:
    """What an export wrote (and uploaded)."""

    out: Path
    format: str
    base_model: str
    files: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    upload: UploadPlan | None = None
    url: str | None = None


def _read_metrics(run_dir: Path | None, notes: list[str]) -> list[dict[str, Any]]:
    if run_dir is None:
        return []
    from ospo_mlx.plot import read_metrics

    rows, skipped = read_metrics(run_dir)
    if skipped:
        notes.append(f"skipped {skipped} unreadable line(s) of metrics.jsonl")
    return rows


def export_mlx(source: AdapterSource, out: Path) -> None:
    """A clean mlx-lm adapter directory (what `mlx_lm.generate --adapter-path` reads)."""
    source.load_weights()  # validates the tensors before anything is copied
    shutil.copyfile(source.adapter_dir / ADAPTER_FILE, safe_path(out, ADAPTER_FILE))
    config = dict(source.adapter_config)
    config.setdefault("fine_tune_type", "lora")
    if config["fine_tune_type"] != "full":
        params = dict(config["lora_parameters"])
        params.setdefault("dropout", 0.0)
        config["lora_parameters"] = params
    config["model"] = hub_name(source.base_model)
    write_json(out, ADAPTER_CONFIG, config)


def _base_config(source: AdapterSource) -> dict[str, Any]:
    """The base model's config.json (read from disk when local, else from the loaded model)."""
    path = Path(source.base_model)
    if source.base_model != DEFAULT_MODEL and (path / "config.json").is_file():
        return load_json(path / "config.json", "base model config")
    from ospo_mlx.export.fused import load_base

    return load_base(source.base_model)[2]


def export_peft(source: AdapterSource, out: Path) -> None:
    """A PEFT LoRA adapter: adapter_model.safetensors + adapter_config.json."""
    from safetensors.numpy import save_file

    weights = source.load_weights()
    base_config = _base_config(source)
    modules = lora_module_names(weights)
    config = peft_adapter_config(
        source.adapter_config,
        modules,
        hub_name(source.base_model),
        base_config.get("num_hidden_layers"),
    )
    tensors = peft_state_dict(weights, base_config)
    save_file(tensors, str(safe_path(out, "adapter_model.safetensors")), metadata={"format": "pt"})
    write_json(out, "adapter_config.json", config)


def export_fused(source: AdapterSource, out: Path, dequantize: bool, notes: list[str]) -> None:
    """The base model with the adapters merged, in Hugging Face layout."""
    from ospo_mlx.export.fused import fuse_adapters, is_quantized, load_base, save_hf_model

    model, tokenizer, config, base_dir = load_base(source.base_model)
    model = fuse_adapters(model, source.adapter_dir, dequantize=dequantize)
    if is_quantized(model):
        notes.append(
            "the base is quantized: fused weights were re-quantized (mlx-lm's behaviour); "
            "the export loads in MLX only, use --dequantize for transformers"
        )
    save_hf_model(out, model, tokenizer, config, base_dir)


def export(args: ExportArgs) -> ExportResult:
    """Run one export end to end (validate, write, model card, optional upload)."""
    if args.format not in FORMATS:
        raise ConfigError(f"--format {args.format!r} is not one of {', '.join(FORMATS)}")
    if args.dequantize and args.format != "fused":
        raise ConfigError("--dequantize applies to --format fused only")
    if args.dry_run and not args.push_to_hub:
        raise ConfigError("--dry-run shows a hub upload; pass it with --push-to-hub REPO")
    if args.push_to_hub:
        check_repo_id(args.push_to_hub)
    source = resolve_source(args.run, args.adapters, args.model)
    out = prepare_out_dir(args.out, args.force)
    notes: list[str] = []
    if args.format == "mlx":
        export_mlx(source, out)
    elif args.format == "peft":
        export_peft(source, out)
    else:
        export_fused(source, out, args.dequantize, notes)
    card = render_model_card(
        export_format=args.format,
        base_model=hub_name(source.base_model),
        train_config=source.train_config,
        metrics_rows=_read_metrics(source.run_dir, notes),
        eval_report=read_eval_report(source.run_dir),
        repo=args.push_to_hub,
        run_name=source.run_dir.name if source.run_dir else None,
    )
    write_text(out, "README.md", card)
    result = ExportResult(out=out, format=args.format, base_model=source.base_model, notes=notes)
    result.files = list_files(out)
    if args.push_to_hub:
        result.upload = plan_upload(out, args.push_to_hub, args.private)
        if not args.dry_run:
            result.url = push_to_hub(result.upload)
    return result


__all__ = [
    "FORMATS",
    "ExportArgs",
    "ExportResult",
    "export",
    "export_fused",
    "export_mlx",
    "export_peft",
]
