"""`ospo eval`: raw query vs base model vs trained adapters, per retriever, with bootstrap CIs."""

from __future__ import annotations

from pathlib import Path

import typer


def eval_cmd(
    tasks: Path = typer.Option(..., "--tasks", help="Held-out evaluation tasks JSONL."),
    catalog: Path | None = typer.Option(
        None, "--catalog", help="Catalog JSONL (default: the run's data.catalog)."
    ),
    run: Path | None = typer.Option(None, "--run", help="Run directory written by `ospo train`."),
    adapters: Path | None = typer.Option(
        None, "--adapters", help="mlx-lm adapter directory (instead of --run)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="Base model (default: the run's config.yaml)."
    ),
    retriever: list[str] = typer.Option(
        ["train", "bm25"],
        "--retriever",
        help="train, bm25, dense or an encoder directory (repeatable).",
    ),
    num_samples: int = typer.Option(
        1, "--num-samples", "-n", help="Responses per task (needs --temperature > 0 when > 1)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy decoding."),
    max_new_tokens: int = typer.Option(
        48, "--max-new-tokens", help="Maximum response length in tokens."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts generated together."),
    max_tasks: int | None = typer.Option(
        None, "--max-tasks", help="Evaluate only the first N tasks."
    ),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", help="Bootstrap resamples for the paired CIs."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of sampling and bootstrap."),
    out: Path | None = typer.Option(None, "--out", help="eval.json path (default: RUN/eval.json)."),
) -> None:
    """Evaluate the raw query, the base model and the adapters with the training and OOD retrievers."""
    from rich.console import Console
    from rich.table import Table

    from ospo_mlx.eval import EVAL_METRICS, EvalArgs, evaluate

    args = EvalArgs(
        tasks=tasks, catalog=catalog, run=run, adapters=adapters, model=model, retrievers=list(retriever),
        num_samples=num_samples, temperature=temperature, max_new_tokens=max_new_tokens,
        batch_size=batch_size, max_tasks=max_tasks, bootstrap=bootstrap, seed=seed, out=out,
    )  # fmt: skip
    report, path = evaluate(args)
    console = Console()
    table = Table(title=f"ospo eval ({report['config']['n_tasks']} tasks)")
    for col in ("system", "retriever", *EVAL_METRICS, "length", "format"):
        table.add_column(col, justify="left" if col in {"system", "retriever"} else "right")
    for row in report["results"]:
        extra = (
            [f"{row['mean_length']:.1f}", f"{row['answer_format_rate']:.0%}"]
            if "mean_length" in row
            else ["-", "-"]
        )
        table.add_row(
            row["system"], row["retriever"], *(f"{row[m]:.4f}" for m in EVAL_METRICS), *extra
        )
    console.print(table)
    diffs = Table(title="paired NDCG@10 differences (95% bootstrap CI)")
    for col in ("retriever", "comparison", "mean diff", "CI", "verdict"):
        diffs.add_column(col)
    for c in report["comparisons"]:
        verdict = "gain" if c["ci_low"] > 0 else "loss" if c["ci_high"] < 0 else "within noise"
        diffs.add_row(
            c["retriever"], f"{c['a']} - {c['b']}", f"{c['mean_diff']:+.4f}",
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]", verdict,
        )  # fmt: skip
    console.print(diffs)
    for r in report.get("function_rewards", []):  # the run's reward.functions, per system
        mean = "n/a" if r["mean"] is None else f"{r['mean']:.4f}"
        console.print(f"reward {r['reward']} · {r['system']}: mean {mean} ({r['not_applicable']} n/a)")
    console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
