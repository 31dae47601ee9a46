"""Learning bench: GRPO against OSPO from the same supervised warm-up, over several seeds.

The synthetic catalog (data/demo) hides each query's relevant products behind attributes the
query only implies, so the reward depends on a few segments of the answer (the ones naming the
hidden use and material): the setting where segment-level credit should pay off. The bench:

1. warms the model up with LoRA SFT on prompt -> "<answer>query category</answer>" targets
   (ospo_mlx/train/sft.py; no hidden attributes), saved once and shared by every run;
2. trains GRPO and OSPO from those adapters with the same seeds, sample budget and
   hyper-parameters (the config file plus --set overrides; only `algorithm` differs);
3. reports the training reward (trailing mean over --window steps) at fixed step budgets, the
   steps needed to reach a target reward, and the greedy held-out (test) reward at the end,
   as mean, std, min and max over seeds.

    python bench/learning.py                    # 3 seeds x 2 algorithms x 40 steps, SmolLM2
    python bench/learning.py --quick --json     # 1 seed, 3 steps, G=2: a few minutes
    python bench/learning.py --quick --model tiny --json   # smoke run (random tiny model)

Finished runs are kept under --out (result.json per run) and reused, so an interrupted bench
continues where it stopped; --fresh starts over. Run it from the repository root (the
config's data paths are relative to it).
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

from bench.common import bench_parser, emit, machine, spread
from ospo_mlx.errors import OspoError
# isort: on

ALGORITHMS = ("grpo", "ospo")


# ----------------------------------------------------------------------------- summary math


def trailing_mean(rewards: list[float], step: int, window: int) -> float:
    """Mean reward of the `window` steps ending at 1-based `step` (fewer at the start)."""
    if not 1 <= step <= len(rewards):
        raise ValueError(f"step {step} is outside 1..{len(rewards)}")
    return float(np.mean(rewards[max(0, step - window) : step]))


def steps_to_target(rewards: list[float], target: float, window: int) -> int | None:
    """First 1-based step whose full-window trailing mean reaches `target`; None if never.

    Steps before the first full window are skipped: a one-step mean is too noisy to count.
    """
    for step in range(min(window, len(rewards)), len(rewards) + 1):
        if trailing_mean(rewards, step, window) >= target:
            return step
    return None


def default_budgets(steps: int) -> list[int]:
    """A quarter, half and all of the steps (deduplicated, at least 1)."""
    return sorted({max(1, steps // 4), max(1, steps // 2), steps})


def summarize(
    runs: list[dict[str, Any]], budgets: list[int], window: int, target: float
) -> dict[str, dict[str, Any]]:
    """Per algorithm: reward at each budget, steps to target, test reward, step time (spreads)."""
    out: dict[str, dict[str, Any]] = {}
    for algorithm in sorted({r["algorithm"] for r in runs}):
        mine = [r for r in runs if r["algorithm"] == algorithm]
        row: dict[str, Any] = {"seeds": sorted(r["seed"] for r in mine)}
        for b in budgets:
            row[f"reward@{b}"] = spread(
                trailing_mean(r["rewards"], b, window) for r in mine if len(r["rewards"]) >= b
            )
        reached = [steps_to_target(r["rewards"], target, window) for r in mine]
        row["steps_to_target"] = spread(s for s in reached if s is not None)
        row["reached_target"] = f"{sum(s is not None for s in reached)}/{len(reached)}"
        row["test_reward"] = spread(r["test"]["reward"] for r in mine if r.get("test"))
        row["test_format_rate"] = spread(r["test"]["format_rate"] for r in mine if r.get("test"))
        row["step_time_s"] = spread(r["step_time_s"] for r in mine)
        out[algorithm] = row
    return out


def fmt(s: dict[str, Any], digits: int = 3) -> str:
    """'mean ± std [min, max]' of a spread (or 'n/a')."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    d = digits
    return f"{s['mean']:.{d}f} ± {s['std']:.{d}f} [{s['min']:.{d}f}, {s['max']:.{d}f}]"


# ----------------------------------------------------------------------------- evaluation


def greedy_eval(
    model: Any,
    tokenizer: Any,
    tasks: list[Any],
    catalog: dict[str, Any],
    reward: Any,
    config: Any,
    batch_size: int = 16,
) -> dict[str, float]:
    """Greedy answers for `tasks`: mean reward, fraction with both answer tags, mean length."""
    from mlx_lm.generate import batch_generate

    from ospo_mlx.data.prompts import encode_prompt

    model.eval()
    prompts = [encode_prompt(tokenizer, t, catalog, config.prompt) for t in tasks]
    texts, lengths = [], []
    for start in range(0, len(prompts), batch_size):
        out = batch_generate(
            model,
            tokenizer,
            prompts[start : start + batch_size],
            max_tokens=config.sampling.max_new_tokens,
            return_token_ids=True,
        )
        texts += list(out.texts)
        lengths += [len(ids) for ids in out.token_ids]
    scores = np.asarray(reward.score(texts, tasks), dtype=np.float64)
    open_tag, close_tag = config.prompt.answer_tags
    formatted = [open_tag in t and close_tag in t.split(open_tag)[-1] for t in texts]
    return {
        "reward": float(np.nan_to_num(scores).mean()),
        "format_rate": float(np.mean(formatted)),
        "mean_length": float(np.mean(lengths)),
        "n": len(tasks),
        "example": texts[0] if texts else "",
    }


# ----------------------------------------------------------------------------- runs


def base_config(args: Any) -> Any:
    from ospo_mlx.config import load_config

    overrides = list(args.set or [])
    if args.quick:  # tiny sample budget; explicit --set values still win (they come later)
        overrides = ["optim.batch_size=2", "optim.num_generations=2", *overrides]
    return load_config(args.config, overrides, **{"model.name": args.model})


def run_config(base: Any, algorithm: str, seed: int, steps: int, out: Path) -> Any:
    from ospo_mlx.config import config_from_dict

    cfg = config_from_dict(base.to_dict())
    cfg.algorithm = algorithm
    cfg.optim.steps = steps
    cfg.run.seed = seed
    cfg.run.name = f"{algorithm}-seed{seed}"
    cfg.run.out = str(out / cfg.run.name)
    cfg.run.save_every = steps  # adapters once, at the end
    cfg.sft.steps = 0  # every run starts from the bench's one shared warm-up instead
    return cfg


def log(message: str) -> None:
    print(f"[learning {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_one(
    cfg: Any, sft_dir: Path, test_tasks: list[Any], start_eval: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Train one (algorithm, seed) from the warm-up adapters; (run result, start test eval)."""
    from ospo_mlx.train.sft import load_adapter_weights
    from ospo_mlx.train.trainer import Trainer

    run_dir = Path(cfg.run.out)
    if run_dir.exists():  # an interrupted run: start it again from scratch
        shutil.rmtree(run_dir)
    trainer = Trainer.from_config(cfg)
    load_adapter_weights(trainer.model, sft_dir)
    start = None
    if start_eval and test_tasks:
        start = greedy_eval(
            trainer.model, trainer.tokenizer, test_tasks, trainer.catalog, trainer.reward, cfg
        )
        start["raw_query_reward"] = float(
            np.mean(trainer.reward.score([t.query or "" for t in test_tasks], test_tasks))
        )
        log(f"warm-up start: test reward {start['reward']:.4f}, format {start['format_rate']:.2f}")

    def on_step(step: int, m: dict[str, float]) -> None:
        log(
            f"{cfg.run.name} step {step}/{cfg.optim.steps}: reward {m['reward']:.4f} "
            f"loss {m['loss']:.4f} {m['time/step']:.1f}s"
        )

    trainer.on_step = on_step
    t0 = time.perf_counter()
    history = trainer.run()
    seconds = time.perf_counter() - t0
    test = None
    if test_tasks:
        test = greedy_eval(
            trainer.model, trainer.tokenizer, test_tasks, trainer.catalog, trainer.reward, cfg
        )
        log(f"{cfg.run.name}: test reward {test['reward']:.4f}, format {test['format_rate']:.2f}")
    result = {
        "algorithm": cfg.algorithm,
        "seed": cfg.run.seed,
        "rewards": [h["reward"] for h in history],
        "ndcg@10": [h.get("ndcg@10") for h in history],
        "no_answer_tags": [h.get("ospo/no_answer_tags") for h in history],
        "step_time_s": statistics.median(h["time/step"] for h in history),
        "train_seconds": seconds,
        "test": test,
    }
    del trainer
    gc.collect()
    mx.clear_cache()
    return result, start


def warm_up(base: Any, args: Any, out: Path) -> dict[str, Any]:
    """Run (or reuse) the supervised warm-up; returns its summary."""
    from ospo_mlx.train.sft import SFTConfig, run_sft

    sft_dir = out / "sft"
    summary_path = sft_dir / "sft_summary.json"
    if summary_path.is_file() and not args.fresh:
        return json.loads(summary_path.read_text(encoding="utf-8"))
    sft = SFTConfig(
        steps=args.sft_steps,
        batch_size=args.sft_batch_size,
        learning_rate=args.sft_learning_rate,
        seed=0,
    )
    log(f"warm-up: {sft.steps} SFT steps of {sft.batch_size} examples")
    res = run_sft(
        base,
        sft,
        sft_dir,
        on_step=lambda i, r: log(f"sft step {i}/{sft.steps}: loss {r['loss']:.4f}"),
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


def parse_args(argv: list[str] | None = None) -> Any:
    parser = bench_parser(__doc__, quick_help="1 seed, 3 steps, G=2, 6 SFT steps, 8 test tasks")
    parser.add_argument("--config", default="configs/demo.yaml", help="base training config")
    parser.add_argument("--model", default=None, help="model override (e.g. tiny)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--algorithms",
        default=",".join(ALGORITHMS),
        help="which to train (finished runs of the others under --out are still reported)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (default 40)")
    parser.add_argument("--budgets", default=None, help="step budgets, e.g. 10,20,40")
    parser.add_argument("--window", type=int, default=None, help="trailing-mean window (5)")
    parser.add_argument("--target", type=float, default=None, help="absolute target reward")
    parser.add_argument(
        "--target-gain", type=float, default=0.05, help="target = start reward + this"
    )
    parser.add_argument("--sft-steps", type=int, default=None, help="warm-up steps (30)")
    parser.add_argument("--sft-batch-size", type=int, default=4)
    parser.add_argument("--sft-learning-rate", type=float, default=5e-4)
    parser.add_argument("--test", default="data/demo/test.jsonl", help="held-out tasks")
    parser.add_argument("--test-tasks", type=int, default=None, help="test tasks (default 50)")
    parser.add_argument("--out", default="runs/bench-learning", help="where runs are kept")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs under --out")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="summarize the runs already finished under --out; train nothing",
    )
    args = parser.parse_args(argv)
    q = args.quick
    args.seeds = args.seeds if args.seeds is not None else (1 if q else 3)
    args.steps = args.steps if args.steps is not None else (3 if q else 40)
    args.window = args.window if args.window is not None else (2 if q else 5)
    args.sft_steps = args.sft_steps if args.sft_steps is not None else (6 if q else 30)
    args.test_tasks = args.test_tasks if args.test_tasks is not None else (8 if q else 50)
    if args.budgets:
        args.budgets = sorted({int(b) for b in args.budgets.split(",") if b.strip()})
    else:
        args.budgets = default_budgets(args.steps)
    if any(b < 1 or b > args.steps for b in args.budgets):
        parser.error(f"--budgets must lie in 1..{args.steps}")
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    if not args.algorithms or set(args.algorithms) - set(ALGORITHMS):
        parser.error(f"--algorithms takes a comma-separated subset of {','.join(ALGORITHMS)}")
    if args.seeds < 1 or args.steps < 1 or args.window < 1:
        parser.error("--seeds, --steps and --window must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from ospo_mlx.data.schema import load_catalog, load_tasks

    args = parse_args(argv)
    t_start = time.perf_counter()
    base = base_config(args)
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(base.data.catalog)
    test_tasks = load_tasks(args.test, catalog)[: args.test_tasks] if args.test_tasks else []

    if args.report_only:
        sft_path = out / "sft" / "sft_summary.json"
        if not sft_path.is_file():
            raise OspoError(f"{out}: no finished warm-up to report; run without --report-only")
        sft = json.loads(sft_path.read_text(encoding="utf-8"))
    else:
        sft = warm_up(base, args, out)
    sft_dir = Path(sft["adapter_dir"])
    start_path = out / "start_eval.json"
    start = json.loads(start_path.read_text()) if start_path.is_file() else None
    runs = []
    for seed in range(args.seeds):  # interleaved, so a partial bench stays balanced
        for algorithm in ALGORITHMS:
            cfg = run_config(base, algorithm, seed, args.steps, out)
            done = Path(cfg.run.out) / "result.json"
            if done.is_file():
                runs.append(json.loads(done.read_text(encoding="utf-8")))
                log(f"{cfg.run.name}: reusing {done}")
                continue
            if args.report_only or algorithm not in args.algorithms:
                continue
            result, got = train_one(cfg, sft_dir, test_tasks, start_eval=start is None)
            if got is not None:
                start = got
                start_path.write_text(json.dumps(start, indent=2) + "\n", encoding="utf-8")
            done.write_text(json.dumps(result) + "\n", encoding="utf-8")
            runs.append(result)

    if not runs:
        raise OspoError(f"{out}: no finished GRPO/OSPO run to report")
    first = [
        trailing_mean(r["rewards"], min(args.window, len(r["rewards"])), args.window) for r in runs
    ]
    start_reward = float(np.mean(first))
    target = args.target if args.target is not None else start_reward + args.target_gain
    algorithms = summarize(runs, args.budgets, args.window, target)
    o = base.optim
    result = {
        "model": base.model.name or "smollm2-135m-instruct",
        "config": args.config,
        "overrides": args.set or [],
        "seeds": args.seeds,
        "steps": args.steps,
        "budgets": args.budgets,
        "window": args.window,
        "batch_size": o.batch_size,
        "num_generations": o.num_generations,
        "max_new_tokens": base.sampling.max_new_tokens,
        "learning_rate": o.learning_rate,
        "start_train_reward": start_reward,
        "target": target,
        "sft": sft,
        "start_test": start,
        "algorithms": algorithms,
        "runs": [{k: v for k, v in r.items() if k != "no_answer_tags"} for r in runs],
        "seconds": time.perf_counter() - t_start,
        "machine": machine(),
    }
    (out / "learning.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"learning: {result['model']}, {args.seeds} seed(s) x {args.steps} steps, "
        f"{o.batch_size} prompts x G={o.num_generations}, window {args.window}",
        f"warm-up: {sft['steps']} SFT steps, loss {sft['first_loss']:.3f} -> {sft['final_loss']:.3f}",
    ]
    if start:
        lines.append(
            f"start (warm-up) test reward {start['reward']:.4f}, format {start['format_rate']:.2f}; "
            f"raw query {start['raw_query_reward']:.4f}"
        )
    lines.append(f"target reward {target:.4f} (start train reward {start_reward:.4f})")
    for algorithm, row in algorithms.items():
        lines.append(f"{algorithm}:")
        for b in args.budgets:
            lines.append(f"  reward@{b:<4d} {fmt(row[f'reward@{b}'])}")
        lines.append(
            f"  steps to target {fmt(row['steps_to_target'], 1)} (reached {row['reached_target']})"
        )
        lines.append(f"  test reward {fmt(row['test_reward'])}")
        lines.append(f"  step time s {fmt(row['step_time_s'], 1)}")
    emit("learning", result, args.json, lines)
    return result


if __name__ == "__main__":
    try:
        main()
    except OspoError as exc:  # user errors: one line, exit code 2 (as the CLI does)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
