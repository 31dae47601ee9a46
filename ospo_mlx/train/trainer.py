"""`ospo train`: sample groups, score them, attribute credit, update the LoRA policy, log.

One trainer serves both algorithms: `grpo` broadcasts each completion's sequence advantage to
its tokens, `ospo` redistributes it with segment Owen values computed from the reward's
coalition values. Everything but the update runs outside the compiled function.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ospo_mlx.attribution import credit
from ospo_mlx.attribution.segment import SegmenterConfig, after_answer
from ospo_mlx.config import TrainConfig, dump_config
from ospo_mlx.data.schema import Product, Task, load_catalog, load_tasks
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward.base import CombinedReward, Reward
from ospo_mlx.train import checkpoint as ckpt
from ospo_mlx.train import distributed as dist
from ospo_mlx.train.attribute import Attribution, attribute
from ospo_mlx.train.batching import Batch, pack_batch
from ospo_mlx.train.bookkeeping import (
    fallback_weights,
    fits_context,
    model_context,
    sanitize_rewards,
    token_advantages,
    zero_std_groups,
)
from ospo_mlx.train.groups import GroupFilter, Groups
from ospo_mlx.train.interrupt import GracefulStop, TrainingInterrupted, interrupted_message
from ospo_mlx.train.loss import truncation_mask
from ospo_mlx.train.phases import (
    CreditRecord,
    SampleRecord,
    ScoreRecord,
    StepPart,
    UpdateRecord,
    rollout_rows,
    split_generation,
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
from ospo_mlx.train.tracking import build_tracking

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
        # The KL reference: the policy at the start of RL (None: fresh LoRA = adapters off).
        # Taken before a checkpoint is restored, since that replaces the model's adapters.
        self.reference_adapters = self._starting_adapters(resumed=checkpoint is not None)
        self.step, self.epoch, self.position = 0, 0, 0
        if checkpoint is not None:  # before PolicyUpdate: it captures the optimizer state
            ckpt.restore(self.model, self.optimizer, checkpoint)
            self.step = checkpoint.step
            self.epoch, self.position = checkpoint.state["epoch"], checkpoint.state["position"]
            dist.agree(self.step, self.world, "the checkpoint step to resume from")
            k = c.optim.steps_per_generation
            if self.step % k and self.world.is_main:  # an interrupt or final save mid-generation
                import sys

                sys.stderr.write(
                    f"warning: step {self.step} is inside a generation of {k} steps; its unused "
                    f"{k - self.step % k} step(s) of rollouts were not checkpointed, so the run "
                    "continues with a new sampling pass\n"
                )
        self.update = PolicyUpdate(
            self.model, self.optimizer, c.optim,
            temperature=c.sampling.temperature, max_completion_length=c.sampling.max_new_tokens,
            compile=c.optim.compile, world=self.world,
        )  # fmt: skip
        # Parts of the last generation not yet used (steps_per_generation > 1); not checkpointed.
        self.pending: list[StepPart] = []

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
        if world.is_main:  # only rank 0 writes the run directory (and reports to run.report_to)
            tracking = build_tracking(
                c.run.report_to, run_dir, name=c.run.name or run_dir.name, config=c.to_dict(),
                log_completions=c.run.log_completions, every=c.run.log_completions_steps,
            )  # fmt: skip
            resume_step = checkpoint.step if checkpoint else None
            trainer.log = RunLog(
                run_dir, dump_config(c), resume_step=resume_step, tracking=tracking
            )
        return trainer

    def _starting_adapters(self, resumed: bool) -> dict[str, mx.array] | None:
        """Adapters RL starts from: the model's when it was given some (`model.adapters`) or, on
        resume, the warm-up's (RUN/warmup) or the given ones; else None (fresh LoRA)."""
        from ospo_mlx.train.checkpoint import ADAPTER_FILE

        if not resumed:  # MLX arrays are immutable: the optimizer's updates make new ones
            return adapter_weights(self.model) if self.config.model.adapters else None
        warmup = self.run_dir / "warmup" if self.run_dir is not None else None
        for directory in (warmup, self.config.model.adapters):
            if directory and (Path(directory) / ADAPTER_FILE).is_file():
                from ospo_mlx.safety import load_tensors

                return load_tensors(Path(directory) / ADAPTER_FILE, "reference adapters")
        return None

    def reference_log_probs(self, batch: Batch) -> mx.array:
        """(B, T) log-probs under the KL reference, the policy at the start of RL."""
        t, rows = self.config.sampling.temperature, self.update.micro_rows(batch)
        if self.reference_adapters is None:  # fresh LoRA starts at B = 0: adapters off
            return sequence_log_probs(self.model, batch, t, reference=True, chunk=rows)
        from ospo_mlx.train.policy import adapters_loaded

        with adapters_loaded(self.model, self.reference_adapters):
            return sequence_log_probs(self.model, batch, t, chunk=rows)

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

    def next_task_indices(self, count: int | None = None) -> list[int]:
        """The next `count` (default batch_size) tasks of a per-epoch shuffled order (seeded)."""
        count = self.config.optim.batch_size if count is None else count
        out = []
        while len(out) < count:
            order = np.random.default_rng([self.config.run.seed, self.epoch]).permutation(
                len(self.tasks)
            )
            take = order[self.position : self.position + count - len(out)]
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

    def sample(self, step: int, *, draw: int = 0, count: int | None = None) -> SampleRecord:
        """Phase 1: G completions for each of this rank's share of the next `count` prompts.

        `count` defaults to optim.batch_size; `draw` > 0 is another sampling pass of the same
        step (dynamic sampling), with its own seed.
        """
        from ospo_mlx.train.rollout import sample_groups

        c, g = self.config, self.config.optim.num_generations
        t0 = time.perf_counter()
        indices = dist.shard(self.next_task_indices(count), self.world)  # this rank's prompts
        prompts = [self.prompts[i] for i in indices]
        self.model.eval()  # no LoRA dropout while sampling
        # Draw 0 keeps the seed of a plain step; dynamic sampling's extra draws get new ones.
        seed = c.run.seed * 1_000_003 + step + 104_729 * self.world.rank + 15_485_863 * draw
        tags = c.prompt.answer_tags
        sampling = c.sampling
        if sampling.stop_at_answer:  # nothing after </answer> is sampled, scored or trained
            sampling = replace(sampling, stop_strings=(*sampling.stop_strings, tags[1]))
        rollouts = sample_groups(
            self.model, self.tokenizer, prompts, sampling, num_generations=g, seed=seed
        )
        texts = list(rollouts.texts)
        return SampleRecord(
            indices=indices,
            tasks=[self.tasks[i] for i in indices for _ in range(g)],
            prompts=prompts,
            texts=texts,
            ids=[list(map(int, t)) for t in rollouts.completion_tokens],
            offsets=list(rollouts.token_offsets),
            finished=list(rollouts.finished),
            seconds=time.perf_counter() - t0,
            stopped_at_answer=[t.endswith(tags[1]) for t in texts],
            after_answer=[after_answer(t, tags) for t in texts],
        )

    def score(
        self, sample: SampleRecord, parts: dict[str, np.ndarray] | None = None
    ) -> ScoreRecord:
        """Phase 2: rewards, each reward's part, and GRPO advantages over all ranks' groups.

        `parts`: each reward's scores when the generation already computed them (dynamic
        sampling scores every draw to filter its groups), else they are computed here.
        """
        c, g = self.config, self.config.optim.num_generations
        t0 = time.perf_counter()
        texts, tasks = sample.texts, sample.tasks
        if parts is None:
            parts = self.reward.score_parts(texts, tasks)
        raw = self.reward.combine(list(parts.values()))
        rewards, nonfinite = sanitize_rewards(raw)
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
            nonfinite=nonfinite, ndcg=ndcg, raw=np.asarray(raw, dtype=np.float64),
            collapsed=np.array(
                [retrieval is not None and retrieval.repeats_removed(t) > 0 for t in texts],
                dtype=bool,
            ),
            seconds=time.perf_counter() - t0,
        )  # fmt: skip

    def credit(self, sample: SampleRecord, score: ScoreRecord) -> CreditRecord:
        """Phase 3: segment credit (OSPO) or the broadcast sequence advantage (GRPO)."""
        c = self.config
        t0 = time.perf_counter()
        attr = None
        if c.algorithm == "ospo" or c.run.log_attributions:
            # Nothing to redistribute (A = 0), a reward of 0 (uniform fallback) or a format-zeroed
            # answer (no content to credit): GRPO weights, and no coalition is evaluated for it.
            active = (
                (score.advantages != 0.0)
                & ~score.zeroed
                & (np.abs(score.rewards) >= credit.ZERO_REWARD)
                if c.algorithm == "ospo"
                else np.ones(len(sample.texts), bool)
            )
            attr = self.attribute(
                sample.texts, sample.offsets, sample.tasks, score.advantages, active
            )
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

    def pack(self, sample: SampleRecord, credit: CreditRecord, *, off_policy: bool) -> Batch:
        """The update batch of these completions (truncation mask; pi_old when `off_policy`)."""
        c, g = self.config, self.config.optim.num_generations
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
        if c.optim.mask_truncated_completions:  # cut at max_new_tokens: no part in the loss
            batch.mask = truncation_mask(batch.mask, mx.array(sample.finished))
        if off_policy:  # updated after earlier steps moved the policy: pi_old = the sampler
            batch.old_logps = sequence_log_probs(
                self.model, batch, c.sampling.temperature, chunk=self.update.micro_rows(batch)
            )
        return batch

    def generate(self, step: int) -> list[StepPart]:
        """One sampling pass for `optim.steps_per_generation` optimizer steps, from `step` on.

        sample + raw score, repeated while dynamic sampling finds too few groups with signal
        (train/groups.py); then score (advantages over the kept groups of all ranks) and credit
        over the whole generation; then one StepPart per step, prompt-major.
        """
        c, g, o = self.config, self.config.optim.num_generations, self.config.optim
        tags = c.prompt.answer_tags
        k = o.steps_per_generation
        need = o.batch_size * k  # prompts of the whole generation, over all ranks
        kept = GroupFilter(need // self.world.size, g, enabled=o.dynamic_sampling)
        t_sample = t_score = 0.0
        for draw in range(o.dynamic_sampling_max_draws if o.dynamic_sampling else 1):
            drawn = self.sample(step, draw=draw, count=need)
            t0 = time.perf_counter()
            parts = self.reward.score_parts(drawn.texts, drawn.tasks)
            raw = self.reward.combine(list(parts.values()))
            t_sample, t_score = t_sample + drawn.seconds, t_score + time.perf_counter() - t0
            kept.add(Groups(
                g, list(drawn.indices), drawn.prompts, drawn.texts, drawn.ids, drawn.offsets,
                drawn.finished, raw, parts,
            ))  # fmt: skip
            # every rank draws as long as any rank is short, so the data cursors stay in step
            if not dist.any_rank(not kept.full, self.world):
                break
        gen, sampling_counts = kept.finish()
        sample = SampleRecord(
            indices=gen.task_indices,
            tasks=[self.tasks[i] for i in gen.task_indices for _ in range(g)],
            prompts=gen.prompts, texts=gen.texts, ids=gen.ids, offsets=gen.offsets,
            finished=gen.finished, seconds=t_sample,
            stopped_at_answer=[t.endswith(tags[1]) for t in gen.texts],
            after_answer=[after_answer(t, tags) for t in gen.texts],
        )  # fmt: skip
        score = self.score(sample, parts=gen.parts)
        score.seconds += t_score
        credit_record = self.credit(sample, score)
        out = []
        for j, (s, sc, cr) in enumerate(
            split_generation(sample, score, credit_record, k, world_size=self.world.size)
        ):
            metrics = {key: v if j == 0 else 0.0 for key, v in sampling_counts.items()}
            metrics["completions/masked_truncated"] = float(
                o.mask_truncated_completions * (len(s.finished) - int(np.sum(s.finished)))
            )
            rows = []
            if c.run.log_rollouts:
                rows = rollout_rows(
                    step + j, s, sc, cr, c, rank=self.world.rank, prompt_text=self.prompt_text
                )
            # later parts are updated off-policy: pi_old is the sampling policy, taken now
            out.append(StepPart(self.pack(s, cr, off_policy=k > 1), s, sc, cr, metrics, rows))
        return out

    def update_policy(self, batch: Batch) -> UpdateRecord:
        """Phase 4: num_iterations clipped updates on one step's batch."""
        c = self.config
        t0 = time.perf_counter()
        if c.optim.beta > 0:
            batch.ref_logps = self.reference_log_probs(batch)
        results = []
        for _ in range(c.optim.num_iterations):
            # pi_old: given by the generation when it feeds several steps, else this first pass
            result = self.update(batch, use_old_logps=batch.old_logps is not None)
            if batch.old_logps is None:
                batch.old_logps = result.logps  # the sampling policy, before any update
            results.append(result.metrics)
        metrics = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
        metrics["grad_norm"] = results[-1]["grad_norm"]
        return UpdateRecord(
            metrics, float(self.optimizer.learning_rate.item()), time.perf_counter() - t0
        )

    def train_step(self) -> StepRecord:
        """One optimizer step: a new generation when the last one is used up, then its update."""
        step = self.step + 1
        mx.reset_peak_memory()
        if not self.pending:
            self.pending = self.generate(step)
        part = self.pending.pop(0)
        update = self.update_policy(part.batch)
        self.step = step
        metrics = step_metrics(
            step, part.sample, part.score, part.credit, update,
            skipped_long=self.skipped_long, peak_memory_gb=mx.get_peak_memory() / 1e9,
            extra=part.metrics,
        )  # fmt: skip
        metrics = dist.reduce_metrics(metrics, self.world, keep=GLOBAL_METRICS)
        return StepRecord(metrics, part.rollouts)

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
        # RL starts here: the KL reference is the warmed-up policy, as TRL's is the initial one.
        self.reference_adapters = adapter_weights(self.model)
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
