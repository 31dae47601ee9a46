"""The records one training step's phases return, and the one function that builds its metrics.

A step is sample -> score -> credit -> update; each phase returns a small record, and
`step_metrics` turns the four into the metrics.jsonl row (before the cross-rank reduction,
whose per-key rules live in train/distributed.py; the progress view reads the same row).
A generation feeding `optim.steps_per_generation` steps is cut into one `StepPart` per step
with `split_generation` (the records sliced, the generation's costs on its first part).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ospo_mlx.data.schema import Task
from ospo_mlx.train.attribute import Attribution
from ospo_mlx.train.batching import Batch


@dataclass
class SampleRecord:
    """This rank's prompts and their G completions each (prompt-major)."""

    indices: list[int]  # task indices of this rank's prompts
    tasks: list[Task]  # one per completion
    prompts: list[list[int]]  # one per prompt
    texts: list[str]
    ids: list[list[int]]
    offsets: list[Any]
    finished: list[bool]
    seconds: float = 0.0
    # per completion: it ends on the closing answer tag / text runs on after that tag
    stopped_at_answer: list[bool] = field(default_factory=list)
    after_answer: list[bool] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.ids]


@dataclass
class ScoreRecord:
    """Rewards (sanitized), each reward's part, and the GRPO sequence advantages."""

    rewards: np.ndarray  # (B,) this rank, non-finite replaced by 0
    parts: dict[str, np.ndarray]  # each reward's (B,) scores, NaN where it does not apply
    all_rewards: np.ndarray  # every rank's rewards (advantages are normalized over them)
    flat_groups: np.ndarray  # (groups,) bool over every rank: equal rewards in the group
    advantages: np.ndarray  # (B,) this rank's sequence advantages
    status: list[str]  # answer-rule status per completion: ok, missing_tags, unclosed
    zeroed: np.ndarray  # (B,) bool: the answer rule scored it 0
    nonfinite: int = 0
    ndcg: np.ndarray | None = None  # (B,) ndcg@10 when a retrieval reward is part of the sum
    raw: np.ndarray | None = None  # (B,) the weighted sum before sanitizing (NaN/inf kept)
    counts: dict[str, float] = field(default_factory=dict)
    collapsed: np.ndarray | None = None  # (B,) bool: `reward.repeats` dropped repeated words
    seconds: float = 0.0


@dataclass
class CreditRecord:
    """Per-token advantages and the attribution they came from (None: not attributed)."""

    attribution: Attribution | None
    weights: list[np.ndarray]
    token_advantages: np.ndarray  # (B, T)
    no_segments: int = 0
    seconds: float = 0.0


@dataclass
class UpdateRecord:
    """The policy update's metrics (averaged over num_iterations; grad_norm of the last)."""

    metrics: dict[str, float]
    learning_rate: float = 0.0
    seconds: float = 0.0


@dataclass
class StepPart:
    """One optimizer step's share of a generation: its update batch, records and rollouts rows."""

    batch: Batch
    sample: SampleRecord
    score: ScoreRecord
    credit: CreditRecord
    metrics: dict[str, float] = field(default_factory=dict)  # dynamic_sampling/*, masked_truncated
    rollouts: list[dict[str, Any]] = field(default_factory=list)


def split_generation(
    sample: SampleRecord,
    score: ScoreRecord,
    credit: CreditRecord,
    parts: int,
    *,
    world_size: int = 1,
) -> list[tuple[SampleRecord, ScoreRecord, CreditRecord]]:
    """The records of each of `parts` consecutive slices of a generation (prompt-major).

    Every rank cuts its own completions the same way, so slice j of the gathered rewards is
    rank-major: column block j of each rank. Times and reward counters stay with the first
    part (the generation's sampling, scoring and credit happened once, before its first step).
    """
    n = len(sample.texts) // parts  # this rank's completions per step
    k = len(sample.prompts) // parts  # this rank's prompts per step
    by_rank = score.all_rewards.reshape(world_size, -1)
    flat_by_rank = score.flat_groups.reshape(world_size, -1)
    attr = credit.attribution
    out = []
    for j in range(parts):
        rows, groups, first = slice(j * n, (j + 1) * n), slice(j * k, (j + 1) * k), j == 0
        s = replace(
            sample, indices=sample.indices[groups], tasks=sample.tasks[rows],
            prompts=sample.prompts[groups], texts=sample.texts[rows], ids=sample.ids[rows],
            offsets=sample.offsets[rows], finished=sample.finished[rows],
            stopped_at_answer=sample.stopped_at_answer[rows],
            after_answer=sample.after_answer[rows],
            seconds=sample.seconds if first else 0.0,
        )  # fmt: skip
        raw = score.raw[rows] if score.raw is not None else None
        sc = replace(
            score, rewards=score.rewards[rows],
            parts={name: v[rows] for name, v in score.parts.items()},
            all_rewards=by_rank[:, rows].reshape(-1),
            flat_groups=flat_by_rank[:, groups].reshape(-1),
            advantages=score.advantages[rows], status=score.status[rows],
            zeroed=score.zeroed[rows],
            nonfinite=int(np.sum(~np.isfinite(raw))) if raw is not None else score.nonfinite,
            ndcg=score.ndcg[rows] if score.ndcg is not None else None, raw=raw,
            collapsed=score.collapsed[rows] if score.collapsed is not None else None,
            counts=dict(score.counts) if first else dict.fromkeys(score.counts, 0.0),
            seconds=score.seconds if first else 0.0,
        )  # fmt: skip
        part_attr = attr.select(rows) if attr is not None else None
        cr = CreditRecord(
            part_attr, credit.weights[rows], credit.token_advantages[rows],
            no_segments=sum(1 for s_ in part_attr.segments if not s_) if part_attr else 0,
            seconds=credit.seconds if first else 0.0,
        )  # fmt: skip
        out.append((s, sc, cr))
    return out


def step_metrics(
    step: int,
    sample: SampleRecord,
    score: ScoreRecord,
    credit: CreditRecord,
    update: UpdateRecord,
    *,
    skipped_long: int = 0,
    peak_memory_gb: float = 0.0,
    extra: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """This rank's metrics row for one step (TRL's names where they exist)."""
    from ospo_mlx.reward.base import part_metrics

    lengths = sample.lengths
    attr = credit.attribution
    total = sample.seconds + score.seconds + credit.seconds + update.seconds
    status = score.status
    row = {
        "step": step,
        "reward": float(score.all_rewards.mean()),
        "reward_std": float(score.all_rewards.std()),
        "frac_reward_zero_std": float(score.flat_groups.mean()),
        **update.metrics,
        **part_metrics(score.parts),
        "completions/mean_length": float(np.mean(lengths)),
        "completions/min_length": float(np.min(lengths)),
        "completions/max_length": float(np.max(lengths)),
        "completions/clipped_ratio": float(1.0 - np.mean(sample.finished)),
        "learning_rate": update.learning_rate,
    }
    if score.ndcg is not None:
        row["ndcg@10"] = float(np.nan_to_num(score.ndcg).mean())
    row |= {
        "ospo/segments_mean": float(np.mean([len(s) for s in attr.segments])) if attr else 0.0,
        "ospo/coalitions": float(attr.evaluated) if attr else 0.0,
        "ospo/no_answer_tags": float(status.count("missing_tags")),
        "ospo/unclosed_answer": float(status.count("unclosed")),
        "ospo/format_zeroed": float(score.zeroed.sum()),
        "ospo/no_segments": float(credit.no_segments),
        # the hardened reward's cases, counted: stop at </answer>, run-ons, repeats
        "completions/stopped_at_answer": float(sum(sample.stopped_at_answer)),
        "completions/after_answer": float(sum(sample.after_answer)),
        "reward/collapsed_repeats": float(np.sum(score.collapsed))
        if score.collapsed is not None
        else 0.0,
        **(attr.metrics() if attr else Attribution.empty_metrics()),
        "skipped/prompt_too_long": float(skipped_long),
        "reward/nonfinite": float(score.nonfinite),
        **score.counts,
        **(extra or {}),
        "time/sample": sample.seconds,
        "time/reward": score.seconds,
        "time/attribution": credit.seconds,
        "time/update": update.seconds,
        "time/step": total,
        "tokens_per_second": int(sum(lengths)) / max(total, 1e-9),
        "peak_memory_gb": peak_memory_gb,
    }
    return row


def rollout_rows(
    step: int,
    sample: SampleRecord,
    score: ScoreRecord,
    credit: CreditRecord,
    config: Any,
    *,
    rank: int = 0,
    prompt_text: Callable[[Task], str] = lambda task: "",
) -> list[dict[str, Any]]:
    """rollouts.jsonl rows of one step on one rank (docs/run_format.md)."""
    g, attr = config.optim.num_generations, credit.attribution
    rows = []
    for i, text in enumerate(sample.texts):
        task = sample.tasks[i]
        rows.append({
            "step": step, "group": rank * len(sample.prompts) + i // g, "member": i % g,
            "task_id": task.id,
            "prompt": task.query if task.query is not None else prompt_text(task),
            "completion": text, "token_ids": sample.ids[i],
            "token_offsets": [list(map(int, o)) for o in sample.offsets[i]],
            "reward": float(score.rewards[i]), "advantage": float(score.advantages[i]),
            "segments": [list(s) for s in attr.segments[i]] if attr else [],
            "coalitions": [np.flatnonzero(m).tolist() for m in attr.coalitions[i]] if attr else [],
            "coalition_values": attr.values[i].tolist() if attr else [],
            "owen": attr.owen[i].tolist() if attr else [],
            "token_weights": credit.weights[i].tolist(),
            "token_advantages": credit.token_advantages[i, : sample.lengths[i]].tolist(),
            "algorithm": config.algorithm,
        })  # fmt: skip
    return rows
