"""Export trained adapters: mlx-lm adapter dir, Hugging Face PEFT adapter, or fused model.

Public API:
    export(ExportArgs) -> ExportResult          the whole `ospo export` command
    resolve_source(run, adapters, model)        where the adapters and base model come from
    peft_state_dict / peft_adapter_config       pure mlx-lm -> PEFT conversion
    fuse_adapters / save_hf_model               merged model in Hugging Face layout
    render_model_card                           README.md of an export
    plan_upload / push_to_hub                   hub upload (dry run shows the plan)
"""

from ospo_mlx.export.card import render_model_card
from ospo_mlx.export.core import FORMATS, ExportArgs, ExportResult, export
from ospo_mlx.export.hub import UploadPlan, plan_upload, push_to_hub
from ospo_mlx.export.peft import peft_adapter_config, peft_state_dict
from ospo_mlx.export.source import AdapterSource, resolve_source

__all__ = [
    "FORMATS",
    "AdapterSource",
    "ExportArgs",
    "ExportResult",
    "UploadPlan",
    "export",
    "peft_adapter_config",
    "peft_state_dict",
    "plan_upload",
    "push_to_hub",
    "render_model_card",
    "resolve_source",
]
