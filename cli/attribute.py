"""`ospo attribute`: the segments, coalition values and Owen values of one response."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def attribute(
    catalog: Path = typer.Option(..., "--catalog", help="catalog.jsonl"),
    response: str = typer.Option(
        ..., "--response", help="The response text to attribute (answer tags optional)."
    ),
    tasks: Path | None = typer.Option(None, "--tasks", help="tasks.jsonl holding --task."),
    task: str | None = typer.Option(None, "--task", help="Task id in --tasks."),
    task_json: str | None = typer.Option(
        None, "--task-json", help="The task as one JSON object instead of --tasks/--task."
    ),
    segmenter: str = typer.Option("phrase", "--segmenter", help="phrase, sentence, word or regex."),
    estimator: str = typer.Option(
        "shapley", "--estimator", help="shapley (exact or kernel) or contiguous (the paper's)."
    ),
    max_coalitions: int | None = typer.Option(
        None,
        "--max-coalitions",
        help="Coalitions evaluated (sampled above this); default: training's (attribution).",
    ),
    max_width: int | None = typer.Option(
        None, "--max-width", help="contiguous estimator: widest window (default: all)."
    ),
    surrogate: str = typer.Option(
        "pooled", "--surrogate", help="pooled (stand-in game as control variate) or none."
    ),
    coalition_text: str = typer.Option("drop", "--coalition-text", help="drop or keep-gaps."),
    mode: str = typer.Option(
        "pool", "--mode", help="pool (the task's candidates) or catalog (whole catalog)."
    ),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="Local sentence-transformers directory (default: MiniLM)."
    ),
    index: Path | None = typer.Option(
        None, "--index", help="Index directory from `ospo index build`."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the coalition sampling."),
    max_rows: int = typer.Option(64, "--max-rows", help="Coalition rows shown."),
    as_json: bool = typer.Option(False, "--json", help="Print the attribution as one JSON line."),
) -> None:
    """Print the segments, each coalition's text and v(S), and each segment's Owen value."""
    from rich.console import Console

    from ospo_mlx.attribution.config import AttributionConfig
    from ospo_mlx.data.schema import find_task, load_catalog
    from ospo_mlx.reward.coalitions import attribute_response, token_counts
    from ospo_mlx.reward.retrieval import RewardConfig, build_reward
    from ospo_mlx.ui.renderables import coalition_table, segment_table

    products = load_catalog(catalog)
    the_task = find_task(products, tasks=tasks, task_id=task, task_json=task_json)
    if mode == "pool" and the_task.pool is None:
        mode = "catalog"  # a task without candidates is ranked against the whole catalog
    config = RewardConfig(mode=mode, coalition_text=coalition_text)
    credit = AttributionConfig(
        segmenter=segmenter, estimator=estimator, max_width=max_width, surrogate=surrogate
    )
    if max_coalitions is not None:  # else the training default, so the credit matches a run's
        credit.max_coalitions = max_coalitions
    reward = build_reward(products, config, encoder_dir=encoder, index_dir=index)
    attr = attribute_response(reward, response, the_task, credit, seed=seed)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "task": the_task.id,
                    "reward": attr.reward,
                    "metric": reward.reward_metric,
                    "segments": attr.segment_texts,
                    "spans": attr.spans,
                    "coalitions": attr.members,
                    "coalition_texts": attr.coalition_texts,
                    "values": attr.values.tolist(),
                    "owen": attr.owen.tolist(),
                    "baseline": attr.baseline,
                    "exact": attr.exact,
                    "surrogate": attr.surrogate,
                    "unpaired": attr.unpaired,
                }
            )
        )
        return
    console = Console()
    console.print(
        f"[bold]task[/] {the_task.id} ({the_task.kind})   [bold]{reward.reward_metric}[/] {attr.reward:.4f}   "
        f"[bold]mode[/] {mode}   [bold]retriever[/] {reward.retriever.name}"
    )
    console.print(
        f"[bold]v(empty)[/] {attr.baseline:.4f} (the score with no answer)   "
        f"[bold]sum of values[/] {attr.owen.sum():+.4f} (reward - v(empty) "
        f"{attr.reward - attr.baseline:+.4f})   "
        + ("[green]exact Shapley values[/]" if attr.exact else f"[bold]estimator[/] {estimator}")
        + (" + stand-in game" if attr.surrogate else "")
    )
    console.print(
        coalition_table(
            attr.members,
            attr.coalition_texts,
            attr.values,
            max_rows=max_rows,
            title=f"{len(attr.values)} coalitions",
        )
    )
    console.print(
        segment_table(attr.segment_texts, attr.owen, token_counts(reward, attr.segment_texts))
    )
    if attr.unpaired:
        console.print(
            f"[yellow]{attr.unpaired} segment(s) had no evaluated pair (S, S+j): their Owen value is 0[/]"
        )


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute)
