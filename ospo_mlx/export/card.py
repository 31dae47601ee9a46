"""The exported model card (README.md): base model, data, training config and metrics.

Front matter follows the Hugging Face hub's model-card metadata (base_model, library_name,
tags) so the hub links the export to its base model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ospo_mlx.errors import DataError

# metrics.jsonl keys summarised in the card, in display order.
CARD_METRICS = (
    "reward",
    "ndcg@10",
    "kl",
    "entropy",
    "completions/mean_length",
    "clip_ratio/region_mean",
)
USAGE = {
    "mlx": (
        "mlx",
        '```bash\nmlx_lm.generate --model {base} --adapter-path . --prompt "..."\n```',
    ),
    "peft": (
        "peft",
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
        'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
        'model = PeftModel.from_pretrained(base, "{repo}")\n```',
    ),
    "fused": (
        "transformers",
        "```python\nfrom transformers import AutoModelForCausalLM\n\n"
        'model = AutoModelForCausalLM.from_pretrained("{repo}")\n```\n\nor `mlx_lm.generate --model {repo}`',
    ),
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def metrics_summary(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(metric, first, last, best) for each card metric present in metrics.jsonl rows."""
    summary = []
    for key in CARD_METRICS:
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        best = min(values) if key in {"kl", "clip_ratio/region_mean"} else max(values)
        summary.append((key, _fmt(values[0]), _fmt(values[-1]), _fmt(best)))
    return summary


def _eval_table(eval_report: dict[str, Any]) -> list[str]:
    """Markdown rows of an eval.json report ({"results": [{"system", "retriever", metrics...}]})."""
    results = eval_report.get("results") or []
    if not results:
        return []
    metric_keys = [k for k in results[0] if isinstance(results[0][k], (int, float))]
    lines = [
        "| system | retriever | " + " | ".join(metric_keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in metric_keys) + " |",
    ]
    for row in results:
        cells = [_fmt(row.get(k, "")) for k in metric_keys]
        lines.append(
            f"| {row.get('system', '')} | {row.get('retriever', '')} | " + " | ".join(cells) + " |"
        )
    return lines


def render_model_card(
    *,
    export_format: str,
    base_model: str,
    train_config: dict[str, Any],
    metrics_rows: Sequence[dict[str, Any]] = (),
    eval_report: dict[str, Any] | None = None,
    repo: str | None = None,
    run_name: str | None = None,
) -> str:
    """README.md text of an export (markdown with hub front matter)."""
    import yaml

    library, usage = USAGE[export_format]
    algorithm = str(train_config.get("algorithm", "ospo"))
    front = {
        "base_model": base_model,
        "library_name": library,
        "pipeline_tag": "text-generation",
        "tags": ["ospo", algorithm, "lora", "reinforcement-learning", "mlx"],
    }
    data = train_config.get("data") if isinstance(train_config.get("data"), dict) else {}
    reward = train_config.get("reward") if isinstance(train_config.get("reward"), dict) else {}
    title = repo or run_name or "ospo export"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {title}",
        "",
        f"LoRA fine-tune of `{base_model}` with {algorithm.upper()} (ospo), trained to write retrieval "
        "queries whose reward is the NDCG of a dense retriever's ranking.",
        "",
        "## Base model",
        "",
        f"- `{base_model}`",
        f"- export format: `{export_format}`",
        "",
        "## Data",
        "",
    ]
    if data:
        lines += [f"- {key}: `{value}`" for key, value in data.items() if value is not None]
    else:
        lines.append("- not recorded (no config.yaml in the run directory)")
    if reward:
        lines += [
            "",
            "Reward: " + ", ".join(f"{k}=`{v}`" for k, v in reward.items() if v is not None),
        ]
    lines += ["", "## Training metrics", ""]
    summary = metrics_summary(metrics_rows)
    if summary:
        lines += [
            f"{len(metrics_rows)} logged steps.",
            "",
            "| metric | first | last | best |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {m} | {a} | {b} | {c} |" for m, a, b, c in summary]
    else:
        lines.append("No metrics.jsonl was found.")
    lines += ["", "## Evaluation", ""]
    table = _eval_table(eval_report or {})
    lines += table if table else ["Not evaluated yet (run `ospo eval`)."]
    lines += ["", "## Usage", "", usage.format(base=base_model, repo=repo or "PATH_TO_EXPORT"), ""]
    if train_config:
        lines += [
            "## Training config",
            "",
            "```yaml",
            yaml.safe_dump(train_config, sort_keys=False).strip(),
            "```",
            "",
        ]
    return "\n".join(lines)


def read_eval_report(run_dir: Path | None) -> dict[str, Any] | None:
    """The run's eval.json, or None when the run has not been evaluated."""
    path = run_dir / "eval.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    from ospo_mlx.safety import load_json

    report = load_json(path, "eval report")
    if not isinstance(report, dict):
        raise DataError(f"{path} must hold a JSON object; re-run `ospo eval`")
    return report
