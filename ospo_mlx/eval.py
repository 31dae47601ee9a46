"""`ospo eval`: raw query vs base model vs trained adapters, under several retrievers.

Each system writes one text per task (the raw query, or the answer inside the answer tags of
a generated response); each retriever ranks the catalog for it and the ranking is scored
against the task's judged products. Scoring goes through the training reward's own objects
(`RetrievalReward` with the run's `reward` section: answer rule, query prefix, gains and
gain_map), and the run's function rewards are reported per system too. Paired per-task
differences get a seeded bootstrap confidence interval, so a gain can be told from noise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward.config import EVAL_METRICS, RewardConfig

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


def bootstrap_mean_ci(
    values: Sequence[float], n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, CI low, CI high): percentile bootstrap of the mean of `values`."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("the bootstrap needs a non-empty 1-D sequence")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(x.mean()), float(low), float(high)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean of a - b, CI low, CI high): percentile bootstrap over tasks (paired resampling)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError("paired_bootstrap needs two equal-length, non-empty 1-D arrays")
    return bootstrap_mean_ci(diff, n_resamples, seed, confidence)


def raw_text(task: Any, catalog: dict[str, Any]) -> str:
    """The no-model baseline text: the query, or the titles of the shopper's history."""
    if task.query:
        return task.query
    return "; ".join(catalog[h.product_id].title for h in task.history if h.product_id in catalog)


def score_texts(
    retriever: Any,
    texts: Sequence[str | None],
    tasks: Sequence[Any],
    names: Sequence[str] = EVAL_METRICS,
    config: RewardConfig | None = None,
) -> dict[str, np.ndarray]:
    """Per-text metrics (len(texts),) of retrieval `texts[i]` (for `tasks[i]`) under `retriever`.

    Scored by the training reward's code (`RetrievalReward`, with `config`'s gains/gain_map);
    tasks are ranked within their pools when every task has one, else over the whole catalog.
    A None text (an answer the training format rule scores 0) scores 0 on every metric.
    """
    return retrieval_reward(retriever, tasks, config).evaluate_texts(texts, tasks, names)


def retrieval_reward(retriever: Any, tasks: Sequence[Any], config: RewardConfig | None = None):
    """The run's RetrievalReward over `retriever` (pool mode only when every task has a pool)."""
    from ospo_mlx.reward.retrieval import RetrievalReward

    config = config or RewardConfig()
    mode = config.mode if all(t.pool for t in tasks) else "catalog"
    return RetrievalReward(retriever, replace(config, mode=mode))


def build_retriever(spec: str, catalog: dict[str, Any], reward: RewardConfig) -> Any:
    """A retriever for `spec`: 'train' (the run's reward encoder), 'bm25', 'dense' (the default
    encoder) or an encoder directory."""
    if spec == "train":
        spec = reward.encoder or "dense"
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
    name: str, texts: list[str], lengths: list[int], tasks: list[Any], reward: Any
) -> SystemOutput:
    """Retrieval texts by the reward's own answer rule (`reward.missing_tags`,
    `reward.unclosed_answer`, `reward.repeats`) and query prefix, as in training."""
    scored = [reward.scored(t) for t in texts]
    answers = [
        None if a is None else reward.with_query(a, task)
        for (a, _), task in zip(scored, tasks, strict=True)
    ]
    return SystemOutput(name, texts, answers, lengths, [st == "ok" for _, st in scored])


def _load_inputs(args: EvalArgs):
    from ospo_mlx.config import config_from_run
    from ospo_mlx.data.schema import load_catalog, load_tasks
    from ospo_mlx.export.source import resolve_source

    source = resolve_source(args.run, args.adapters, args.model)
    config = config_from_run(source.train_config)
    catalog_path = args.catalog or (config.data.catalog if source.train_config else None)
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
    return source, config, catalog, tasks


def run_systems(
    args: EvalArgs,
    source: Any,
    config: Any,
    catalog: dict[str, Any],
    tasks: list[Any],
    rule: Any,
) -> list[SystemOutput]:
    """Raw texts, then base-model responses, then the same model with the adapters loaded.

    `rule` is a reward of the run (a RetrievalReward): its answer rule and query prefix turn
    responses into retrieval texts exactly as in training.
    """
    from ospo_mlx.data.prompts import encode_prompt
    from ospo_mlx.export.fused import load_base
    from ospo_mlx.safety import load_adapters_checked

    n = args.num_samples
    repeated = [t for t in tasks for _ in range(n)]
    raw = [raw_text(t, catalog) for t in repeated]
    systems = [SystemOutput("raw", raw, raw)]
    # The run's own prompt and reward settings, so eval scores what training rewarded.
    model, tokenizer, _, _ = load_base(source.base_model)
    prompts = [encode_prompt(tokenizer, t, catalog, config.prompt) for t in tasks]
    for name in ("base", "adapters"):
        if name == "adapters":
            # Shapes are checked against this base first: adapters for another base are refused.
            model = load_adapters_checked(model, source.adapter_dir)
            model.eval()
        texts, lengths = generate(model, tokenizer, prompts, args)
        systems.append(_system_from_responses(name, texts, lengths, repeated, rule))
    return systems


def function_scores(
    systems: list[SystemOutput], tasks: list[Any], config: Any, catalog: dict[str, Any]
) -> list[dict[str, Any]]:
    """Mean score of each of the run's reward.functions per generating system (rows)."""
    if not config.reward.functions:
        return []
    from ospo_mlx.data.prompts import user_text
    from ospo_mlx.reward.functions import FunctionReward, load_function

    rows = []
    for spec in config.reward.functions:
        reward = FunctionReward(
            load_function(spec), config.reward,
            prompt_of=lambda t: user_text(t, catalog, config.prompt),
        )  # fmt: skip
        for system in systems:
            if system.lengths is None:  # the raw query is not a response
                continue
            n = len(system.texts) // len(tasks)  # num_samples responses per task
            scores = reward.score(system.texts, [t for t in tasks for _ in range(n)])
            applies = scores[~np.isnan(scores)]
            rows.append({
                "system": system.name, "reward": reward.name,
                "mean": float(applies.mean()) if applies.size else None,
                "not_applicable": int(np.isnan(scores).sum()),
            })  # fmt: skip
    return rows


def summarize(
    systems: list[SystemOutput],
    retrievers: list[Any],
    tasks: list[Any],
    args: EvalArgs,
    reward: RewardConfig | None = None,
) -> dict[str, Any]:
    """eval.json content: mean metrics per (system, retriever) and paired comparisons."""
    n = args.num_samples
    repeated = [t for t in tasks for _ in range(n)]
    results, comparisons = [], []
    for retriever in retrievers:
        per_task: dict[str, dict[str, np.ndarray]] = {}
        for system in systems:
            scores = score_texts(retriever, system.answers, repeated, EVAL_METRICS, reward)
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
    source, config, catalog, tasks = _load_inputs(args)
    retrievers = [build_retriever(spec, catalog, config.reward) for spec in args.retrievers]
    rule = retrieval_reward(retrievers[0], tasks, config.reward) if retrievers else None
    if rule is None:
        raise ConfigError("pass at least one --retriever (train, bm25, dense or an encoder dir)")
    systems = run_systems(args, source, config, catalog, tasks, rule)
    report = summarize(systems, retrievers, tasks, args, config.reward)
    report["function_rewards"] = function_scores(systems, tasks, config, catalog)
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
