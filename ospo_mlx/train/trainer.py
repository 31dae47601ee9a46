"""`ospo train`: sample groups, score them, attribute credit, update the LoRA policy, log.

One trainer serves both algorithms: `grpo` broadcasts each completion's sequence advantage to
its tokens, `ospo` redistributes it with segment Owen values computed from the reward's
coalition values. Everything but the update runs outside the compiled function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.segment import SegmenterConfig, after_answer
from ospo_mlx.config import TrainConfig, dump_config
from ospo_mlx.data.schema import Task, load_catalog, load_tasks
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.train import checkpoint as ckpt
from ospo_mlx.train import distributed as dist
from ospo_mlx.train.attribute import Attribution, attribute
from ospo_mlx.train.batching import pack_batch
from ospo_mlx.train.bookkeeping import (
    fallback_weights,
    fits_context,
    model_context,
    sanitize_rewards,
    token_advantages,
    zero_std_groups,
)
from ospo_mlx.train.interrupt import GracefulStop, TrainingInterrupted, interrupted_message
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

# Metrics that are already identical on every rank (computed from gathered or averaged values).
GLOBAL_METRICS = (
    "step",
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "grad_norm",
    "learning_rate",
)


@dataclass
class StepRecord:
    """What one step produced (the metrics row plus what the rollouts log needs)."""

    metrics: dict[str, float]
    rollouts: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Holds the model, optimizer, data cursor and run directory; `run()` trains to the end."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        world: dist.World | None = None,
    ) -> None:
        from ospo_mlx.data.prompts import encode_prompt
        from ospo_mlx.models.load import load_model, should_dequantize
        from ospo_mlx.reward import build_reward

        self.config, self.on_step = config, on_step
        self.run_dir = config.run_dir()
        c = config
        # Data parallel under mlx.launch (one rank per process), else a single process.
        self.world = world if world is not None else dist.init_world()
        dist.check_divisible(c.optim.batch_size, self.world)
        if not resume and (self.run_dir / "checkpoints" / "latest").exists():
            raise OspoError(
                f"{self.run_dir} already holds a trained run; continue it with --resume, "
                "or choose another --out/--name"
            )
        for key in ("catalog", "train"):
            path = Path(getattr(c.data, key))
            if not path.is_file():
                raise ConfigError(
                    f"data.{key}: {path} not found (relative paths start at {Path.cwd()}); "
                    f"run from the project root or set it with --set data.{key}=PATH"
                )
        self.catalog = load_catalog(c.data.catalog)
        self.tasks: list[Task] = load_tasks(c.data.train, self.catalog)[: c.data.max_tasks]
        # Cheap checks first: a bad resume or prompt fails before the reward model loads.
        checkpoint = ckpt.load_checkpoint(self.run_dir) if resume else None
        self.model, self.tokenizer = load_model(
            c.model.name, trust_remote_code=c.model.trust_remote_code
        )
        if should_dequantize(c.model.dequantize):
            from mlx_lm.utils import dequantize_model

            dequantize_model(self.model)
            mx.eval(self.model.parameters())
        self.num_trainable = apply_lora(self.model, c.lora, seed=c.run.seed)
        if c.model.adapters and checkpoint is None:  # a resumed run's checkpoint holds them
            from ospo_mlx.train.sft import load_adapter_weights

            load_adapter_weights(self.model, c.model.adapters)
        self.warmed_up = checkpoint is not None or c.warmup.steps == 0
        # The KL reference: the policy at the start of RL (None: fresh LoRA = adapters off).
        self.reference_adapters = self._starting_adapters(resumed=checkpoint is not None)
        if c.optim.grad_checkpoint:
            enable_grad_checkpoint(self.model)
        self.prompts = [
            encode_prompt(self.tokenizer, t, self.catalog, c.prompt) for t in self.tasks
        ]
        self.skipped_long = self._drop_long_prompts(model_context(self.model))
        from ospo_mlx.models.load import cache_dir

        self.reward = build_reward(
            self.catalog, c.reward.reward_config(), encoder_dir=c.reward.encoder, index_dir=c.reward.index,
            cache_dir=cache_dir().parent / "embeddings" if c.reward.cache_embeddings else None,
        )  # fmt: skip
        self.optimizer = build_optimizer(c.optim, c.optim.steps * c.optim.num_iterations)
        self.segmenter = SegmenterConfig(
            method=c.attribution.segmenter,
            answer_tags=c.prompt.answer_tags,
            max_segments=c.attribution.max_segments,
        ).validate()
        self.step, self.epoch, self.position = 0, 0, 0
        if checkpoint is not None:
            ckpt.restore(self.model, self.optimizer, checkpoint)
            self.step = checkpoint.step
            self.epoch, self.position = checkpoint.state["epoch"], checkpoint.state["position"]
            dist.agree(self.step, self.world, "the checkpoint step to resume from")
        self.update = PolicyUpdate(
            self.model, self.optimizer, c.optim,
            temperature=c.sampling.temperature, max_completion_length=c.sampling.max_new_tokens,
            compile=c.optim.compile, world=self.world,
        )  # fmt: skip
        # Only rank 0 writes the run directory.
        self.log = (
            RunLog(self.run_dir, dump_config(c), resume_step=self.step if resume else None)
            if self.world.is_main
            else None
        )

    def _starting_adapters(self, resumed: bool) -> dict[str, mx.array] | None:
        """Adapters RL started from: the given ones or, on resume, the warm-up's; else None."""
        from ospo_mlx.train.checkpoint import ADAPTER_FILE
        from ospo_mlx.train.policy import adapter_weights

        if not resumed:  # MLX arrays are immutable: the optimizer's updates make new ones
            return adapter_weights(self.model) if self.config.model.adapters else None
        for directory in (self.run_dir / "warmup", self.config.model.adapters):
            if directory and (Path(directory) / ADAPTER_FILE).is_file():
                from ospo_mlx.safety import load_tensors

                return load_tensors(Path(directory) / ADAPTER_FILE, "reference adapters")
        return None

    def reference_log_probs(self, batch: Any) -> mx.array:
        """(B, T) log-probs under the KL reference, the policy at the start of RL."""
        t = self.config.sampling.temperature
        if self.reference_adapters is None:  # fresh LoRA starts at B = 0: adapters off
            return sequence_log_probs(self.model, batch, t, reference=True)
        from ospo_mlx.train.policy import adapters_loaded

        with adapters_loaded(self.model, self.reference_adapters):
            return sequence_log_probs(self.model, batch, t)

    def _drop_long_prompts(self, context: int | None) -> int:
        """Skip tasks whose prompt leaves no room for the completion; returns how many."""
        keep = fits_context(self.prompts, self.config.sampling.max_new_tokens, context)
        skipped = len(self.prompts) - len(keep)
        if not keep:
            longest = max(len(p) for p in self.prompts)
            raise OspoError(
                f"every prompt is longer than the model's context ({context} tokens) minus "
                f"sampling.max_new_tokens (longest prompt: {longest} tokens); lower "
                "sampling.max_new_tokens or prompt.max_history_items, or use a longer-context model"
            )
        if skipped:
            self.tasks = [self.tasks[i] for i in keep]
            self.prompts = [self.prompts[i] for i in keep]
            if self.world.is_main:
                import sys

                sys.stderr.write(
                    f"warning: skipped {skipped} task(s) whose prompt + {self.config.sampling.max_new_tokens} "
                    f"new tokens exceed the model's context of {context} tokens (skipped/prompt_too_long)\n"
                )
        return skipped

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
        self,
        texts: list[str],
        offsets: list[Any],
        tasks: list[Task],
        advantages: np.ndarray,
        active: np.ndarray,
    ) -> Attribution:
        """Credit for this rank's completions (see train/attribute.py)."""
        # A generator per (seed, rank, step): coalition draws need no saved state to resume.
        rng = np.random.default_rng([self.config.run.seed, self.world.rank, self.step + 1])
        return attribute(
            texts, offsets, tasks, advantages, active, segmenter=self.segmenter,
            reward=self.reward, config=self.config.attribution, rng=rng,
        )  # fmt: skip

    # ------------------------------------------------------------------ one step

    def train_step(self) -> StepRecord:
        from ospo_mlx.train.rollout import SamplingConfig, sample_groups

        c, g = self.config, self.config.optim.num_generations
        step = self.step + 1
        mx.reset_peak_memory()
        t_start = time.perf_counter()
        indices = dist.shard(self.next_task_indices(), self.world)  # this rank's prompts
        tasks = [self.tasks[i] for i in indices for _ in range(g)]
        prompts = [self.prompts[i] for i in indices]

        known = {f.name for f in fields(SamplingConfig)}
        sampling = SamplingConfig(
            **{k: v for k, v in vars(c.sampling).items() if k in known}, num_generations=g,
            stop_strings=(c.prompt.answer_tags[1],) if c.sampling.stop_at_answer else (),
        )  # fmt: skip
        self.model.eval()  # no LoRA dropout while sampling
        rollouts = sample_groups(
            self.model, self.tokenizer, prompts, sampling,
            seed=c.run.seed * 1_000_003 + step + 104_729 * self.world.rank,
        )  # fmt: skip
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
        # Advantages over the combined batch of all ranks (batch scaling needs its std).
        all_rewards = dist.gather(rewards, self.world)
        all_adv = credit.grpo_advantages(all_rewards, g, c.optim.scale_rewards)
        all_flat = zero_std_groups(all_rewards, g)
        all_adv[np.repeat(all_flat, g)] = 0.0  # equal rewards: exactly zero, whatever the scaling
        mine = slice(self.world.rank * len(rewards), (self.world.rank + 1) * len(rewards))
        seq_adv = all_adv[mine]
        t_reward = time.perf_counter()

        attribute = c.algorithm == "ospo" or c.run.log_attributions
        scored = [self.reward.scored(t) for t in texts]
        status = [st for _, st in scored]
        zeroed = np.array([text is None for text, _ in scored], dtype=bool)
        # Nothing to redistribute (A = 0), a reward of 0 (uniform fallback) or a format-zeroed
        # answer (no content to credit): GRPO weights, and no coalition is evaluated for it.
        active = (
            (seq_adv != 0.0) & ~zeroed & (np.abs(rewards) >= credit.ZERO_REWARD)
            if c.algorithm == "ospo"
            else np.ones(len(texts), bool)
        )
        attr = self.attribute(texts, offsets, tasks, seq_adv, active) if attribute else None
        lengths = [len(t) for t in ids]
        weights, no_segments = (
            fallback_weights(attr.segments, attr.weights)
            if attr
            else ([np.ones(n) for n in lengths], 0)
        )
        token_adv = token_advantages(
            c.algorithm, seq_adv, weights, lengths, rewards, c.attribution,
            in_segments=attr.in_segments if attr else None,
        )  # fmt: skip
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
            batch.ref_logps = self.reference_log_probs(batch)
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
        tags, reward = c.prompt.answer_tags, self.reward
        close_tag = tags[1]
        metrics = {
            "step": step,
            "reward": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std()),
            "frac_reward_zero_std": float(all_flat.mean()),
            **update,
            "completions/mean_length": float(np.mean(lengths)),
            "completions/min_length": float(np.min(lengths)),
            "completions/max_length": float(np.max(lengths)),
            "completions/clipped_ratio": float(1.0 - np.mean(finished)),
            "learning_rate": float(self.optimizer.learning_rate.item()),
            "ndcg@10": float(np.nan_to_num(ndcg).mean()),
            "ospo/segments_mean": float(np.mean([len(s) for s in attr.segments])) if attr else 0.0,
            "ospo/coalitions": float(attr.evaluated) if attr else 0.0,
            "ospo/unpaired_segments": float(attr.unpaired) if attr else 0.0,
            "ospo/budget_raised": float(attr.budget_raised) if attr else 0.0,
            "ospo/exact_values": float(attr.exact) if attr else 0.0,
            "ospo/credit_concentration": attr.concentration() if attr else 0.0,
            "ospo/no_answer_tags": float(status.count("missing_tags")),
            "ospo/unclosed_answer": float(status.count("unclosed")),
            "ospo/format_zeroed": float(zeroed.sum()),
            "ospo/no_segments": float(no_segments),
            # the hardened reward's cases, counted: stop at </answer>, run-ons, repeats
            "completions/stopped_at_answer": float(sum(t.endswith(close_tag) for t in texts)),
            "completions/after_answer": float(sum(after_answer(t, tags) for t in texts)),
            "reward/collapsed_repeats": float(sum(reward.repeats_removed(t) > 0 for t in texts)),
            "skipped/prompt_too_long": float(self.skipped_long),
            "reward/nonfinite": float(nonfinite),
            "time/sample": t_sample - t_start,
            "time/reward": t_reward - t_sample,
            "time/attribution": t_attr - t_reward,
            "time/update": t_end - t_attr,
            "time/step": t_end - t_start,
            "tokens_per_second": gen_tokens / max(t_end - t_start, 1e-9),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
        }
        metrics = dist.reduce_metrics(metrics, self.world, keep=GLOBAL_METRICS)
        rows = []
        if c.run.log_rollouts:
            for i, text in enumerate(texts):
                task = tasks[i]
                rows.append({
                    "step": step, "group": self.world.rank * len(prompts) + i // g, "member": i % g, "task_id": task.id,
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

    def _save(self) -> Path:
        state = {"epoch": self.epoch, "position": self.position, "world_size": self.world.size}
        return ckpt.save_checkpoint(
            self.run_dir, self.step, adapter_weights(self.model), adapter_config(self.model, self.config.lora),
            self.optimizer, state,
        )  # fmt: skip

    def warm_up(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> Any:
        """The supervised format warm-up (`warmup.steps` > 0), once, before the first RL step.

        Its adapters and losses go to RUN/warmup/; a resumed run skips it (its checkpoint
        already holds the warmed-up adapters). Returns the SFTResult, or None when skipped.
        """
        if self.warmed_up:
            return None
        from ospo_mlx.train.sft import SFTConfig, warm_up_model

        w, c = self.config.warmup, self.config
        sft = SFTConfig(**asdict(w), seed=c.run.seed)
        result = warm_up_model(
            self.model, self.tokenizer, self.tasks, self.catalog, c.prompt, sft,
            out=self.run_dir / "warmup" if self.world.is_main else None, lora=c.lora,
            on_step=on_step, compile=c.optim.compile,
        )  # fmt: skip
        self.warmed_up = True
        from ospo_mlx.train.policy import adapter_weights

        # RL starts here: the KL reference is the warmed-up policy, as TRL's is the initial one.
        self.reference_adapters = adapter_weights(self.model)
        return result

    def run(self, max_steps: int | None = None) -> list[dict[str, float]]:
        """Train until `optim.steps` (or `max_steps` more steps); checkpoint on schedule and at the end.

        SIGINT/SIGTERM finish the current step, write a checkpoint and raise TrainingInterrupted
        (a second Ctrl-C exits at once); every rank stops at the same step.
        """
        total = self.config.optim.steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        history = []
        self.warm_up()
        try:
            with GracefulStop() as signals:
                while self.step < stop:
                    record = self.train_step()
                    record.rollouts = dist.gather_rows(record.rollouts, self.world)
                    saved = None
                    if self.log is not None:
                        self.log.metrics(record.metrics)
                        self.log.rollouts(record.rollouts)
                    if self.step % self.config.run.save_every == 0 or self.step == stop:
                        saved = self.save()
                    history.append(record.metrics)
                    if self.on_step is not None:
                        self.on_step(self.step, record.metrics)
                    if not math.isfinite(record.metrics["loss"]):
                        raise OspoError(
                            f"step {self.step}: the loss is not finite; lower optim.learning_rate or set optim.max_grad_norm"
                        )
                    if dist.any_rank(signals.requested, self.world) and self.step < stop:
                        saved = saved or self.save()
                        raise TrainingInterrupted(
                            interrupted_message(self.step, saved, self.run_dir),
                            signals.exit_code or 130,
                        )
        finally:
            if self.log is not None:
                self.log.close()
        return history

    def save(self) -> Path | None:
        """Checkpoint now (rank 0 only; other ranks hold the same adapters)."""
        if not self.world.is_main:
            return None
        return self._save()
