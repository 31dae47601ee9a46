"""Training configuration: dataclasses with help text, YAML files and `--set` overrides.

The generic typed-option machinery lives in `ospo_mlx.options`; this module holds the sections,
their cross-field checks, and loading/dumping.

Precedence is CLI > YAML > defaults. Every key and value is validated against the dataclass
type hints; unknown keys and bad values raise a one-line ConfigError naming the key (with the
closest valid key suggested).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.data.prompts import PromptConfig
from ospo_mlx.errors import ConfigError
from ospo_mlx.options import apply_options, nest, parse_override
from ospo_mlx.reward.config import RewardConfig, legacy_empty_value


@dataclass
class ModelConfig:
    name: str | None = field(
        default=None,
        metadata={
            "help": "mlx-lm model path or HF repo id; null = embedded SmolLM2-135M; 'tiny' = test model."
        },
    )
    dequantize: bool | None = field(
        default=None,
        metadata={
            "help": "Use float weights of a quantized model; null = only on CPU, where quantized matmuls are slow."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Let the model/tokenizer run Python code shipped with it (only for sources you trust)."
        },
    )
    adapters: str | None = field(
        default=None,
        metadata={
            "help": "Start from these mlx-lm adapters (e.g. an earlier run's adapters/, made with "
            "the same lora settings); null = fresh LoRA."
        },
    )


@dataclass
class LoraConfig:
    rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    scale: float = field(
        default=20.0, metadata={"help": "Scale of the low-rank update (mlx-lm convention)."}
    )
    alpha: float | None = field(
        default=None, metadata={"help": "PEFT-style alpha; when set, scale = alpha / rank."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    num_layers: int = field(
        default=-1, metadata={"help": "Adapt the last N transformer blocks; -1 = all."}
    )
    keys: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module keys inside a block to adapt (e.g. self_attn.q_proj); null = every linear layer."
        },
    )

    @property
    def effective_scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else self.scale


@dataclass
class DataConfig:
    catalog: str = field(default="data/demo/catalog.jsonl", metadata={"help": "Catalog JSONL."})
    train: str = field(default="data/demo/train.jsonl", metadata={"help": "Training tasks JSONL."})
    max_tasks: int | None = field(
        default=None, metadata={"help": "Use only the first N training tasks."}
    )


@dataclass
class SamplingConfig:
    """How completions are sampled (TRL GRPOConfig names where they exist); the group size is
    `optim.num_generations`, the seed `run.seed` (`sample_groups` takes both as arguments)."""

    max_new_tokens: int = field(
        default=48, metadata={"help": "Maximum sampled tokens per completion (EOS included)."}
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature; training log-probs use logits / temperature too."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1.0 = off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    min_p: float = field(
        default=0.0,
        metadata={"help": "Drop tokens less likely than min_p times the most likely one; 0 = off."},
    )
    batch_size: int = field(default=64, metadata={"help": "Most completions decoded at once."})
    prefill_batch_size: int = field(
        default=8, metadata={"help": "Prompts prefilled together by the batch generator."}
    )
    prefill_step_size: int = field(
        default=2048, metadata={"help": "Prompt tokens processed per forward pass during prefill."}
    )
    share_prompt_prefill: bool = field(
        default=True,
        metadata={"help": "Prefill each prompt once and reuse its KV cache for its G completions."},
    )
    stop_strings: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Stop a completion once it writes one of these (e.g. '</answer>'); the "
            "string stays in the completion, so nothing after it is sampled or trained."
        },
    )
    stop_at_answer: bool = field(
        default=True,
        metadata={
            "help": "Stop sampling a completion at the closing answer tag (added to "
            "stop_strings by the trainer), so no text runs on after the answer (counted in "
            "completions/stopped_at_answer)."
        },
    )

    def validate(self) -> SamplingConfig:
        """Raise ConfigError on an out-of-range option (temperature 0 = greedy); returns self."""
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.prefill_batch_size >= 1, "prefill_batch_size must be >= 1"),
            (self.prefill_step_size >= 1, "prefill_step_size must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"sampling: {message}")
        return self


@dataclass
class OptimConfig:
    steps: int = field(default=20, metadata={"help": "Optimizer steps to run."})
    batch_size: int = field(default=2, metadata={"help": "Prompts per step."})
    num_generations: int = field(
        default=4, metadata={"help": "Completions per prompt (the group size G)."}
    )
    num_iterations: int = field(
        default=1,
        metadata={
            "help": "Updates per batch of rollouts (>1 reuses them; clipping becomes active)."
        },
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Micro-batches per update; the batch's completions are split evenly."},
    )
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "Completions per forward/backward pass (memory); gradients are summed inside "
            "the compiled step, so the update equals the whole batch's within float tolerance. "
            "0 = choose from the sequence length (micro_batch_tokens)."
        },
    )
    micro_batch_tokens: int = field(
        default=512,
        metadata={
            "help": "With micro_batch_size 0: padded tokens (rows x sequence length) per "
            "forward/backward pass; lower it to save memory, raise it for speed."
        },
    )
    share_prompt: bool = field(
        default=True,
        metadata={
            "help": "Run each prompt's forward/backward once for all of its completions in the "
            "update (equal within float tolerance; llama-style models without sliding windows, "
            "off with grad_checkpoint); false: every completion row recomputes its prompt."
        },
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(
        default=0, metadata={"help": "Linear warm-up updates before the cosine decay."}
    )
    min_learning_rate: float = field(
        default=0.0, metadata={"help": "Learning rate at the end of the cosine."}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "Clip the global gradient norm; null = off."}
    )
    epsilon: float = field(
        default=0.2, metadata={"help": "Lower clipping range of the ratio (1 - epsilon)."}
    )
    epsilon_high: float | None = field(
        default=None, metadata={"help": "Upper clipping range (1 + epsilon_high); null = epsilon."}
    )
    beta: float = field(
        default=0.0, metadata={"help": "KL coefficient against the adapter-off reference (k3)."}
    )
    loss_type: Literal["grpo", "bnpo", "dapo", "dr_grpo"] = field(
        default="dapo",
        metadata={"help": "Loss aggregation: grpo, bnpo, dapo or dr_grpo (as in TRL)."},
    )
    scale_rewards: Literal["group", "batch", "none"] = field(
        default="group",
        metadata={"help": "Divide advantages by the group std, the batch std, or not at all."},
    )
    grad_checkpoint: bool = field(
        default=False, metadata={"help": "Recompute activations in backward."}
    )
    compile: bool = field(
        default=True,
        metadata={
            "help": "mx.compile loss, gradient and AdamW step (the mlx-lm pattern); on the CPU "
            "backend it measured the same speed as uncompiled (docs/benchmarks.md)."
        },
    )
    log_entropy: bool = field(
        default=True,
        metadata={"help": "Log the policy's token entropy (one more pass over the vocabulary)."},
    )
    # TRL GRPOConfig options (docs/run_format.md, "Policy-update options").
    importance_sampling_level: Literal["token", "sequence", "sequence_token"] = field(
        default="token",
        metadata={
            "help": "Importance ratio per token (GRPO), per sequence (GSPO: one length-normalized "
            "ratio; OSPO's credit then collapses to GRPO's) or sequence_token (GSPO-token: keeps "
            "OSPO's per-token credit). Changes anything only off-policy: num_iterations > 1 or "
            "steps_per_generation > 1."
        },
    )
    delta: float | None = field(
        default=None,
        metadata={
            "help": "Two-sided clipping: cap the unclipped ratio at delta (> 1 + epsilon_high), "
            "bounding the loss of negative advantages; null = off."
        },
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={
            "help": "Completions cut at sampling.max_new_tokens (no EOS) take no part in the "
            "loss, whatever their credit; they still count in the group's reward statistics."
        },
    )
    top_entropy_quantile: float = field(
        default=1.0,
        metadata={
            "help": "Keep the policy gradient only on the top rho quantile of tokens by entropy "
            "in each update batch (applied after OSPO's credit); 1.0 = every token."
        },
    )
    steps_per_generation: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps fed by one sampling pass: it draws batch_size x this many "
            "prompts, computes advantages over all of them, then updates on batch_size at a time."
        },
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO dynamic sampling: drop groups whose rewards are all equal (no signal) "
            "and draw more prompts until the step has batch_size groups."
        },
    )
    dynamic_sampling_max_draws: int = field(
        default=4,
        metadata={
            "help": "Most sampling passes per generation under dynamic_sampling; when they do not "
            "fill the batch, dropped groups fill it (counted in dynamic_sampling/refilled)."
        },
    )


@dataclass
class RunConfig:
    name: str | None = field(
        default=None, metadata={"help": "Run name; null = the config file's stem."}
    )
    out: str | None = field(default=None, metadata={"help": "Run directory; null = runs/<name>."})
    seed: int = field(
        default=0, metadata={"help": "Seed for sampling, coalitions, data order and LoRA init."}
    )
    save_every: int = field(
        default=10, metadata={"help": "Checkpoint every N steps (and always at the end)."}
    )
    log_rollouts: bool = field(default=True, metadata={"help": "Write rollouts.jsonl."})
    log_attributions: bool = field(
        default=True, metadata={"help": "Compute and log attributions under algorithm grpo too."}
    )
    report_to: list[Literal["tensorboard", "wandb", "none"]] = field(
        default_factory=lambda: ["none"],
        metadata={
            "help": "Also send the metrics.jsonl rows to: tensorboard (RUN/tensorboard/), wandb "
            "(offline unless WANDB_MODE says otherwise), or none."
        },
    )
    log_completions: bool = field(
        default=True,
        metadata={
            "help": "With report_to, log a table of sampled completions with reward, advantage "
            "and credit every log_completions_steps steps (needs log_rollouts)."
        },
    )
    log_completions_steps: int = field(
        default=10, metadata={"help": "Steps between two completions tables."}
    )


@dataclass
class WarmupConfig:
    """The `sft` section: supervised format warm-up before the first RL step (train/sft.py).

    Named `sft`, not `warmup`, so it cannot be confused with `optim.warmup_steps` (TRL's
    learning-rate warm-up); the old `warmup` key still loads, with a one-line warning.
    """

    steps: int = field(
        default=0,
        metadata={
            "help": "SFT updates on '<answer>query + category</answer>' replies before RL, teaching "
            "the answer format and to stop; 0 = no warm-up."
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Examples per warm-up update."})
    learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak warm-up learning rate (cosine decay to 10%)."}
    )
    max_tasks: int | None = field(
        default=None, metadata={"help": "Build examples from the first N training tasks only."}
    )


@dataclass
class TrainConfig:
    algorithm: Literal["ospo", "grpo"] = field(
        default="ospo",
        metadata={
            "help": "ospo (segment-attributed token advantages) or grpo (sequence advantage)."
        },
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sft: WarmupConfig = field(default_factory=WarmupConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_dir(self) -> Path:
        return Path(self.run.out) if self.run.out else Path("runs") / (self.run.name or "run")


# ----------------------------------------------------------------------------- validation

# Keys that moved, so old configs get a pointer instead of a guess.
MOVED_KEYS = {"prompt.missing_tags": "reward.missing_tags"}
# Sections renamed that still load (old name -> new name), with a one-line warning.
RENAMED_SECTIONS = {"warmup": "sft"}


def _renamed(data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with deprecated section names replaced; warns once per use on stderr."""
    import sys

    out = dict(data)
    for old, new in RENAMED_SECTIONS.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: both '{old}' and '{new}' are set; keep only '{new}'")
        sys.stderr.write(
            f"warning: config key '{old}' is deprecated, use '{new}' (the SFT warm-up; "
            "optim.warmup_steps is the learning-rate warm-up)\n"
        )
        out[new] = out.pop(old)
    return out


def validate(config: TrainConfig) -> TrainConfig:
    """Cross-field checks that types alone cannot express."""
    from ospo_mlx.safety import check_run_name

    if config.run.name is not None:
        check_run_name(config.run.name)  # runs/<name> must stay inside runs/
    o, s, a, lo = config.optim, config.sampling, config.attribution, config.lora
    positive = {
        "optim.steps": o.steps,
        "optim.batch_size": o.batch_size,
        "optim.num_generations": o.num_generations,
        "optim.num_iterations": o.num_iterations,
        "optim.gradient_accumulation_steps": o.gradient_accumulation_steps,
        "optim.micro_batch_tokens": o.micro_batch_tokens,
        "sampling.max_new_tokens": s.max_new_tokens,
        "lora.rank": lo.rank,
        "run.save_every": config.run.save_every,
        "run.log_completions_steps": config.run.log_completions_steps,
        "optim.steps_per_generation": o.steps_per_generation,
        "optim.dynamic_sampling_max_draws": o.dynamic_sampling_max_draws,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be at least 1, got {value}")
    w = config.sft
    if w.steps < 0 or w.batch_size < 1 or w.learning_rate <= 0:
        raise ConfigError(
            "sft: steps must be >= 0, batch_size >= 1 and learning_rate > 0, got "
            f"{w.steps}, {w.batch_size}, {w.learning_rate}"
        )
    if w.max_tasks is not None and w.max_tasks < 1:
        raise ConfigError(f"sft.max_tasks: must be at least 1 or null, got {w.max_tasks}")
    if config.model.adapters is not None and not Path(config.model.adapters).is_dir():
        raise ConfigError(
            f"model.adapters: {config.model.adapters} is not a directory; pass an mlx-lm adapter "
            "directory (adapters.safetensors + adapter_config.json), e.g. runs/NAME/adapters"
        )
    if o.num_generations < 2:
        raise ConfigError(
            "optim.num_generations: needs at least 2 completions per prompt to compare them"
        )
    if o.micro_batch_size < 0:
        raise ConfigError(
            f"optim.micro_batch_size: must be >= 0 (0 = automatic), got {o.micro_batch_size}"
        )
    completions = o.batch_size * o.num_generations
    if completions % o.gradient_accumulation_steps:
        raise ConfigError(
            f"optim.gradient_accumulation_steps: {o.gradient_accumulation_steps} does not divide the "
            f"{completions} completions per step (batch_size x num_generations)"
        )
    if s.temperature <= 0:
        raise ConfigError(f"sampling.temperature: must be > 0, got {s.temperature}")
    if not 0 < s.top_p <= 1:
        raise ConfigError(f"sampling.top_p: must be in (0, 1], got {s.top_p}")
    s.validate()
    if o.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate: must be > 0, got {o.learning_rate}")
    if o.epsilon < 0 or (o.epsilon_high is not None and o.epsilon_high < 0):
        raise ConfigError("optim.epsilon/epsilon_high: clipping ranges must be >= 0")
    if o.beta < 0:
        raise ConfigError(f"optim.beta: must be >= 0, got {o.beta}")
    if o.delta is not None and o.delta <= 1:
        raise ConfigError(
            f"optim.delta: must be > 1 (TRL recommends > 1 + epsilon_high), got {o.delta}; "
            "null turns two-sided clipping off"
        )
    if not 0 <= o.top_entropy_quantile <= 1:
        raise ConfigError(
            f"optim.top_entropy_quantile: must be in [0, 1] (1 = every token), got "
            f"{o.top_entropy_quantile}"
        )
    if "none" in config.run.report_to and len(config.run.report_to) > 1:
        raise ConfigError(
            f"run.report_to: 'none' cannot be combined with other trackers, got "
            f"{config.run.report_to}"
        )
    if not 0 <= lo.dropout < 1:
        raise ConfigError(f"lora.dropout: must be in [0, 1), got {lo.dropout}")
    if lo.num_layers == 0 or lo.num_layers < -1:
        raise ConfigError(
            f"lora.num_layers: use a positive count or -1 for all, got {lo.num_layers}"
        )
    a.validate()
    try:
        config.reward.validate()
    except ConfigError as exc:
        raise ConfigError(
            str(exc) if str(exc).startswith("reward.") else f"reward: {exc}"
        ) from None
    if config.reward.answer_tags not in (None, config.prompt.answer_tags):
        raise ConfigError(
            f"reward.answer_tags {list(config.reward.answer_tags)} differ from prompt.answer_tags "
            f"{list(config.prompt.answer_tags)}; set both to the same tags"
        )
    try:  # the prompt section validates itself on construction
        config.prompt = PromptConfig(**dataclasses.asdict(config.prompt))
    except ConfigError as exc:
        raise ConfigError(f"prompt: {exc}") from None
    return config


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    **values: Any,
) -> TrainConfig:
    """Defaults, then the YAML file, then `--set` overrides, then keyword values ('optim.steps': 5).

    Keyword values use dotted keys (`**{"optim.steps": 5}`) and take precedence over everything;
    a None keyword value means "not given" (so CLI flags can be passed through unconditionally).
    """
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; see configs/ for examples")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        apply_options(config, _renamed(data, str(path)), moved=MOVED_KEYS)
        if config.run.name is None:
            config.run.name = path.stem
    for text in overrides or []:
        keys, value = parse_override(text)
        if not keys:
            raise ConfigError(f"--set {text!r}: empty key")
        apply_options(config, _renamed(nest(keys, value), "--set"), moved=MOVED_KEYS)
    for dotted, value in values.items():
        if value is not None:
            apply_options(
                config, _renamed(nest(dotted.split("."), value), dotted), moved=MOVED_KEYS
            )
    if config.run.name is None:
        config.run.name = "run"
    return validate(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from `to_dict()` output (e.g. a run's config.yaml)."""
    config = TrainConfig()
    apply_options(config, legacy_empty_value(_renamed(data, "config")), moved=MOVED_KEYS)
    return validate(config)


def config_from_run(data: dict[str, Any]) -> TrainConfig:
    """A finished run's config.yaml as a TrainConfig (`ospo eval`); defaults when empty.

    `model.adapters` (what training started from) is dropped: readers of a run use the run's
    own adapters, and the start adapters may have moved since.
    """
    import copy

    if not data:
        return TrainConfig()
    data = copy.deepcopy(data)
    if isinstance(data.get("model"), dict):
        data["model"]["adapters"] = None
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"the run's config.yaml: {exc}") from None


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def describe_options(config: TrainConfig | None = None) -> list[tuple[str, str, Any]]:
    """(dotted key, help, default) for every option: the reference for `--set`."""
    config = config or TrainConfig()
    rows: list[tuple[str, str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", f.metadata.get("help", ""), value))

    walk(config, "")
    return rows
