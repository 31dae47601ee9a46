"""Learning bench: GRPO against OSPO variants from one shared warm-up, over several seeds.

Does segment credit make RL learn faster? The default task is the controlled choice task
(ospo_mlx/data/choice.py): each prompt lists candidate attribute phrases, the right ones
among distractors; the reward is the retrieval NDCG of query + answer, so each answer mixes
helpful and harmful segments. `--task esci` runs the same comparison on the real ESCI
sample (train/test split by query), `--task demo` on the free-form synthetic demo task.

1. A LoRA SFT warm-up teaches the answer format (on choice: a random two or three of the
   listed phrases, never chosen by correctness), once; every run starts from its adapters.
   RL trains on a pool of `--rl-tasks` prompts that the warm-up never saw (it learns on the
   other training tasks), so the question is how fast each algorithm learns those prompts.
2. Each variant (VARIANTS: GRPO, OSPO at the paper's settings, OSPO at our best credit
   settings) trains from there with the same seeds, sample budget and hyper-parameters.
3. Reported: per-step reward curves with 95% bands (terminal and PNG), the area under the
   curve and steps-to-target per variant, the paired OSPO - GRPO AUC difference with its 95%
   bootstrap CI over seeds, greedy reward on the trained prompts and on held-out tasks under
   the training retriever and BM25 against the raw query and the warm-up, format and degeneracy rates (distinct-word ratio,
   repetition rate, length), and a power plan (seeds x steps to detect a 25% difference).

    python bench/learning.py                      # full: 3 seeds x 3 variants x 30 steps (~2 h)
    python bench/learning.py --quick --json       # 1 seed, 3 steps, small groups: minutes
    python bench/learning.py --quick --model tiny # smoke run (random tiny model)

Finished runs (result.json) are reused and interrupted ones resume from their last
checkpoint, so the bench can be stopped and restarted; --fresh starts over.
"""

from __future__ import annotations

import gc
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
import mlx.core as mx
import numpy as np

from bench import learning_stats as S
from bench.common import bench_parser, emit, machine
from ospo_mlx.errors import OspoError
# isort: on

# name -> (algorithm, config overrides). A variant's overrides apply after the config and --set.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "grpo": ("grpo", []),
    # The paper's credit: mean marginal gains over contiguous windows, min-max weights, the
    # positive values pushed down on a negative advantage, no advantage outside segments.
    # (v(empty) is the query's own score in every variant: a 0 there is a defect, issue 13.)
    "ospo-paper": (
        "ospo",
        [
            "attribution.estimator=contiguous",
            "attribution.normalize=minmax",
            "attribution.negative_advantage=paper",
            "attribution.format_tokens=floor",
        ],
    ),
    # Our best credit settings (docs/credit.md, bench/fidelity.py): exact/kernel Shapley,
    # zero-anchored weights, mirrored negative advantages, format tokens keep A.
    "ospo-best": (
        "ospo",
        [
            "attribution.estimator=shapley",
            "attribution.normalize=zero",
            "attribution.negative_advantage=mirror",
            "attribution.format_tokens=sequence",
        ],
    ),
}
BASELINE = "grpo"
TASKS = ("choice", "esci", "demo")


# ----------------------------------------------------------------------------- data


def prepare_data(args: Any, out: Path) -> tuple[Path, dict[str, dict[str, str]]]:
    """The task's data directory (catalog/train/test.jsonl) and hidden intents (choice only)."""
    if args.task == "demo":
        return Path("data/demo"), {}
    data = out / "data"
    summary = data / "summary.json"
    if not summary.is_file():
        from ospo_mlx.data.report import write_dataset

        if args.task == "choice":
            from ospo_mlx.data.choice import ChoiceConfig, generate_choice
            from ospo_mlx.data.synthetic import SyntheticConfig

            syn = SyntheticConfig(n_train=args.train_tasks, n_test=args.test_tasks)
            catalog, tasks, report = generate_choice(ChoiceConfig(synthetic=syn))
        else:
            from ospo_mlx.data.esci import EsciConfig, convert_esci

            source = Path(args.esci_source)
            if not source.is_dir():
                raise OspoError(
                    f"--esci-source {source} is not a directory; point it at the ESCI sample "
                    "(../shared/data/esci-sample) or a full ESCI download"
                )
            catalog, tasks, report = convert_esci(source, EsciConfig(test_fraction=0.25))
        write_dataset(data, catalog, tasks, report)
    extra = json.loads(summary.read_text(encoding="utf-8")).get("extra", {})
    return data, extra.get("hidden_intents", {})


def split_train(args: Any, data: Path, out: Path) -> tuple[Path, Path]:
    """(RL pool, warm-up tasks): the first `--rl-tasks` training tasks and the rest.

    The warm-up learns the answer format on tasks RL never sees, so it carries no memorized
    answer for an RL prompt. `--rl-tasks 0` trains both on every training task."""
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if line.strip()]
    if args.rl_tasks == 0:
        return data / "train.jsonl", data / "train.jsonl"
    if args.rl_tasks >= len(lines):
        raise OspoError(
            f"--rl-tasks {args.rl_tasks} leaves no warm-up task: {data / 'train.jsonl'} has "
            f"{len(lines)} tasks; pass a smaller --rl-tasks (or 0 to share them)"
        )
    split = out / "split"
    split.mkdir(parents=True, exist_ok=True)
    rl, sft = split / "rl.jsonl", split / "sft.jsonl"
    rl.write_text("\n".join(lines[: args.rl_tasks]) + "\n", encoding="utf-8")
    sft.write_text("\n".join(lines[args.rl_tasks :]) + "\n", encoding="utf-8")
    return rl, sft


# ----------------------------------------------------------------------------- evaluation


def answer_stats(answers: list[str | None], hidden: list[dict[str, str] | None]) -> dict:
    """Degeneracy (distinct-word ratio, repetition rate, words) and, on the choice task, the
    precision and recall of the named right phrases."""
    from ospo_mlx.data.choice import right_phrases
    from ospo_mlx.reward.repetition import repetition

    reps = [repetition(a or "") for a in answers]
    out = {
        "distinct_word_ratio": float(np.mean([r.distinct_ratio for r in reps])),
        "repetition_rate": float(np.mean([r.repeated_rate for r in reps])),
        "answer_words": float(np.mean([r.words for r in reps])),
    }
    pairs = [(a or "", h) for a, h in zip(answers, hidden, strict=True) if h]
    if pairs:
        precision, recall = [], []
        for text, h in pairs:
            named = named_phrases(text)
            right = {p.lower() for p in right_phrases(h)}
            hits = sum(p in right for p in named)
            precision.append(hits / len(named) if named else 0.0)
            recall.append(len(right & set(named)) / len(right))
        out["right_precision"] = float(np.mean(precision))
        out["right_recall"] = float(np.mean(recall))
    return out


def named_phrases(text: str, tags: tuple[str, str] = ("<answer>", "</answer>")) -> list[str]:
    """The comma-separated phrases a choice answer names (lowercase; unclosed answers too)."""
    body = text.split(tags[0])[-1].split(tags[1])[0]
    return [p.strip().lower() for p in body.split(",") if p.strip()]


def choice_curves(rollouts: Path, hidden: dict[str, dict[str, str]]) -> dict[str, list[float]]:
    """Per step of a choice-task run: precision and recall of the right phrases among the
    sampled answers' named phrases, phrases named, and the share of closed answers; and over
    the run, the share of listed-phrase segments whose credit (Owen value) has the right sign
    (positive for the hidden use and material, negative for a distractor)."""
    from ospo_mlx.data.choice import right_phrases
    from ospo_mlx.data.synthetic import CATEGORIES
    from ospo_mlx.reward.repetition import repetition

    # every phrase a prompt of the category can list: its uses and materials
    listed = {
        c.name: {p.lower() for i in c.intents for p in (i.use, i.material)} for c in CATEGORIES
    }
    steps: dict[int, list[tuple[float, float, int, bool]]] = {}
    signs: dict[int, list[bool]] = {}  # segment credit has the sign its phrase deserves
    for line in rollouts.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("task_id") not in hidden:
            continue
        named = named_phrases(row["completion"])
        right = {p.lower() for p in right_phrases(hidden[row["task_id"]])}
        text = row["completion"]
        for (start, end), phi in zip(row.get("segments", []), row.get("owen", []), strict=False):
            phrase = text[start:end].strip(" ,.<>/").lower()
            if phi != 0 and phrase in listed[hidden[row["task_id"]]["category"]]:
                signs.setdefault(int(row["step"]), []).append((phi > 0) == (phrase in right))
        hits = sum(p in right for p in named)
        body = text.split("<answer>")[-1].split("</answer>")[0]
        steps.setdefault(int(row["step"]), []).append(
            (hits / len(named) if named else 0.0, len(right & set(named)) / len(right),
             len(named), "</answer>" in text, repetition(body).repeated_rate)
        )  # fmt: skip
    order = sorted(steps)
    names = ("right_precision", "right_recall", "named", "closed", "repetition_rate")
    out = {
        name: [float(np.mean([r[i] for r in steps[s]])) for s in order]
        for i, name in enumerate(names)
    }
    every = [v for s in order for v in signs.get(s, [])]
    out["credit_sign_accuracy"] = [float(np.mean(every))] if every else []
    return out


def heldout_eval(trainer: Any, tasks: list[Any], bm25: Any, hidden: dict) -> dict[str, Any]:
    """Greedy answers on held-out tasks, scored as training scores them (training retriever)
    and by BM25; format, run-on and degeneracy rates."""
    from ospo_mlx.attribution.segment import after_answer, scored_answer
    from ospo_mlx.data.prompts import encode_prompt
    from ospo_mlx.eval import score_texts
    from ospo_mlx.train.rollout import SamplingConfig, sample_groups

    cfg, reward = trainer.config, trainer.reward
    rr = reward.retrieval  # the answer rule and query prefix of the retrieval reward
    trainer.model.eval()
    prompts = [encode_prompt(trainer.tokenizer, t, trainer.catalog, cfg.prompt) for t in tasks]
    sampling = SamplingConfig(
        max_new_tokens=cfg.sampling.max_new_tokens,
        temperature=0.0,
        stop_strings=(cfg.prompt.answer_tags[1],) if cfg.sampling.stop_at_answer else (),
    )
    rollouts = sample_groups(
        trainer.model, trainer.tokenizer, prompts, sampling, num_generations=1, seed=0
    )
    texts = list(rollouts.texts)
    scores = np.nan_to_num(np.asarray(reward.score(texts, tasks), dtype=np.float64))
    answers = [rr.scored(t)[0] for t in texts]  # as scored: repeats collapsed
    r = rr.config  # degeneracy is measured on the answer as written, before the collapse
    raw = [scored_answer(t, r.answer_tags, r.missing_tags, r.unclosed_answer)[0] for t in texts]
    retrieval = [
        None if a is None else rr.with_query(a, t) for a, t in zip(answers, tasks, strict=True)
    ]
    bm = score_texts(bm25, retrieval, tasks, ("ndcg@10",))["ndcg@10"]
    statuses = [rr.scored(t)[1] for t in texts]
    return {
        "reward": float(scores.mean()),
        "bm25": float(np.mean(bm)),
        "per_task": scores.tolist(),
        "format_rate": float(np.mean([s == "ok" for s in statuses])),
        "after_answer_rate": float(np.mean([after_answer(t) for t in texts])),
        "collapsed_rate": float(np.mean([rr.repeats_removed(t) > 0 for t in texts])),
        "mean_tokens": float(np.mean(rollouts.completion_lengths())),
        **answer_stats(raw, [hidden.get(t.id) for t in tasks]),
        "texts": texts,
    }


def raw_query_eval(trainer: Any, tasks: list[Any], bm25: Any) -> dict[str, float]:
    from ospo_mlx.eval import score_texts

    queries = [t.query or "" for t in tasks]
    dense = trainer.reward.score(["<answer></answer>"] * len(tasks), tasks)  # query alone
    bm = score_texts(bm25, queries, tasks, ("ndcg@10",))["ndcg@10"]
    return {"reward": float(np.mean(dense)), "bm25": float(np.mean(bm))}


# ----------------------------------------------------------------------------- runs


def base_config(args: Any, data: Path, train: Path, extra: list[str] | None = None) -> Any:
    """The config file, the task's data (`train`: its RL pool), --quick sizes, --set, then
    `extra` (a variant's)."""
    from ospo_mlx.config import load_config

    overrides = [f"data.catalog={data / 'catalog.jsonl'}", f"data.train={train}"]
    if args.quick:  # small sample budget; explicit --set values still win (they come later)
        overrides += ["optim.batch_size=2", "optim.num_generations=4"]
    overrides += [*(args.set or []), *(extra or [])]
    return load_config(args.config, overrides, **{"model.name": args.model})


def run_config(variant: str, seed: int, args: Any, data: Path, train: Path, out: Path) -> Any:
    algorithm, overrides = VARIANTS[variant]
    cfg = base_config(args, data, train, overrides)
    cfg.algorithm = algorithm
    cfg.optim.steps = args.steps
    cfg.run.seed = seed
    cfg.run.name = f"{variant}-seed{seed}"
    cfg.run.out = str(out / "runs" / cfg.run.name)
    cfg.run.save_every = args.save_every  # checkpoints: an interrupted run resumes
    cfg.sft.steps = 0  # every run starts from the bench's one shared warm-up instead
    return cfg


def log(message: str) -> None:
    print(f"[learning {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_one(cfg: Any, sft_dir: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume) one (variant, seed) from the warm-up; its result with held-out eval."""
    from ospo_mlx.plot import read_metrics
    from ospo_mlx.train.sft import load_adapter_weights
    from ospo_mlx.train.trainer import Trainer

    run_dir = Path(cfg.run.out)
    resume = (run_dir / "checkpoints" / "latest").exists()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    trainer = Trainer.from_config(cfg, resume=resume)
    if not resume:
        load_adapter_weights(trainer.model, sft_dir)
    else:
        log(f"{cfg.run.name}: resuming at step {trainer.step}")
    if ctx.get("start") is None and ctx["test"]:  # the warm-up's own scores, once
        start = heldout_eval(trainer, ctx["test"], ctx["bm25"], ctx["hidden"])
        start["raw_query"] = raw_query_eval(trainer, ctx["test"], ctx["bm25"])
        start["trained"] = heldout_eval(trainer, ctx["pool"], ctx["bm25"], ctx["hidden"])
        start["trained"]["raw_query"] = raw_query_eval(trainer, ctx["pool"], ctx["bm25"])
        ctx["start"] = start
        ctx["start_path"].write_text(json.dumps(start, indent=2) + "\n", encoding="utf-8")
        log(
            f"warm-up: held-out {start['reward']:.4f} (raw query {start['raw_query']['reward']:.4f}), "
            f"trained prompts {start['trained']['reward']:.4f} "
            f"(raw query {start['trained']['raw_query']['reward']:.4f})"
        )

    def on_step(step: int, m: dict[str, float]) -> None:
        log(
            f"{cfg.run.name} step {step}/{cfg.optim.steps}: reward {m['reward']:.4f} "
            f"{m['time/step']:.1f}s"
        )

    trainer.on_step = on_step
    t0 = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - t0
    rows = {int(r["step"]): r for r in read_metrics(run_dir)[0] if "step" in r}
    history = [rows[s] for s in sorted(rows)]
    test = heldout_eval(trainer, ctx["test"], ctx["bm25"], ctx["hidden"]) if ctx["test"] else None
    trained = (
        heldout_eval(trainer, ctx["pool"], ctx["bm25"], ctx["hidden"]) if ctx["test"] else None
    )
    if test and trained:
        log(
            f"{cfg.run.name}: held-out {test['reward']:.4f}, BM25 {test['bm25']:.4f}; "
            f"trained prompts {trained['reward']:.4f}, BM25 {trained['bm25']:.4f}"
        )
    result = {
        "variant": cfg.run.name.rsplit("-seed", 1)[0],
        "algorithm": cfg.algorithm,
        "seed": cfg.run.seed,
        "rewards": [h["reward"] for h in history],
        "mean_length": [h.get("completions/mean_length") for h in history],
        "format_rate": [
            1 - (h.get("ospo/no_answer_tags", 0) + h.get("ospo/unclosed_answer", 0)) / ctx["batch"]
            for h in history
        ],
        "collapsed_repeats": sum(h.get("reward/collapsed_repeats", 0) for h in history),
        "after_answer": sum(h.get("completions/after_answer", 0) for h in history),
        "step_time_s": statistics.median(h["time/step"] for h in history),
        "train_seconds": seconds,
        "test": test,
        "trained": trained,
    }
    del trainer
    gc.collect()
    mx.clear_cache()
    return result


def warm_up(base: Any, args: Any, out: Path) -> dict[str, Any]:
    """Run (or reuse) the supervised warm-up; returns its summary."""
    from ospo_mlx.train.sft import SFTConfig, run_sft

    sft_dir = out / "sft"
    summary_path = sft_dir / "sft_summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    sft = SFTConfig(
        steps=args.sft_steps,
        batch_size=args.sft_batch_size,
        learning_rate=args.sft_learning_rate,
        seed=0,
    )
    log(f"warm-up: {sft.steps} SFT steps of {sft.batch_size} examples")
    res = run_sft(
        base, sft, sft_dir, on_step=lambda i, r: log(f"sft step {i}/{sft.steps}: {r['loss']:.4f}")
    )
    summary = {
        "steps": sft.steps,
        "batch_size": sft.batch_size,
        "learning_rate": sft.learning_rate,
        "examples": res.examples,
        "first_loss": res.metrics[0]["loss"],
        "final_loss": res.metrics[-1]["loss"],
        "seconds": res.seconds,
        "adapter_dir": str(sft_dir),
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------- summary


EVAL_KEYS = (
    "reward", "bm25", "format_rate", "after_answer_rate", "mean_tokens", "distinct_word_ratio",
    "repetition_rate", "answer_words", "right_precision", "right_recall",
)  # fmt: skip


def _eval_summary(evaluation: dict | None) -> dict | None:
    """An evaluation without its per-task lists and nested evaluations."""
    if not evaluation:
        return None
    skip = ("raw_query", "per_task", "trained", "texts")
    out = {k: v for k, v in evaluation.items() if k not in skip}
    return {**out, "examples": evaluation.get("texts", [])[:3]}


def summarize(runs: list[dict[str, Any]], args: Any, start: dict | None) -> dict[str, Any]:
    """The learning.json body: AUCs, paired differences, bands, held-out, power plan.

    Curves are cut to `args.steps`, so runs kept from a longer bench compare on equal terms."""
    runs = [{**r, "rewards": r["rewards"][: args.steps]} for r in runs]
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    by = {
        v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in variants
    }
    window = args.window
    first = [S.trailing_mean(r["rewards"], min(window, len(r["rewards"])), window) for r in runs]
    start_train = float(np.mean(first))
    # Steps to target: by default, to beat the raw query on the trained prompts (the bar a
    # rewrite must clear to be worth writing); --target or --target-gain set another.
    raw_trained = ((start or {}).get("trained") or {}).get("raw_query")
    if args.target is not None:
        target = args.target
    elif args.target_gain is None and raw_trained:
        target = raw_trained["reward"]
    else:
        target = start_train + (args.target_gain if args.target_gain is not None else 0.05)
    auc = {v: {str(r["seed"]): S.auc(r["rewards"]) for r in rs} for v, rs in by.items()}
    per: dict[str, Any] = {}
    for v, rs in by.items():
        values = list(auc[v].values())
        reached = [S.steps_to_target(r["rewards"], target, window) for r in rs]
        tests = [r["test"] for r in rs if r.get("test")]
        row: dict[str, Any] = {
            "auc_mean_ci95": S.bootstrap_mean_ci(values),
            "steps_to_target": reached,
            "reached_target": f"{sum(s is not None for s in reached)}/{len(reached)}",
            "curve": S.curve_bands([r["rewards"] for r in rs], window),
            "step_time_s": float(np.median([r["step_time_s"] for r in rs])),
            "collapsed_repeats": int(sum(r.get("collapsed_repeats", 0) for r in rs)),
        }
        choice = [r["choice"] for r in rs if r.get("choice")]
        if choice:  # mean over seeds, step by step (cut to the shortest run)
            row["choice"] = {
                k: np.mean(
                    [c[k][: min(len(x[k]) for x in choice)] for c in choice], axis=0
                ).tolist()
                for k in choice[0]
                if all(c[k] for c in choice)
            }
        for prefix, evals in (
            ("heldout", tests),
            ("trained", [r["trained"] for r in rs if r.get("trained")]),
        ):
            for key in EVAL_KEYS:
                if evals and key in evals[0]:
                    row[f"{prefix}_{key}"] = S.bootstrap_mean_ci([t[key] for t in evals])
        per[v] = row
    diffs = {}
    if BASELINE in by:
        for v in variants:
            if v == BASELINE:
                continue
            seeds = sorted(set(auc[v]) & set(auc[BASELINE]), key=int)
            if seeds:
                mean, lo, hi = S.paired_diff_ci(
                    [auc[v][s] for s in seeds], [auc[BASELINE][s] for s in seeds]
                )
                diffs[v] = {"mean": mean, "ci95": [lo, hi], "seeds": len(seeds)}
    power = None
    if BASELINE in by and min(len(r["rewards"]) for r in by[BASELINE]) >= 2:
        power = S.power_plan(
            {v: list(auc[v].values()) for v in variants},
            {v: [r["rewards"] for r in by[v]] for v in variants},
            BASELINE,
            start_train,
        )
    return {
        "algorithms": variants,
        "variants": {
            v: {"algorithm": VARIANTS[v][0], "overrides": VARIANTS[v][1]} for v in variants
        },
        "seeds": sorted({r["seed"] for r in runs}),
        "steps": args.steps,
        "window": window,
        "start_train_reward": start_train,
        "target": target,
        "auc": auc,
        "diff_auc": diffs,
        "diff_auc_ci95": {v: d["ci95"] for v, d in diffs.items()},
        "heldout": {v: {k[8:]: per[v][k] for k in per[v] if k.startswith("heldout_")} for v in per},
        "raw_query_heldout": (start or {}).get("raw_query"),
        "warmup_heldout": _eval_summary(start),
        "trained_prompts": {
            v: {k[8:]: per[v][k] for k in per[v] if k.startswith("trained_")} for v in per
        },
        "raw_query_trained_prompts": ((start or {}).get("trained") or {}).get("raw_query"),
        "warmup_trained_prompts": _eval_summary((start or {}).get("trained")),
        "per_variant": per,
        "power": power,
    }


def plot_bands_png(summary: dict[str, Any], path: Path) -> Path | None:
    """Reward curves with 95% bands per variant (needs matplotlib; None without it)."""
    try:
        from ospo_mlx.plot import plot_bands
    except ImportError:
        return None
    curves = {v: row["curve"] for v, row in summary["per_variant"].items()}
    refs = {}  # the curves are the trained prompts' rewards: their references, greedy
    if summary.get("raw_query_trained_prompts"):
        refs["raw query"] = summary["raw_query_trained_prompts"]["reward"]
    if summary.get("warmup_trained_prompts"):
        refs["warm-up (greedy)"] = summary["warmup_trained_prompts"]["reward"]
    try:
        return plot_bands(
            curves, path, refs, title=f"training reward, {summary['window']}-step mean"
        )
    except OspoError as exc:
        log(f"no PNG: {exc}")
        return None


def fmt_ci(t: Any, d: int = 3) -> str:
    return f"{t[0]:.{d}f} [{t[1]:.{d}f}, {t[2]:.{d}f}]" if t else "n/a"


def report_lines(result: dict[str, Any]) -> list[str]:
    from ospo_mlx.plot import sparkline

    s = result["summary"]
    lines = [
        f"learning ({result['task']}): {result['model']}, seeds {s['seeds']} x {s['steps']} steps, "
        f"{result['batch_size']} prompts x G={result['num_generations']}",
        f"warm-up: {result['sft']['steps']} SFT steps, loss {result['sft']['first_loss']:.3f} -> "
        f"{result['sft']['final_loss']:.3f}",
    ]
    for label, key in (("trained prompts", "trained_prompts"), ("held-out", "heldout")):
        w, r = s.get(f"warmup_{key}"), s.get(f"raw_query_{key}")
        if w and r:
            lines.append(
                f"{label}: warm-up {w['reward']:.4f} (BM25 {w['bm25']:.4f}), raw query "
                f"{r['reward']:.4f} (BM25 {r['bm25']:.4f})"
            )
    curves = [row["curve"] for row in s["per_variant"].values()]
    lo = min(min(c["mean"]) for c in curves) if curves else 0
    hi = max(max(c["mean"]) for c in curves) if curves else 1
    lines.append(
        f"target {s['target']:.4f}; curves ({s['window']}-step mean) on [{lo:.3f}, {hi:.3f}]:"
    )
    for v, row in s["per_variant"].items():
        c = row["curve"]
        lines.append(f"  {v:<11} {sparkline(c['mean'], 60, lo, hi)} {c['mean'][-1]:.3f}")
    for v, row in s["per_variant"].items():
        lines.append(
            f"{v}: AUC {fmt_ci(row['auc_mean_ci95'])}, reached target {row['reached_target']} "
            f"(steps {row['steps_to_target']})"
        )
        for label, key in (("trained prompts", "trained"), ("held-out", "heldout")):
            if f"{key}_reward" in row:
                lines.append(
                    f"  {label} {fmt_ci(row[f'{key}_reward'])}, BM25 {fmt_ci(row[f'{key}_bm25'])}, "
                    f"format {row[f'{key}_format_rate'][0]:.2f}, distinct words "
                    f"{row[f'{key}_distinct_word_ratio'][0]:.2f}, words "
                    f"{row[f'{key}_answer_words'][0]:.1f}"
                    + (
                        f", right precision {row[f'{key}_right_precision'][0]:.2f}"
                        if f"{key}_right_precision" in row
                        else ""
                    )
                )
    for v, row in s["per_variant"].items():
        c = row.get("choice")
        if c and c.get("right_precision"):

            def ends(key: str, c: dict = c) -> str:  # first vs last quarter of the steps
                q = max(1, len(c[key]) // 4)
                return f"{np.mean(c[key][:q]):.2f} -> {np.mean(c[key][-q:]):.2f}"

            lines.append(
                f"{v} samples (first -> last quarter): right-phrase precision "
                f"{ends('right_precision')}, recall {ends('right_recall')}, phrases named "
                f"{ends('named')}, closed {ends('closed')}, repetition {ends('repetition_rate')}"
                + (
                    f", credit sign right {c['credit_sign_accuracy'][0]:.2f}"
                    if c.get("credit_sign_accuracy")
                    else ""
                )
            )
    for v, d in s["diff_auc"].items():
        lines.append(
            f"AUC {v} - grpo: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] ({d['seeds']} seeds)"
        )
    if s["power"]:
        p = s["power"]
        lines.append(
            f"power: step noise {p['step_noise_sd']:.3f} (paired differences "
            f"{ {v: round(x, 3) for v, x in p['paired_step_noise_sd'].items()} }), seed sd "
            f"{p['seed_level_sd']:.3f}; seeds needed by steps, 25% of AUC: "
            f"{p['seeds_needed']['relative_auc']}, 25% of the gain: "
            f"{p['seeds_needed'].get('relative_gain', 'n/a (GRPO gained nothing)')}; "
            f"paired: {p['seeds_needed_paired']}"
            + ("" if p["seed_level_known"] else " (lower bounds: one seed per variant)")
        )
    return lines


def parse_args(argv: list[str] | None = None) -> Any:
    parser = bench_parser(__doc__, quick_help="1 seed, 3 steps, 2 prompts x G=4, 4 SFT steps")
    parser.add_argument("--task", choices=TASKS, default="choice", help="which task")
    parser.add_argument("--config", default="configs/learning.yaml", help="base training config")
    parser.add_argument("--model", default=None, help="model override (e.g. tiny)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    parser.add_argument("--algorithms", default=",".join(VARIANTS), help="variants to train")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default 30)")
    parser.add_argument("--window", type=int, default=None, help="trailing-mean window (5)")
    parser.add_argument("--target", type=float, default=None, help="absolute target reward")
    parser.add_argument(
        "--target-gain",
        type=float,
        default=None,
        help="target = start + this (default: the raw query's reward on the trained prompts)",
    )
    parser.add_argument("--save-every", type=int, default=5, help="checkpoint every N steps")
    parser.add_argument("--sft-steps", type=int, default=None, help="warm-up steps (30)")
    parser.add_argument("--sft-batch-size", type=int, default=4)
    parser.add_argument("--sft-learning-rate", type=float, default=1e-3)
    parser.add_argument("--train-tasks", type=int, default=200, help="choice: training tasks")
    parser.add_argument("--test-tasks", type=int, default=None, help="held-out tasks (30)")
    parser.add_argument(
        "--rl-tasks",
        type=int,
        default=16,
        help="RL prompt pool: the first N training tasks (the warm-up uses the rest; 0 = all)",
    )
    parser.add_argument(
        "--esci-source", default="../shared/data/esci-sample", help="ESCI files (--task esci)"
    )
    parser.add_argument(
        "--out", default=None, help="where runs are kept (runs/bench-learning-TASK)"
    )
    parser.add_argument("--results", default=None, help="also write learning.json here")
    parser.add_argument("--png", default=None, help="reward-curve PNG (default OUT/learning.png)")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    parser.add_argument("--report-only", action="store_true", help="summarize finished runs only")
    args = parser.parse_args(argv)
    q = args.quick
    args.seeds = args.seeds if args.seeds is not None else (1 if q else 3)
    args.steps = args.steps if args.steps is not None else (3 if q else 30)
    args.window = args.window if args.window is not None else (2 if q else 5)
    args.sft_steps = args.sft_steps if args.sft_steps is not None else (4 if q else 30)
    args.test_tasks = args.test_tasks if args.test_tasks is not None else (8 if q else 30)
    args.out = args.out or f"runs/bench-learning-{args.task}"
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not args.algorithms or set(args.algorithms) - set(VARIANTS):
        parser.error(f"--algorithms takes a comma-separated subset of {','.join(VARIANTS)}")
    if args.rl_tasks < 0:
        parser.error("--rl-tasks must be 0 (every training task) or more")
    if min(args.seeds, args.steps, args.window, args.save_every) < 1:
        parser.error("--seeds, --steps, --window and --save-every must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ospo_mlx.data.schema import load_catalog, load_tasks
    from ospo_mlx.reward.bm25 import BM25Retriever

    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    data, hidden = prepare_data(args, out)
    rl_train, sft_train = split_train(args, data, out)
    base = base_config(args, data, rl_train)
    catalog = load_catalog(data / "catalog.jsonl")
    test = load_tasks(data / "test.jsonl", catalog)[: args.test_tasks] if args.test_tasks else []
    pool = load_tasks(rl_train, catalog)
    start_path = out / "start_eval.json"
    ctx: dict[str, Any] = {
        "test": test,
        "pool": pool,
        "hidden": hidden,
        "bm25": BM25Retriever(catalog) if test else None,
        "start": json.loads(start_path.read_text()) if start_path.is_file() else None,
        "start_path": start_path,
        "batch": base.optim.batch_size * base.optim.num_generations,
    }
    if args.report_only:
        sft_path = out / "sft" / "sft_summary.json"
        if not sft_path.is_file():
            raise OspoError(f"{out}: no finished warm-up to report; run without --report-only")
        sft = json.loads(sft_path.read_text(encoding="utf-8"))
    else:
        sft = warm_up(base_config(args, data, sft_train), args, out)
    runs = []
    for seed in range(args.seeds):  # interleaved, so a partial bench stays balanced
        for variant in VARIANTS:
            cfg = run_config(variant, seed, args, data, rl_train, out)
            done = Path(cfg.run.out) / "result.json"
            if done.is_file():
                runs.append(json.loads(done.read_text(encoding="utf-8")))
                continue
            if args.report_only or variant not in args.algorithms:
                continue
            result = train_one(cfg, Path(sft["adapter_dir"]), ctx)
            done.write_text(json.dumps(result) + "\n", encoding="utf-8")
            runs.append(result)
    if not runs:
        raise OspoError(f"{out}: no finished run to report")
    if hidden:  # the choice task: what the policy learned to name, step by step
        for r in runs:
            path = out / "runs" / f"{r['variant']}-seed{r['seed']}" / "rollouts.jsonl"
            if path.is_file():
                r["choice"] = choice_curves(path, hidden)
    summary = summarize(runs, args, ctx["start"])
    png = plot_bands_png(summary, Path(args.png) if args.png else out / "learning.png")
    o = base.optim
    result = {
        **{
            k: summary[k]
            for k in (
                "algorithms",
                "seeds",
                "steps",
                "auc",
                "diff_auc_ci95",
                "heldout",
                "raw_query_heldout",
                "trained_prompts",
                "raw_query_trained_prompts",
                "warmup_trained_prompts",
            )
        },
        "rl_tasks": len(pool),
        "task": args.task,
        "model": base.model.name or "smollm2-135m-instruct",
        "config": args.config,
        "overrides": args.set or [],
        "batch_size": o.batch_size,
        "num_generations": o.num_generations,
        "max_new_tokens": base.sampling.max_new_tokens,
        "learning_rate": o.learning_rate,
        "sft": sft,
        "summary": summary,
        "runs": runs,
        "png": str(png) if png else None,
        "seconds": time.perf_counter() - t_start,
        "machine": machine(),
    }
    text = json.dumps(result, indent=2) + "\n"
    (out / "learning.json").write_text(text, encoding="utf-8")
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(text, encoding="utf-8")
    emit("learning", result, args.json, report_lines(result))
    return result


if __name__ == "__main__":
    try:
        main()
    except OspoError as exc:  # user errors: one line, exit code 2 (as the CLI does)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
