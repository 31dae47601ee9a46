"""Tasks and catalogs: records (schema), converters (esci, hm, synthetic) and prompts."""

from ospo_mlx.data.prompts import PromptConfig, build_messages, encode_prompt, prompt_preview
from ospo_mlx.data.report import ConversionReport, write_dataset
from ospo_mlx.data.schema import (
    HistoryItem,
    Product,
    Task,
    load_catalog,
    load_tasks,
    product_text,
)

__all__ = [
    "ConversionReport",
    "HistoryItem",
    "Product",
    "PromptConfig",
    "Task",
    "build_messages",
    "encode_prompt",
    "load_catalog",
    "load_tasks",
    "product_text",
    "prompt_preview",
    "write_dataset",
]
