"""`ospo train`: LoRA RL fine-tuning with OSPO (or GRPO) from a YAML config plus overrides."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from ospo_mlx.config import TrainConfig


def train(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="YAML config (see configs/); defaults otherwise."
    ),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (optim.steps)."),
    out: Path | None = typer.Option(None, "--out", help="Run directory (default runs/<name>)."),
    name: str | None = typer.Option(None, "--name", help="Run name (run.name)."),
    algorithm: str | None = typer.Option(None, "--algorithm", help="ospo or grpo."),
    model: str | None = typer.Option(
        None, "--model", help="Model path or repo id (model.name); 'tiny' for tests."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (run.seed)."),
    adapters: Path | None = typer.Option(
        None, "--adapters", help="Start from these mlx-lm adapters (model.adapters)."
    ),
    sft_steps: int | None = typer.Option(
        None,
        "--sft-steps",
        help="Supervised answer-format warm-up updates before RL (sft.steps).",
    ),
    warmup_steps: int | None = typer.Option(
        None, "--warmup-steps", hidden=True, help="Deprecated: use --sft-steps."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run from its last complete checkpoint."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override any option: --set optim.learning_rate=1e-4 (repeatable)."
    ),
    plain: bool = typer.Option(
        False, "--plain", help="One plain line per step even on a terminal."
    ),
) -> None:
    """Train LoRA adapters with OSPO or GRPO; writes runs/<name>/ (metrics, rollouts, adapters)."""
    from ospo_mlx.config import load_config
    from ospo_mlx.train.interrupt import TrainingInterrupted
    from ospo_mlx.train.session import resume_config_path

    if warmup_steps is not None:
        sys.stderr.write(
            "warning: --warmup-steps is deprecated, use --sft-steps (optim.warmup_steps is the "
            "learning-rate warm-up)\n"
        )
        sft_steps = warmup_steps if sft_steps is None else sft_steps
    flags = {
        "optim.steps": steps,
        "run.out": str(out) if out else None,
        "run.name": name,
        "algorithm": algorithm,
        "model.name": model,
        "run.seed": seed,
        "model.adapters": str(adapters) if adapters else None,
        "sft.steps": sft_steps,
    }
    if resume and config is None:  # continue with the run's own resolved config
        config = resume_config_path(out, name)
    cfg = load_config(config, overrides, **flags)
    try:
        history = run_with_progress(cfg, resume=resume, live=False if plain else None)
    except TrainingInterrupted as exc:  # Ctrl-C/SIGTERM: checkpoint written, say how to resume
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(exc.exit_code) from None
    from ospo_mlx.train.distributed import init_world, launched

    if launched() and not init_world().is_main:
        return  # under mlx.launch only rank 0 reports
    last = history[-1] if history else {}
    typer.echo(
        f"done: {len(history)} steps, reward {last.get('reward', float('nan')):.4f}, "
        f"adapters in {cfg.run_dir() / 'adapters'}"
    )


def run_with_progress(
    config: TrainConfig, *, resume: bool = False, live: bool | None = None
) -> list[dict[str, float]]:
    """Run `ospo train` from a resolved config with the live progress view; returns the metrics rows.

    Under mlx.launch only rank 0 shows progress (and writes the run directory).
    """
    from contextlib import ExitStack

    from ospo_mlx.train.session import start_training
    from ospo_mlx.ui.progress import TrainProgress

    trainer = start_training(config, resume=resume)
    if not trainer.world.is_main:
        return trainer.run()
    title = f"ospo train {config.algorithm} · {trainer.run_dir}"
    if trainer.world.distributed:
        title += f" · {trainer.world.size} ranks"
    sft_steps = config.sft.steps
    report = max(1, sft_steps // 10)

    def show_sft(i: int, row: dict[str, float]) -> None:
        if i == 1 or i % report == 0 or i == sft_steps:
            typer.echo(f"warm-up {i}/{sft_steps}: loss {row['loss']:.4f} ({row['time/step']:.1f}s)")
        if i == sft_steps:
            typer.echo(f"warm-up done: {trainer.run_dir / 'warmup'}")

    with ExitStack() as stack:
        view: list[TrainProgress] = []

        def show_step(step: int, row: dict[str, float]) -> None:
            if not view:  # opened at the first RL step, after the warm-up's plain lines
                progress = TrainProgress(config.optim.steps, step - 1, title=title, live=live)
                view.append(stack.enter_context(progress))
            view[0].update(step, row)

        trainer.on_step = show_step
        return trainer.run(on_warmup_step=show_sft)


# TRL GRPOConfig options users look for by name (all options: docs/run_format.md). Static text:
# importing ospo_mlx.config here would slow every CLI start.
TRL_OPTIONS = (
    ("optim.importance_sampling_level", "token | sequence (GSPO; OSPO's credit then acts as GRPO's) | "
     "sequence_token (GSPO-token); matters only off-policy (num_iterations or "
     "steps_per_generation > 1)"),
    ("optim.delta", "two-sided clipping: cap the ratio at delta (> 1 + epsilon_high); null = off"),
    ("optim.mask_truncated_completions", "completions cut at max_new_tokens leave the loss"),
    ("optim.top_entropy_quantile", "gradient only on the top rho quantile of tokens by entropy"),
    ("optim.steps_per_generation", "optimizer steps fed by one sampling pass"),
    ("optim.dynamic_sampling", "DAPO: drop groups with equal rewards and draw more prompts"),
    ("optim.dynamic_sampling_max_draws", "most sampling passes per generation"),
    ("run.report_to", "tensorboard, wandb and/or none: also log the metrics there (offline)"),
    ("run.log_completions, run.log_completions_steps", "completions table every N steps"),
)  # fmt: skip
EPILOG = "TRL options, set with --set KEY=VALUE:\n\n" + "\n\n".join(
    f"{key}: {text}" for key, text in TRL_OPTIONS
)


def register(app: typer.Typer) -> None:
    app.command("train", epilog=EPILOG)(train)
