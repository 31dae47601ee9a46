"""`ospo model`: import a GGUF file, inspect a model, sample from it, build the tiny test model."""

from __future__ import annotations

import json
from pathlib import Path

import typer

model_app = typer.Typer(
    help="Models: GGUF import, model info, quick generation, the tiny test model.",
    no_args_is_help=True,
)

MODEL_HELP = "Model: a local mlx-lm directory, a Hugging Face repo id, 'default' or 'tiny'."


@model_app.command("import-gguf")
def import_gguf(
    file: Path = typer.Argument(
        ..., help="A llama-architecture .gguf file (Q4_0/Q4_1/Q8_0/F16/F32)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write the mlx-lm model to."),
    dtype: str = typer.Option("float32", help="Float dtype of norms, scales and float tensors."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Convert a GGUF file into an mlx-lm model directory (quantized tensors stay quantized)."""
    from ospo_mlx.models.gguf import convert_gguf

    path = convert_gguf(file, out, dtype=dtype, overwrite=force)
    config = json.loads((path / "config.json").read_text())
    quant = config.get("quantization")
    typer.echo(
        f"wrote {path}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
        f"vocab {config['vocab_size']}, quantization {json.dumps(quant) if quant else 'none'}"
    )


@model_app.command("info")
def info(
    model: str = typer.Argument("default", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line."),
) -> None:
    """Where a model lives and its size, as loaded for training."""
    from mlx.utils import tree_flatten

    from ospo_mlx.models.load import load_model, resolve_model

    path = resolve_model(model)
    loaded, tokenizer = load_model(model)
    params = tree_flatten(loaded.parameters())
    report = {
        "model": model,
        "path": str(path),
        "parameters": sum(v.size for _, v in params),
        "dtypes": sorted({str(v.dtype).removeprefix("mlx.core.") for _, v in params}),
        "layers": len(loaded.layers),
        "vocab_size": tokenizer.vocab_size,
        "eos_token_ids": sorted(tokenizer.eos_token_ids),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
    }
    if as_json:
        typer.echo(json.dumps(report))
        return
    for key, value in report.items():
        typer.echo(f"{key:>14}: {value}")


@model_app.command("generate")
def generate(
    prompt: str = typer.Argument(..., help="User message (the chat template is applied)."),
    model: str = typer.Option("default", "--model", "-m", help=MODEL_HELP),
    num: int = typer.Option(1, "--num", "-n", help="Completions to sample."),
    max_new_tokens: int = typer.Option(64, help="Maximum new tokens per completion."),
    temperature: float = typer.Option(0.0, help="Sampling temperature; 0 is greedy."),
    seed: int = typer.Option(0, help="Random seed."),
) -> None:
    """Sample completions for one chat message through ospo's group sampler."""
    from ospo_mlx.models.load import load_model
    from ospo_mlx.train.rollout import SamplingConfig, sample_groups

    loaded, tokenizer = load_model(model)
    tokens = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True
    )
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    rollouts = sample_groups(loaded, tokenizer, [tokens], config, num_generations=num, seed=seed)
    for i, text in enumerate(rollouts.texts):
        end = "eos" if rollouts.finished[i] else "max tokens"
        typer.echo(f"[{i}] ({len(rollouts.completion_tokens[i])} tokens, {end}) {text}")
    typer.echo(f"{rollouts.stats.tokens_per_s:.1f} tokens/s", err=True)


@model_app.command("make-tiny")
def make_tiny(
    out: Path = typer.Option(
        None, "--out", "-o", help="Directory; default: the cached 'tiny' model."
    ),
    seed: int = typer.Option(0, help="Weight initialization seed."),
    bits: int = typer.Option(None, help="Quantize to this many bits (group size 32)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Write the tiny random-weight llama (real SmolLM2 tokenizer) used by tests."""
    from ospo_mlx.models.load import tiny_model_dir
    from ospo_mlx.models.tiny import make_tiny_model

    path = make_tiny_model(out, seed=seed, bits=bits, overwrite=force) if out else tiny_model_dir()
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
