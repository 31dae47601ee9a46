"""`ospo train`: sample groups, score them, attribute credit, update the LoRA policy, log.

One trainer serves both algorithms: `grpo` broadcasts each completion's sequence advantage to
its tokens, `ospo` redistributes it with segment Owen values computed from the reward's
coalition values. Everything but the update runs outside the compiled function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.segment import SegmenterConfig
from ospo_mlx.config import TrainConfig, dump_config
from ospo_mlx.data.schema import Product, Task, load_catalog, load_tasks
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward.base import CombinedReward, Reward
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
from ospo_mlx.train.phases import (
    CreditRecord,
    SampleRecord,
    ScoreRecord,
    UpdateRecord,
    rollout_rows,
    step_metrics,
)
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
    """Holds the model, reward, optimizer and data cursor; `run()` trains to the end.

    Build it from its parts (`Trainer(model, tokenizer, tasks, reward, optimizer, config)`:
    nothing touches disk unless `run_dir` is given) or from a config with `from_config`,
    which loads data, model and reward and writes the run directory.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        tasks: Sequence[Task],
        reward: Reward,
        optimizer: Any,
        config: TrainConfig,
        *,
        catalog: Mapping[str, Product] | None = None,
        run_dir: Path | None = None,
        log: RunLog | None = None,
        checkpoint: ckpt.Checkpoint | None = None,
        world: dist.World | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        from ospo_mlx.data.prompts import encode_prompt

        c = self.config = config
        self.model, self.tokenizer, self.optimizer = model, tokenizer, optimizer
        self.reward = reward
        self.catalog: Mapping[str, Product] = catalog if catalog is not None else {}
        self.tasks: list[Task] = list(tasks)
        if not self.tasks:
            raise OspoError("no training tasks; check data.train (or pass tasks)")
        self.run_dir, self.log, self.on_step = run_dir, log, on_step
        # Data parallel under mlx.launch (one rank per process), else a single process.
        self.world = world if world is not None else dist.init_world()
        dist.check_divisible(c.optim.batch_size, self.world)
        if not adapter_weights(model):
            raise ConfigError(
                "the model has no LoRA layers; apply them first (train.policy.apply_lora) "
                "or build the trainer with Trainer.from_config"
            )
        self.warmed_up = checkpoint is not None or c.sft.steps == 0
        self.prompts = [
            encode_prompt(self.tokenizer, t, self.catalog, c.prompt) for t in self.tasks
        ]
        self.skipped_long = self._drop_long_prompts(model_context(self.model))
        self.segmenter = SegmenterConfig(
            method=c.attribution.segmenter,
            answer_tags=c.prompt.answer_tags,
            max_segments=c.attribution.max_segments,
        ).validate()
        self.step, self.epoch, self.position = 0, 0, 0
        if checkpoint is not None:  # before PolicyUpdate: it captures the optimizer state
            ckpt.restore(self.model, self.optimizer, checkpoint)
            self.step = checkpoint.step
            self.epoch, self.position = checkpoint.state["epoch"], checkpoint.state["position"]
            dist.agree(self.step, self.world, "the checkpoint step to resume from")
        self.update = PolicyUpdate(
            self.model, self.optimizer, c.optim,
            temperature=c.sampling.temperature, max_completion_length=c.sampling.max_new_tokens,
            compile=c.optim.compile, world=self.world,
        )  # fmt: skip

    @property
    def reward(self) -> CombinedReward:
        """The reward optimized: a weighted sum (a single reward is a sum of one)."""
        return self._reward

    @reward.setter
    def reward(self, reward: Reward) -> None:
        self._reward = reward if isinstance(reward, CombinedReward) else CombinedReward([reward])

    @classmethod
    def from_config(
        cls,
        config: TrainConfig,
        *,
        resume: bool = False,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        world: dist.World | None = None,
    ) -> Trainer:
        """Load data, model (LoRA applied), reward and optimizer from `config`; write RUN/."""
        from ospo_mlx.data.prompts import user_text
        from ospo_mlx.models.load import cache_dir
        from ospo_mlx.reward.build import build_rewards

        c = config
        run_dir = c.run_dir()
        world = world if world is not None else dist.init_world()
        if not resume and (run_dir / "checkpoints" / "latest").exists():
            raise OspoError(
                f"{run_dir} already holds a trained run; continue it with --resume, "
                "or choose another --out/--name"
            )
        for key in ("catalog", "train"):
            path = Path(getattr(c.data, key))
            if not path.is_file():
                raise ConfigError(
                    f"data.{key}: {path} not found (relative paths start at {Path.cwd()}); "
                    f"run from the project root or set it with --set data.{key}=PATH"
                )
        catalog = load_catalog(c.data.catalog)
        tasks = load_tasks(c.data.train, catalog)[: c.data.max_tasks]
        # Cheap checks first: a bad resume or prompt fails before the reward model loads.
        checkpoint = ckpt.load_checkpoint(run_dir) if resume else None
        model, tokenizer = load_policy_model(c, load_adapters=checkpoint is None)
        reward = build_rewards(
            c.reward, catalog, prompt_of=lambda task: user_text(task, catalog, c.prompt),
            cache_dir=cache_dir().parent / "embeddings",
        )  # fmt: skip
        optimizer = build_optimizer(c.optim, c.optim.steps * c.optim.num_iterations)
        trainer = cls(
            model, tokenizer, tasks, reward, optimizer, c, catalog=catalog, run_dir=run_dir,
            checkpoint=checkpoint, world=world, on_step=on_step,
        )  # fmt: skip
        if world.is_main:  # only rank 0 writes the run directory, once everything loaded
            resume_step = checkpoint.step if checkpoint else None
            trainer.log = RunLog(run_dir, dump_config(c), resume_step=resume_step)
        return trainer

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
        self, texts: list[str], offsets: list[Any], tasks: list[Task], active: np.ndarray
    ) -> Attribution:
        """Credit for this rank's completions (see train/attribute.py)."""
        # A generator per (seed, rank, step): coalition draws need no saved state to resume.
        rng = np.random.default_rng([self.config.run.seed, self.world.rank, self.step + 1])
        return attribute(
            texts, offsets, tasks, active, segmenter=self.segmenter, reward=self.reward,
            config=self.config.attribution, rng=rng,
        )  # fmt: skip

    # ------------------------------------------------------------------ one step

    def sample(self, step: int) -> SampleRecord:
        """Phase 1: G completions for each of this rank's next prompts."""
        from ospo_mlx.train.rollout import sample_groups

        c, g = self.config, self.config.optim.num_generations
        t0 = time.perf_counter()
        indices = dist.shard(self.next_task_indices(), self.world)  # this rank's prompts
        prompts = [self.prompts[i] for i in indices]
        self.model.eval()  # no LoRA dropout while sampling
        rollouts = sample_groups(
            self.model, self.tokenizer, prompts, c.sampling, num_generations=g,
            seed=c.run.seed * 1_000_003 + step + 104_729 * self.world.rank,
        )  # fmt: skip
        return SampleRecord(
            indices=indices,
            tasks=[self.tasks[i] for i in indices for _ in range(g)],
            prompts=prompts,
            texts=list(rollouts.texts),
            ids=[list(map(int, t)) for t in rollouts.completion_tokens],
            offsets=rollouts.token_offsets,
            finished=list(rollouts.finished),
            seconds=time.perf_counter() - t0,
        )

    def score(self, sample: SampleRecord) -> ScoreRecord:
        """Phase 2: rewards, each reward's part, and GRPO advantages over all ranks' groups."""
        c, g = self.config, self.config.optim.num_generations
        t0 = time.perf_counter()
        texts, tasks = sample.texts, sample.tasks
        parts = self.reward.score_parts(texts, tasks)
        rewards, nonfinite = sanitize_rewards(self.reward.combine(list(parts.values())))
        ndcg = None
        retrieval = self.reward.retrieval
        if retrieval is not None:  # the default metric needs no second retrieval pass
            ndcg = (
                parts[retrieval.name]
                if retrieval.reward_metric == "ndcg@10"
                else retrieval.metrics(texts, tasks).get("ndcg@10", parts[retrieval.name])
            )
        # Advantages over the combined batch of all ranks (batch scaling needs its std).
        all_rewards = dist.gather(rewards, self.world)
        all_adv = credit.grpo_advantages(all_rewards, g, c.optim.scale_rewards)
        flat = zero_std_groups(all_rewards, g)
        all_adv[np.repeat(flat, g)] = 0.0  # equal rewards: exactly zero, whatever the scaling
        mine = slice(self.world.rank * len(rewards), (self.world.rank + 1) * len(rewards))
        scored = [self.reward.scored(t) for t in texts]
        return ScoreRecord(
            rewards=rewards, parts=parts, all_rewards=all_rewards, flat_groups=flat,
            advantages=all_adv[mine], status=[st for _, st in scored],
            zeroed=np.array([text is None for text, _ in scored], dtype=bool),
            nonfinite=nonfinite, ndcg=ndcg, seconds=time.perf_counter() - t0,
        )  # fmt: skip

    def credit(self, sample: SampleRecord, score: ScoreRecord) -> CreditRecord:
        """Phase 3: segment credit (OSPO) or the broadcast sequence advantage (GRPO)."""
        c = self.config
        t0 = time.perf_counter()
        attr = None
        if c.algorithm == "ospo" or c.run.log_attributions:
            # A completion the format rule scored 0 has no content to credit: GRPO's weights.
            active = (
                (score.advantages != 0.0) & ~score.zeroed
                if c.algorithm == "ospo"
                else np.ones(len(sample.texts), bool)
            )
            attr = self.attribute(sample.texts, sample.offsets, sample.tasks, active)
        lengths = sample.lengths
        weights, no_segments = (
            fallback_weights(attr.segments, attr.weights)
            if attr
            else ([np.ones(n) for n in lengths], 0)
        )
        token_adv = token_advantages(
            c.algorithm, score.advantages, weights, lengths, score.rewards, c.attribution,
            in_segments=attr.in_segments if attr else None,
        )  # fmt: skip
        score.counts = self.reward.counts()  # coalition calls count too (none_coalitions)
        return CreditRecord(attr, weights, token_adv, no_segments, time.perf_counter() - t0)

    def update_policy(self, sample: SampleRecord, credit: CreditRecord) -> UpdateRecord:
        """Phase 4: num_iterations clipped updates on this step's rollouts."""
        c, g = self.config, self.config.optim.num_generations
        t0 = time.perf_counter()
        pad = (
            getattr(self.tokenizer, "pad_token_id", None)
            or getattr(self.tokenizer, "eos_token_id", 0)
            or 0
        )
        lengths = sample.lengths
        batch = pack_batch(
            [p for p in sample.prompts for _ in range(g)],
            sample.ids,
            [row[:n] for row, n in zip(credit.token_advantages, lengths, strict=True)],
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
        metrics = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        metrics["grad_norm"] = results[-1]["grad_norm"]
        return UpdateRecord(
            metrics, float(self.optimizer.learning_rate.item()), time.perf_counter() - t0
        )

    def train_step(self) -> StepRecord:
        """sample -> score -> credit -> update; returns the metrics row and the rollouts."""
        step = self.step + 1
        mx.reset_peak_memory()
        sample = self.sample(step)
        score = self.score(sample)
        credit_record = self.credit(sample, score)
        update = self.update_policy(sample, credit_record)
        self.step = step
        metrics = step_metrics(
            step, sample, score, credit_record, update,
            skipped_long=self.skipped_long, peak_memory_gb=mx.get_peak_memory() / 1e9,
        )  # fmt: skip
        metrics = dist.reduce_metrics(metrics, self.world, keep=GLOBAL_METRICS)
        rows = []
        if self.config.run.log_rollouts:
            rows = rollout_rows(
                step, sample, score, credit_record, self.config, rank=self.world.rank,
                prompt_text=self.prompt_text,
            )  # fmt: skip
        return StepRecord(metrics, rows)

    # ------------------------------------------------------------------ run

    def _save(self) -> Path:
        state = {"epoch": self.epoch, "position": self.position, "world_size": self.world.size}
        return ckpt.save_checkpoint(
            self.run_dir, self.step, adapter_weights(self.model), adapter_config(self.model, self.config.lora),
            self.optimizer, state,
        )  # fmt: skip

    def warm_up(self, on_step: Callable[[int, dict[str, float]], None] | None = None) -> Any:
        """The supervised format warm-up (`sft.steps` > 0), once, before the first RL step.

        Its adapters and losses go to RUN/warmup/ (nowhere without a run directory); a resumed
        run skips it (its checkpoint already holds the warmed-up adapters). Returns the
        SFTResult, or None when skipped.
        """
        if self.warmed_up:
            return None
        from ospo_mlx.train.sft import SFTConfig, warm_up_model

        c = self.config
        sft = SFTConfig(**asdict(c.sft), seed=c.run.seed)
        out = self.run_dir / "warmup" if self.world.is_main and self.run_dir is not None else None
        result = warm_up_model(
            self.model, self.tokenizer, self.tasks, self.catalog, c.prompt, sft,
            out=out, lora=c.lora, on_step=on_step, compile=c.optim.compile,
        )  # fmt: skip
        self.warmed_up = True
        return result

    def run(
        self,
        max_steps: int | None = None,
        *,
        on_warmup_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        """Warm up (once, if configured), then train until `optim.steps` (or `max_steps` more).

        Checkpoints on schedule and at the end when the trainer has a run directory.
        SIGINT/SIGTERM finish the current step, write a checkpoint and raise TrainingInterrupted
        (a second Ctrl-C exits at once); every rank stops at the same step.
        """
        total = self.config.optim.steps
        stop = total if max_steps is None else min(total, self.step + max_steps)
        history = []
        self.warm_up(on_warmup_step)
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
        """Checkpoint now (rank 0 with a run directory only; other ranks hold the same adapters)."""
        if not self.world.is_main or self.run_dir is None:
            return None
        return self._save()


def load_policy_model(config: TrainConfig, *, load_adapters: bool = True) -> tuple[Any, Any]:
    """The configured model and tokenizer, LoRA applied (and `model.adapters` loaded)."""
    from ospo_mlx.models.load import load_model, should_dequantize

    c = config
    model, tokenizer = load_model(c.model.name, trust_remote_code=c.model.trust_remote_code)
    if should_dequantize(c.model.dequantize):
        from mlx_lm.utils import dequantize_model

        dequantize_model(model)
        mx.eval(model.parameters())
    apply_lora(model, c.lora, seed=c.run.seed)
    if c.model.adapters and load_adapters:  # a resumed run's checkpoint holds them instead
        from ospo_mlx.train.sft import load_adapter_weights

        load_adapter_weights(model, c.model.adapters)
    if c.optim.grad_checkpoint:
        enable_grad_checkpoint(model)
    return model, tokenizer
