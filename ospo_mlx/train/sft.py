"""Supervised warm-up: teach the answer format with LoRA SFT before reinforcement learning.

A 135M-parameter instruct model rarely closes `<answer>...</answer>` on its own, so RL would
spend its first steps learning the format instead of the task. The warm-up trains on
prompt -> "<answer>QUERY CATEGORY</answer>" targets built from the training tasks: the query
plus the category of its best product, never the product's hidden attributes, so the task
itself (inferring what the shopper wants) is still left for RL to learn.

The adapters are saved in mlx-lm's format; `load_adapter_weights` puts them into a model that
already carries LoRA layers of the same shape (e.g. a `Trainer`'s), so GRPO and OSPO can both
start from the same warm-up.
"""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from ospo_mlx.config import WarmupConfig
from ospo_mlx.data.prompts import PromptConfig, encode_prompt
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.safety import load_tensors
from ospo_mlx.train.batching import Batch, pack_batch
from ospo_mlx.train.checkpoint import ADAPTER_CONFIG, ADAPTER_FILE, save_adapters
from ospo_mlx.train.policy import completion_log_probs
from ospo_mlx.train.step import CompiledStep

METRICS_FILE = "sft_metrics.jsonl"


@dataclass
class SFTConfig(WarmupConfig):
    """Options of the supervised warm-up: the config's `sft` section plus library knobs."""

    steps: int = field(default=30, metadata={"help": "Supervised optimizer updates."})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "Clip the global gradient norm; null = off."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the LoRA init and example order."})

    def validate(self) -> SFTConfig:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(
                f"sft: steps and batch_size must be at least 1, got {self.steps}, {self.batch_size}"
            )
        if self.learning_rate <= 0:
            raise ConfigError(f"sft.learning_rate: must be > 0, got {self.learning_rate}")
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ConfigError(f"sft.max_tasks: must be at least 1 or null, got {self.max_tasks}")
        return self


@dataclass
class SFTExample:
    task_id: str
    prompt: list[int]  # chat-templated prompt ids, ending where the reply begins
    target: list[int]  # reply ids, ending with the end-of-turn token
    text: str  # the reply text (without the end-of-turn token)


# ----------------------------------------------------------------------------- targets


def _best_target(task: Task, catalog: Mapping[str, Product]) -> Product | None:
    best = max(task.targets.items(), key=lambda kv: (kv[1], kv[0]), default=None)
    return catalog.get(best[0]) if best else None


def warmup_answer(task: Task, catalog: Mapping[str, Product]) -> str:
    """The warm-up answer: words the prompt already implies, never the hidden attributes.

    choice tasks (with candidates): two or three of the listed phrases, drawn per task.
    query_expansion: the query, plus the category of its best product when the query does not
    already contain it. shopper_profile: the history's most common category and last title.
    """
    if task.candidates:  # the choice task: a random few of the listed phrases, not the right ones
        rng = np.random.default_rng(zlib.crc32(task.id.encode("utf-8")))
        size = min(len(task.candidates), int(rng.integers(2, 4)))
        picked = sorted(rng.choice(len(task.candidates), size=size, replace=False))
        return ", ".join(task.candidates[i] for i in picked)
    if task.kind == "query_expansion":
        query = (task.query or "").strip()
        product = _best_target(task, catalog)
        category = (product.category or "").strip() if product else ""
        if category and category.lower() not in query.lower():
            return f"{query} {category}".strip()
        return query
    items = [catalog[h.product_id] for h in task.history if h.product_id in catalog]
    if not items:
        raise OspoError(f"task '{task.id}': no history product is in the catalog")
    categories = Counter(p.category for p in items if p.category)
    last = items[-1].title
    if categories:
        return f"{categories.most_common(1)[0][0]} like {last}"
    return f"something like {last}"


def warmup_completion(
    task: Task, catalog: Mapping[str, Product], prompt: PromptConfig | None = None
) -> str:
    """The full warm-up reply: the answer inside the configured answer tags."""
    open_tag, close_tag = (prompt or PromptConfig()).answer_tags
    return f"{open_tag}{warmup_answer(task, catalog)}{close_tag}"


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # tokenizers without the keyword
        ids = tokenizer.encode(text)
    return [int(t) for t in ids]


def build_examples(
    tokenizer: Any,
    tasks: Sequence[Task],
    catalog: Mapping[str, Product],
    prompt: PromptConfig | None = None,
) -> list[SFTExample]:
    """One (prompt ids, reply ids) example per task; the reply ends with the EOS token."""
    prompt = prompt or PromptConfig()
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise OspoError("the tokenizer has no eos_token_id; the warm-up cannot teach it to stop")
    examples = []
    for task in tasks:
        text = warmup_completion(task, catalog, prompt)
        examples.append(
            SFTExample(
                task.id,
                encode_prompt(tokenizer, task, catalog, prompt),
                [*_encode_text(tokenizer, text), int(eos)],
                text,
            )
        )
    return examples


# ----------------------------------------------------------------------------- loss and loop


def sft_loss(
    model: nn.Module, tokens: mx.array, prompt_lens: mx.array, mask: mx.array
) -> tuple[mx.array, mx.array]:
    """Mean negative log-likelihood per reply token (mask (B, T)), and the token count."""
    logps, _ = completion_log_probs(model, tokens, prompt_lens, mask.shape[1])
    ntokens = mask.sum()
    return -(logps * mask).sum() / mx.maximum(ntokens, 1.0), ntokens


def pack_examples(examples: Sequence[SFTExample], pad_id: int) -> Batch:
    """A Batch whose mask covers each reply (advantages unused: set to 1)."""
    targets = [e.target for e in examples]
    return pack_batch(
        [e.prompt for e in examples], targets, [[1.0] * len(t) for t in targets], pad_id=pad_id
    )


def example_order(count: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices of each step's examples: seeded per-epoch shuffles, read in consecutive chunks."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch_size:
        order.extend(int(i) for i in np.random.default_rng([seed, epoch]).permutation(count))
        epoch += 1
    return [order[s * batch_size : (s + 1) * batch_size] for s in range(steps)]


def sft_step(
    model: nn.Module, optimizer: optim.Optimizer, cfg: SFTConfig, compile: bool = True
) -> CompiledStep:
    """The warm-up's compiled step: the RL update's builder (train/step.py) on `sft_loss`.

    The random state is compiled in, so LoRA dropout draws a new mask on every call.
    """
    return CompiledStep(
        model, optimizer, sft_loss, max_grad_norm=cfg.max_grad_norm, compile=compile
    )


def train_sft(
    model: nn.Module,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    *,
    pad_id: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    compile: bool = True,
) -> list[dict[str, float]]:
    """Train the model's trainable (LoRA) parameters on `examples`; returns one row per step."""
    cfg.validate()
    if not examples:
        raise OspoError("the warm-up has no examples; check data.train and sft.max_tasks")
    if not tree_flatten(model.trainable_parameters()):
        raise OspoError("the model has no trainable parameters; add LoRA layers before the warm-up")
    schedule = optim.cosine_decay(cfg.learning_rate, cfg.steps, cfg.learning_rate * 0.1)
    optimizer = optim.AdamW(learning_rate=schedule, weight_decay=0.0, bias_correction=True)
    step = sft_step(model, optimizer, cfg, compile=compile)

    model.train()
    rows = []
    for i, idx in enumerate(example_order(len(examples), cfg.steps, cfg.batch_size, cfg.seed), 1):
        start = time.perf_counter()
        batch = pack_examples([examples[j] for j in idx], pad_id)
        loss, ntokens, acc = step.accumulate(
            step.zeros(), batch.tokens, batch.prompt_lens, batch.mask
        )
        mx.eval(step.state, loss, ntokens, acc)
        norm = step.apply(acc)
        elapsed = time.perf_counter() - start
        row = {
            "step": i,
            "loss": loss.item(),
            "grad_norm": norm.item(),
            "learning_rate": float(optimizer.learning_rate.item()),
            "tokens": int(ntokens.item()),
            "time/step": elapsed,
        }
        rows.append(row)
        if on_step is not None:
            on_step(i, row)
        if not np.isfinite(row["loss"]):
            raise OspoError(f"sft step {i}: the loss is not finite; lower sft.learning_rate")
    return rows


# ----------------------------------------------------------------------------- whole warm-up


@dataclass
class SFTResult:
    adapter_dir: Path | None  # None when the adapters were not written
    metrics: list[dict[str, float]]
    examples: int
    seconds: float


def run_sft(
    config: Any,
    sft: SFTConfig,
    out: str | Path,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> SFTResult:
    """Warm up `config`'s model (a TrainConfig: model, lora, data, prompt) and save adapters.

    Writes `out/adapters.safetensors`, `out/adapter_config.json` (mlx-lm format, so
    `mlx_lm.load(model, adapter_path=out)` works) and `out/sft_metrics.jsonl`.
    """
    from ospo_mlx.data.schema import load_catalog, load_tasks
    from ospo_mlx.models.load import load_model
    from ospo_mlx.train.policy import apply_lora

    sft.validate()
    start = time.perf_counter()
    catalog = load_catalog(config.data.catalog)
    tasks = load_tasks(config.data.train, catalog)
    model, tokenizer = load_model(config.model.name)
    apply_lora(model, config.lora, seed=sft.seed)
    result = warm_up_model(
        model, tokenizer, tasks, catalog, config.prompt, sft,
        out=out, lora=config.lora, on_step=on_step,
    )  # fmt: skip
    result.seconds = time.perf_counter() - start
    return result


def warm_up_model(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[Task],
    catalog: Mapping[str, Product],
    prompt: PromptConfig,
    sft: SFTConfig,
    *,
    out: str | Path | None = None,
    lora: Any = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    compile: bool = True,
) -> SFTResult:
    """Warm up a model that already carries its LoRA layers (e.g. a Trainer's), in place.

    With `out` (and the `lora` settings the layers were made with), also writes the warm-up
    adapters in mlx-lm's format and `sft_metrics.jsonl` there.
    """
    from ospo_mlx.train.policy import adapter_config, adapter_weights

    start = time.perf_counter()
    examples = build_examples(tokenizer, list(tasks)[: sft.max_tasks], catalog, prompt)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else tokenizer.eos_token_id
    rows = train_sft(model, examples, sft, pad_id=int(pad), on_step=on_step, compile=compile)
    if out is not None:
        out = Path(out)
        save_adapters(out, adapter_weights(model), adapter_config(model, lora))
        (out / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return SFTResult(out, rows, len(examples), time.perf_counter() - start)


def load_adapter_weights(model: nn.Module, directory: str | Path) -> int:
    """Load mlx-lm adapters into a model that already has matching LoRA layers; returns count.

    The keys and shapes must match the model's trainable parameters exactly (same rank,
    layers and keys as the warm-up), so a mismatch is an error rather than a partial load.
    """
    path = Path(directory) / ADAPTER_FILE
    if not path.is_file():
        raise OspoError(f"{path} not found; run the warm-up first or pass its adapter directory")
    weights = load_tensors(path, "warm-up adapters")
    expected = dict(tree_flatten(model.trainable_parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        detail = f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}"
        raise OspoError(
            f"{path}: adapters do not match the model's LoRA layers ({detail}); "
            f"use the same lora settings as in {Path(directory) / ADAPTER_CONFIG}"
        )
    for key, value in weights.items():
        if value.shape != expected[key].shape:
            raise OspoError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(expected[key].shape)}; use the lora settings of "
                f"{Path(directory) / ADAPTER_CONFIG}"
            )
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return len(weights)
