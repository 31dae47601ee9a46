"""`ospo train`: sample groups, score them, attribute credit, update the LoRA policy, log.

One trainer serves both algorithms: `grpo` broadcasts each completion's sequence advantage to
its tokens, `ospo` redistributes it with segment Owen values computed from the reward's
coalition values. Everything but the update runs outside the compiled function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.reference import contiguous_coalitions, owen_contiguous
from ospo_mlx.attribution.segment import SegmenterConfig, segment
from ospo_mlx.config import TrainConfig, dump_config
from ospo_mlx.data.schema import Task, load_catalog, load_tasks
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.train import checkpoint as ckpt
from ospo_mlx.train.batching import pack_batch
from ospo_mlx.train.policy import (
    PolicyUpdate,
    adapter_config,
    adapter_weights,
    apply_lora,
    build_optimizer,
    enable_grad_checkpoint,
    sequence_log_probs,
)
from ospo_mlx.train.runlog import RunLog


@dataclass
class Attribution:
    """Per-completion credit: segments, evaluated coalitions and their values, Owen values, weights."""

    segments: list[list[tuple[int, int]]]
    coalitions: list[np.ndarray]
    values: list[np.ndarray]
    owen: list[np.ndarray]
    weights: list[np.ndarray]
    evaluated: int = 0


@dataclass
class StepRecord:
    """What one step produced (the metrics row plus what the rollouts log needs)."""

    metrics: dict[str, float]
    rollouts: list[dict[str, Any]] = field(default_factory=list)


def zero_std_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """(num_groups,) bool: groups whose rewards are all equal (they carry no learning signal)."""
    grouped = rewards.reshape(-1, group_size)
    return np.ptp(grouped, axis=1) <= 1e-12


def sanitize_rewards(rewards: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace NaN/inf rewards by 0; returns (rewards, how many were replaced)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    bad = ~np.isfinite(rewards)
    return np.where(bad, 0.0, rewards), int(bad.sum())


def token_advantages(
    algorithm: str,
    seq_adv: np.ndarray,
    weights: list[np.ndarray],
    lengths: list[int],
    rewards: np.ndarray,
    cfg: Any,
) -> np.ndarray:
    """(B, T) token advantages: GRPO's broadcast or OSPO's attribution-weighted split."""
    width = max(max(lengths, default=1), 1)
    mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
    if algorithm == "grpo":
        return np.where(mask, seq_adv[:, None], 0.0)
    w = np.zeros(mask.shape)
    for i, row in enumerate(weights):
        w[i, : len(row)] = row[:width]
    return credit.ospo_token_advantages(
        seq_adv, w, mask, mode=cfg.advantage_mode, rewards=rewards, alpha=cfg.alpha, clip=cfg.clip
    )


def should_dequantize(setting: bool | None) -> bool:
    """Explicit setting, else dequantize on CPU only: MLX's CPU quantized matmuls do not use BLAS."""
    return setting if setting is not None else mx.default_device() == mx.cpu


class Trainer:
    """Holds the model, optimizer, data cursor and run directory; `run()` trains to the end."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        from ospo_mlx.data.prompts import encode_prompt
        from ospo_mlx.models.load import load_model
        from ospo_mlx.reward import build_reward

        self.config, self.on_step = config, on_step
        self.run_dir = config.run_dir()
        c = config
        for key in ("catalog", "train"):
            path = Path(getattr(c.data, key))
            if not path.is_file():
                raise ConfigError(
                    f"data.{key}: {path} not found (relative paths start at {Path.cwd()}); "
                    f"run from the project root or set it with --set data.{key}=PATH"
                )
        self.catalog = load_catalog(c.data.catalog)
        self.tasks: list[Task] = load_tasks(c.data.train, self.catalog)[: c.data.max_tasks]
        self.model, self.tokenizer = load_model(c.model.name)
        if should_dequantize(c.model.dequantize):
            from mlx_lm.utils import dequantize_model

            dequantize_model(self.model)
            mx.eval(self.model.parameters())
        self.num_trainable = apply_lora(self.model, c.lora, seed=c.run.seed)
        if c.optim.grad_checkpoint:
            enable_grad_checkpoint(self.model)
        from ospo_mlx.models.load import cache_dir

        self.reward = build_reward(
            self.catalog, c.reward.reward_config(), encoder_dir=c.reward.encoder, index_dir=c.reward.index,
            cache_dir=cache_dir().parent / "embeddings" if c.reward.cache_embeddings else None,
        )  # fmt: skip
        self.prompts = [
            encode_prompt(self.tokenizer, t, self.catalog, c.prompt) for t in self.tasks
        ]
        self.optimizer = build_optimizer(c.optim, c.optim.steps * c.optim.num_iterations)
        self.segmenter = SegmenterConfig(
            method=c.attribution.segmenter,
            answer_tags=c.prompt.answer_tags,
            max_segments=c.attribution.max_segments,
        ).validate()
        self.np_rng = np.random.default_rng(c.run.seed)
        self.step, self.epoch, self.position = 0, 0, 0
        if resume:
            checkpoint = ckpt.load_checkpoint(self.run_dir)
            ckpt.restore(self.model, self.optimizer, checkpoint)
            self.step = checkpoint.step
            self.epoch, self.position = checkpoint.state["epoch"], checkpoint.state["position"]
            self.np_rng.bit_generator.state = checkpoint.state["numpy_rng"]
        self.update = PolicyUpdate(
            self.model, self.optimizer, c.optim,
            temperature=c.sampling.temperature, max_completion_length=c.sampling.max_new_tokens,
        )  # fmt: skip
        self.log = RunLog(self.run_dir, dump_config(c), resume_step=self.step if resume else None)

    # ------------------------------------------------------------------ data

    def next_task_indices(self) -> list[int]:
        """The next `batch_size` tasks of a per-epoch shuffled order (deterministic per seed)."""
        out = []
        while len(out) < self.config.optim.batch_size:
            order = np.random.default_rng([self.config.run.seed, self.epoch]).permutation(
                len(self.tasks)
            )
            take = order[self.position : self.position + self.config.optim.batch_size - len(out)]
            out.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= len(self.tasks):
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def prompt_text(self, task: Task) -> str:
        """The user text of a task's prompt (for rollouts.jsonl)."""
        from ospo_mlx.data.prompts import user_text

        return user_text(task, self.catalog, self.config.prompt)

    # ------------------------------------------------------------------ attribution

    def attribute(
        self, texts: list[str], offsets: list[Any], tasks: list[Task], active: np.ndarray
    ) -> Attribution:
        """Segments, coalitions, values, Owen values and token weights for each completion.

        Completions with `active` False (zero advantage: nothing to redistribute) keep their
        segments but evaluate no coalitions; their weights are uniform.
        """
        a = self.config.attribution
        spans = [segment(t, config=self.segmenter) for t in texts]
        masks = []
        for i, s in enumerate(spans):
            if active[i] and s:
                masks.append(
                    contiguous_coalitions(len(s), a.max_width, a.max_coalitions, self.np_rng)
                )
            else:
                masks.append(np.zeros((0, len(s)), dtype=bool))
        todo = [i for i, m in enumerate(masks) if len(m)]
        values: list[np.ndarray] = [np.zeros(0) for _ in texts]
        if todo:
            got = self.reward.coalition_values(
                [texts[i] for i in todo],
                [spans[i] for i in todo],
                [masks[i] for i in todo],
                [tasks[i] for i in todo],
            )
            for i, v in zip(todo, got, strict=True):
                values[i] = np.asarray(v, dtype=np.float64)
        owen, weights = [], []
        for i, s in enumerate(spans):
            phi = owen_contiguous(masks[i], values[i]) if len(masks[i]) else np.ones(len(s))
            owen.append(np.asarray(phi, dtype=np.float64))
            weights.append(
                credit.token_weights(s, np.asarray(offsets[i]).reshape(-1, 2), phi, a.floor)
            )
        return Attribution(
            spans, masks, values, owen, weights, evaluated=sum(len(masks[i]) for i in todo)
        )

    # ------------------------------------------------------------------ one step

    def train_step(self) -> StepRecord:
        from ospo_mlx.train.rollout import SamplingConfig, sample_groups

        c, g = self.config, self.config.optim.num_generations
        step = self.step + 1
        mx.reset_peak_memory()
        t_start = time.perf_counter()
        indices = self.next_task_indices()
        tasks = [self.tasks[i] for i in indices for _ in range(g)]
        prompts = [self.prompts[i] for i in indices]

        known = {f.name for f in fields(SamplingConfig)}
        sampling = SamplingConfig(
            **{k: v for k, v in vars(c.sampling).items() if k in known}, num_generations=g
        )
        self.model.eval()  # no LoRA dropout while sampling
        rollouts = sample_groups(
            self.model, self.tokenizer, prompts, sampling, seed=c.run.seed * 1_000_003 + step
        )
        texts, ids = list(rollouts.texts), [list(map(int, t)) for t in rollouts.completion_tokens]
        offsets, finished = rollouts.token_offsets, list(rollouts.finished)
        t_sample = time.perf_counter()

        raw = np.asarray(self.reward.score(texts, tasks), dtype=np.float64)
        rewards, nonfinite = sanitize_rewards(raw)
        if self.reward.reward_metric == "ndcg@10":  # the default: no second retrieval pass
            ndcg = raw
        else:
            ndcg = np.asarray(
                self.reward.metrics(texts, tasks).get("ndcg@10", raw), dtype=np.float64
            )
        seq_adv = credit.grpo_advantages(rewards, g, c.optim.scale_rewards)
        flat = zero_std_groups(rewards, g)
        seq_adv[np.repeat(flat, g)] = 0.0  # equal rewards: exactly zero, whatever the scaling
        t_reward = time.perf_counter()

        attribute = c.algorithm == "ospo" or c.run.log_attributions
        active = (seq_adv != 0.0) if c.algorithm == "ospo" else np.ones(len(texts), dtype=bool)
        attr = self.attribute(texts, offsets, tasks, active) if attribute else None
        lengths = [len(t) for t in ids]
        weights = attr.weights if attr else [np.ones(n) for n in lengths]
        token_adv = token_advantages(c.algorithm, seq_adv, weights, lengths, rewards, c.attribution)
        t_attr = time.perf_counter()

        prompt_rows = [p for p in prompts for _ in range(g)]
        pad = (
            getattr(self.tokenizer, "pad_token_id", None)
            or getattr(self.tokenizer, "eos_token_id", 0)
            or 0
        )
        batch = pack_batch(
            prompt_rows,
            ids,
            [row[:n] for row, n in zip(token_adv, lengths, strict=True)],
            pad_id=pad,
        )
        if c.optim.beta > 0:
            batch.ref_logps = sequence_log_probs(
                self.model, batch, c.sampling.temperature, reference=True
            )
        results = []
        for iteration in range(c.optim.num_iterations):
            result = self.update(batch, use_old_logps=iteration > 0)
            if iteration == 0:
                batch.old_logps = result.logps  # pi_old: the sampling policy, before any update
            results.append(result.metrics)
        t_end = time.perf_counter()

        self.step = step
        update = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        update["grad_norm"] = results[-1]["grad_norm"]
        gen_tokens = int(sum(lengths))
        answers = self.config.prompt.answer_tags[0]
        metrics = {
            "step": step,
            "reward": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "frac_reward_zero_std": float(flat.mean()),
            **update,
            "completions/mean_length": float(np.mean(lengths)),
            "completions/min_length": float(np.min(lengths)),
            "completions/max_length": float(np.max(lengths)),
            "completions/clipped_ratio": float(1.0 - np.mean(finished)),
            "learning_rate": float(self.optimizer.learning_rate.item()),
            "ndcg@10": float(np.nan_to_num(ndcg).mean()),
            "ospo/segments_mean": float(np.mean([len(s) for s in attr.segments])) if attr else 0.0,
            "ospo/coalitions": float(attr.evaluated) if attr else 0.0,
            "ospo/no_answer_tags": float(sum(answers not in t for t in texts)),
            "reward/nonfinite": float(nonfinite),
            "time/sample": t_sample - t_start,
            "time/reward": t_reward - t_sample,
            "time/attribution": t_attr - t_reward,
            "time/update": t_end - t_attr,
            "time/step": t_end - t_start,
            "tokens_per_second": gen_tokens / max(t_end - t_start, 1e-9),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
        }
        rows = []
        if c.run.log_rollouts:
            for i, text in enumerate(texts):
                task = tasks[i]
                rows.append({
                    "step": step, "group": i // g, "member": i % g, "task_id": task.id,
                    "prompt": task.query if task.query is not None else self.prompt_text(task),
                    "completion": text, "token_ids": ids[i],
                    "token_offsets": [list(map(int, o)) for o in offsets[i]],
                    "reward": float(rewards[i]), "advantage": float(seq_adv[i]),
                    "segments": [list(s) for s in attr.segments[i]] if attr else [],
                    "coalitions": [np.flatnonzero(m).tolist() for m in attr.coalitions[i]] if attr else [],
                    "coalition_values": attr.values[i].tolist() if attr else [],
                    "owen": attr.owen[i].tolist() if attr else [],
                    "token_weights": weights[i].tolist(),
                    "token_advantages": token_adv[i, : lengths[i]].tolist(),
                    "algorithm": c.algorithm,
                })  # fmt: skip
        return StepRecord(metrics, rows)

    # ------------------------------------------------------------------ run

    def save(self) -> Path:
        state = {
            "epoch": self.epoch,
            "position": self.position,
            "numpy_rng": self.np_rng.bit_generator.state,
        }
        return ckpt.save_checkpoint(
            self.run_dir, self.step, adapter_weights(self.model), adapter_config(self.model, self.config.lora),
            self.optimizer, state,
        )  # fmt: skip

    def run(self, max_steps: int | None = None) -> list[dict[str, float]]:
        """Train until `optim.steps` (or `max_steps` more steps); checkpoint on schedule and at the end."""
        total = self.config.optim.steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        history = []
        try:
            while self.step < stop:
                record = self.train_step()
                self.log.metrics(record.metrics)
                self.log.rollouts(record.rollouts)
                history.append(record.metrics)
                if self.step % self.config.run.save_every == 0 or self.step == stop:
                    self.save()
                if self.on_step is not None:
                    self.on_step(self.step, record.metrics)
                if not math.isfinite(record.metrics["loss"]):
                    raise OspoError(
                        f"step {self.step}: the loss is not finite; lower optim.learning_rate or set optim.max_grad_norm"
                    )
        finally:
            self.log.close()
        return history


def train(
    config: TrainConfig, *, resume: bool = False, live: bool | None = None
) -> list[dict[str, float]]:
    """Run `ospo train` from a resolved config with the live progress view; returns the metrics rows."""
    from ospo_mlx.ui.progress import TrainProgress

    trainer = Trainer(config, resume=resume)
    if trainer.step >= config.optim.steps:
        raise OspoError(
            f"{trainer.run_dir}: already trained {trainer.step} steps; raise --steps to continue"
        )
    title = f"ospo train {config.algorithm} · {trainer.run_dir}"
    with TrainProgress(config.optim.steps, trainer.step, title=title, live=live) as progress:
        trainer.on_step = progress.update
        return trainer.run()
