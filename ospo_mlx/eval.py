"""`ospo eval`: raw query vs base model vs trained adapters, under several retrievers.

Each system writes one text per task (the raw query, or the answer inside the answer tags of
a generated response); each retriever ranks the catalog for it and the ranking is scored
against the task's judged products. Paired per-task differences get a seeded bootstrap
confidence interval, so a gain can be told from noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ospo_mlx.errors import ConfigError, OspoError

EVAL_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr", "hit@10")
RANK_DEPTH = 100  # deepest cutoff among EVAL_METRICS
SYSTEMS = ("raw", "base", "adapters")


@dataclass
class EvalArgs:
    """Options of `ospo eval`."""

    tasks: Path | None = field(
        default=None, metadata={"help": "Evaluation tasks JSONL (held-out split)."}
    )
    catalog: Path | None = field(
        default=None, metadata={"help": "Catalog JSONL; default: the run's data.catalog."}
    )
    run: Path | None = field(
        default=None, metadata={"help": "Run directory (adapters, base model, config)."}
    )
    adapters: Path | None = field(
        default=None, metadata={"help": "mlx-lm adapter directory (instead of run)."}
    )
    model: str | None = field(
        default=None, metadata={"help": "Base model; overrides the run's config."}
    )
    retrievers: list[str] = field(
        default_factory=lambda: ["train", "bm25"],
        metadata={
            "help": "'train' (the run's reward retriever), 'bm25', 'dense' or an encoder directory."
        },
    )
    num_samples: int = field(
        default=1, metadata={"help": "Responses per task (metrics averaged per task)."}
    )
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding."})
    max_new_tokens: int = field(default=48, metadata={"help": "Maximum response length in tokens."})
    batch_size: int = field(default=16, metadata={"help": "Prompts generated together."})
    max_tasks: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N tasks."}
    )
    bootstrap: int = field(
        default=1000, metadata={"help": "Bootstrap resamples of the paired differences."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the bootstrap."})
    out: Path | None = field(
        default=None, metadata={"help": "eval.json path; default RUN/eval.json."}
    )


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean of a - b, CI low, CI high): percentile bootstrap over tasks (paired resampling)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty 1-D arrays")
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(n_resamples, diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(low), float(high)


def raw_text(task: Any, catalog: dict[str, Any]) -> str:
    """The no-model baseline text: the query, or the titles of the shopper's history."""
    if task.query:
        return task.query
    return "; ".join(catalog[h.product_id].title for h in task.history if h.product_id in catalog)


def score_texts(
    retriever: Any, texts: Sequence[str], tasks: Sequence[Any], names: Sequence[str] = EVAL_METRICS
) -> dict[str, np.ndarray]:
    """Per-text metrics (len(texts),) of `texts[i]` (written for `tasks[i]`) under `retriever`.

    A None text (an answer the training format rule scores 0) scores 0 on every metric.
    """
    from ospo_mlx.reward.metrics import Judgments, compute

    index = {pid: i for i, pid in enumerate(retriever.product_ids)}
    keep = np.array([t is not None for t in texts], dtype=bool)
    kept = np.flatnonzero(keep)
    pools = None
    if all(t.pool for t in tasks):
        pools = [
            np.array([index[p] for p in tasks[i].pool if p in index], dtype=np.int64) for i in kept
        ]
    ranked = np.full((len(texts), RANK_DEPTH), -1, dtype=np.int64)
    if len(kept):
        got = retriever.rank([texts[i] for i in kept], RANK_DEPTH, pools)
        ranked[kept, : got.shape[1]] = got
    judgments = Judgments([t.targets for t in tasks], index)
    out = compute(names, judgments.gains(ranked), judgments.ideal(RANK_DEPTH), judgments.n_relevant)
    return {name: np.where(keep, v, 0.0) for name, v in out.items()}


def build_retriever(spec: str, catalog: dict[str, Any], train_config: dict[str, Any]) -> Any:
    """A retriever for `spec`: 'train', 'bm25', 'dense' (default encoder) or an encoder dir."""
    reward = train_config.get("reward") if isinstance(train_config.get("reward"), dict) else {}
    if spec == "train":
        kind = str(reward.get("retriever", "dense"))
        spec = "bm25" if kind == "bm25" else (reward.get("encoder") or "dense")
    if spec == "bm25":
        from ospo_mlx.reward.bm25 import BM25Retriever

        return BM25Retriever(catalog)
    from ospo_mlx.reward.retrievers import encoder_retriever

    if spec != "dense" and not Path(spec).is_dir():
        raise ConfigError(f"retriever {spec!r} is not train, bm25, dense or an encoder directory")
    return encoder_retriever(catalog, None if spec == "dense" else spec)


def generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], args: EvalArgs
) -> tuple[list[str], list[int]]:
    """(texts, token lengths) of args.num_samples responses per prompt, prompt-major order."""
    import mlx.core as mx
    from mlx_lm.generate import batch_generate
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(args.seed)
    repeated = [p for p in prompts for _ in range(args.num_samples)]
    sampler = make_sampler(temp=args.temperature)
    texts: list[str] = []
    lengths: list[int] = []
    for start in range(0, len(repeated), args.batch_size):
        chunk = repeated[start : start + args.batch_size]
        out = batch_generate(
            model,
            tokenizer,
            chunk,
            max_tokens=args.max_new_tokens,
            sampler=sampler,
            return_token_ids=True,
        )
        texts += out.texts
        lengths += [len(ids) for ids in out.token_ids]
    return texts, lengths


@dataclass
class SystemOutput:
    """One system's responses: `texts[i * n + j]` is sample j of task i."""

    name: str
    texts: list[str]
    answers: list[str | None]  # the scored text; None where the format rule scores 0
    lengths: list[int] | None = None
    formatted: list[bool] | None = None


def _system_from_responses(
    name: str, texts: list[str], lengths: list[int], tags: tuple[str, str], reward: dict[str, Any]
) -> SystemOutput:
    """Scored answers by the run's own rules (`reward.missing_tags`, `reward.unclosed_answer`,
    `reward.repeats`)."""
    from ospo_mlx.attribution.segment import scored_answer
    from ospo_mlx.reward.repetition import collapse_repeats
    from ospo_mlx.reward.retrieval import RewardConfig

    defaults = RewardConfig()
    missing = reward.get("missing_tags", defaults.missing_tags)
    unclosed = reward.get("unclosed_answer", defaults.unclosed_answer)
    scored = [scored_answer(t, tags, missing, unclosed) for t in texts]
    formatted = [status == "ok" for _, status in scored]
    answers = [a for a, _ in scored]
    if reward.get("repeats", defaults.repeats) == "collapse":  # as training scored them
        answers = [None if a is None else collapse_repeats(a)[0] for a in answers]
    return SystemOutput(name, texts, answers, lengths, formatted)


def _load_inputs(args: EvalArgs):
    from ospo_mlx.data.schema import load_catalog, load_tasks
    from ospo_mlx.export.source import resolve_source

    source = resolve_source(args.run, args.adapters, args.model)
    data = (
        source.train_config.get("data") if isinstance(source.train_config.get("data"), dict) else {}
    )
    catalog_path = args.catalog or (data.get("catalog") if data else None)
    if args.tasks is None:
        raise ConfigError("pass --tasks EVAL.jsonl (held-out tasks; never the training split)")
    if not catalog_path:
        raise ConfigError("pass --catalog CATALOG.jsonl (the run's config names none)")
    catalog = load_catalog(catalog_path)
    tasks = load_tasks(args.tasks, catalog)
    if args.max_tasks is not None:
        tasks = tasks[: args.max_tasks]
    if not tasks:
        raise OspoError(f"{args.tasks} has no tasks to evaluate")
    return source, catalog, tasks


def run_systems(
    args: EvalArgs, source: Any, catalog: dict[str, Any], tasks: list[Any]
) -> list[SystemOutput]:
    """Raw texts, then base-model responses, then the same model with the adapters loaded."""
    from ospo_mlx.data.prompts import PromptConfig, encode_prompt
    from ospo_mlx.export.fused import load_base
    from ospo_mlx.reward.retrieval import query_prefixed
    from ospo_mlx.safety import load_adapters_checked

    n = args.num_samples
    repeated = [t for t in tasks for _ in range(n)]
    raw = [raw_text(t, catalog) for t in repeated]
    systems = [SystemOutput("raw", raw, raw)]
    # The run's own prompt and retrieval-text settings, so eval scores what training rewarded.
    prompt_config = PromptConfig(**_section(source.train_config, "prompt", PromptConfig))
    reward_section = _section(source.train_config, "reward", None)
    prepend = reward_section.get("prepend_query")
    model, tokenizer, _, _ = load_base(source.base_model)
    prompts = [encode_prompt(tokenizer, t, catalog, prompt_config) for t in tasks]
    for name in ("base", "adapters"):
        if name == "adapters":
            # Shapes are checked against this base first: adapters for another base are refused.
            model = load_adapters_checked(model, source.adapter_dir)
            model.eval()
        texts, lengths = generate(model, tokenizer, prompts, args)
        system = _system_from_responses(
            name, texts, lengths, prompt_config.answer_tags, reward_section
        )
        system.answers = [
            None if a is None else query_prefixed(a, t, prepend)
            for a, t in zip(system.answers, repeated, strict=True)
        ]
        systems.append(system)
    return systems


def _section(train_config: dict[str, Any], name: str, cls: Any) -> dict[str, Any]:
    """A section of the run's config.yaml as keyword arguments (only `cls`'s fields when given)."""
    section = train_config.get(name)
    if not isinstance(section, dict):
        return {}
    if cls is None:
        return dict(section)
    known = {f.name for f in fields(cls)}
    out = {k: v for k, v in section.items() if k in known}
    if isinstance(out.get("answer_tags"), list):
        out["answer_tags"] = tuple(out["answer_tags"])
    return out


def summarize(
    systems: list[SystemOutput], retrievers: list[Any], tasks: list[Any], args: EvalArgs
) -> dict[str, Any]:
    """eval.json content: mean metrics per (system, retriever) and paired comparisons."""
    n = args.num_samples
    repeated = [t for t in tasks for _ in range(n)]
    results, comparisons = [], []
    for retriever in retrievers:
        per_task: dict[str, dict[str, np.ndarray]] = {}
        for system in systems:
            scores = score_texts(retriever, system.answers, repeated)
            per_task[system.name] = {
                k: v.reshape(len(tasks), n).mean(axis=1) for k, v in scores.items()
            }
            row: dict[str, Any] = {"system": system.name, "retriever": retriever.name}
            row.update({k: float(v.mean()) for k, v in per_task[system.name].items()})
            if system.lengths is not None:
                row["mean_length"] = float(np.mean(system.lengths))
                row["answer_format_rate"] = float(np.mean(system.formatted))
            results.append(row)
        for a, b in (("adapters", "base"), ("adapters", "raw"), ("base", "raw")):
            if a in per_task and b in per_task:
                mean, low, high = paired_bootstrap(
                    per_task[a]["ndcg@10"], per_task[b]["ndcg@10"], args.bootstrap, args.seed
                )
                comparisons.append(
                    {"retriever": retriever.name, "metric": "ndcg@10", "a": a, "b": b,
                     "mean_diff": mean, "ci_low": low, "ci_high": high, "n_tasks": len(tasks)}
                )  # fmt: skip
    return {"results": results, "comparisons": comparisons}


def evaluate(args: EvalArgs) -> tuple[dict[str, Any], Path]:
    """Run the whole evaluation; returns (report, path of the eval.json written)."""
    if args.num_samples < 1 or args.batch_size < 1 or args.bootstrap < 1:
        raise ConfigError("--num-samples, --batch-size and --bootstrap must be >= 1")
    if args.num_samples > 1 and args.temperature <= 0:
        raise ConfigError(
            "--num-samples > 1 needs --temperature > 0 (greedy samples are identical)"
        )
    source, catalog, tasks = _load_inputs(args)
    retrievers = [build_retriever(spec, catalog, source.train_config) for spec in args.retrievers]
    systems = run_systems(args, source, catalog, tasks)
    report = summarize(systems, retrievers, tasks, args)
    report["config"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()
    } | {
        "base_model": source.base_model,
        "adapter_dir": str(source.adapter_dir),
        "n_tasks": len(tasks),
    }
    report["samples"] = [
        {"task_id": t.id, **{s.name: s.answers[i * args.num_samples] for s in systems}}
        for i, t in enumerate(tasks[:20])
    ]
    out = args.out or ((source.run_dir / "eval.json") if source.run_dir else Path("eval.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    return report, out
