"""The LoRA policy: adapters on a frozen (full-precision or quantized) base, and its log-probs.

The KL reference is the policy at the start of RL: the same model with its adapters switched
off (`adapters_disabled`) when RL starts from fresh LoRA (B = 0), or with the starting
adapters swapped in (`adapters_loaded`); no second copy of the base weights is held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from ospo_mlx.config import LoraConfig, OptimConfig
from ospo_mlx.errors import ConfigError
from ospo_mlx.train.batching import Batch, length_sorted_micro_batches
from ospo_mlx.train.distributed import SINGLE, World, global_count
from ospo_mlx.train.loss import policy_loss, token_log_probs
from ospo_mlx.train.prefix import shared_hidden, shared_micro_batches
from ospo_mlx.train.step import CompiledStep


def lora_parameters(lora: LoraConfig) -> dict[str, Any]:
    """The `lora_parameters` block mlx-lm's adapter_config.json expects."""
    return {
        "rank": lora.rank,
        "scale": lora.effective_scale,
        "dropout": lora.dropout,
        "keys": list(lora.keys) if lora.keys is not None else None,
    }


def adapter_config(model: nn.Module, lora: LoraConfig) -> dict[str, Any]:
    """adapter_config.json contents that `mlx_lm.load(..., adapter_path=...)` accepts."""
    return {
        "fine_tune_type": "lora",
        "num_layers": resolved_num_layers(model, lora),
        "lora_parameters": lora_parameters(lora),
    }


def resolved_num_layers(model: nn.Module, lora: LoraConfig) -> int:
    n = len(model.layers)
    return n if lora.num_layers == -1 else min(lora.num_layers, n)


def apply_lora(model: nn.Module, lora: LoraConfig, seed: int | None = None) -> int:
    """Freeze the base and add LoRA adapters in place; returns the trainable parameter count.

    `seed` fixes the random init of the A matrices (B starts at zero, so the policy starts
    equal to the base model).
    """
    if seed is not None:
        mx.random.seed(seed)
    model.freeze()
    params = lora_parameters(lora)
    if params["keys"] is None:
        params.pop("keys")
    try:
        linear_to_lora_layers(model, resolved_num_layers(model, lora), params)
    except (KeyError, ValueError) as exc:
        raise ConfigError(
            f"lora: cannot add adapters to this model ({exc}); check lora.keys"
        ) from None
    count = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    if count == 0:
        raise ConfigError(f"lora.keys: none of {lora.keys} matched a linear layer of the model")
    return count


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily replace every LoRA layer by its frozen base layer: the reference policy.

    Module swapping (not a zeroed scale) skips the low-rank branch entirely; it works inside
    `mx.compile` too, since the trace simply records the base layers' computation.
    """
    swapped = lora_modules(model)
    if swapped:
        model.update_modules(tree_unflatten([(name, m.linear) for name, m in swapped]))
    try:
        yield model
    finally:
        if swapped:
            model.update_modules(tree_unflatten(swapped))


@contextmanager
def adapters_loaded(model: nn.Module, weights: dict[str, mx.array]) -> Iterator[nn.Module]:
    """Temporarily load other adapter weights (e.g. the KL reference's), then restore them."""
    current = adapter_weights(model)
    model.load_weights(list(weights.items()), strict=False)
    try:
        yield model
    finally:
        model.load_weights(list(current.items()), strict=False)


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The trainable (LoRA) parameters, flat, in mlx-lm's adapter key format."""
    return dict(tree_flatten(model.trainable_parameters()))


def completion_positions(prompt_lens: mx.array, num_positions: int, seq_len: int) -> mx.array:
    """(B, T) indices of the logits that predict completion token t: prompt_len - 1 + t."""
    idx = prompt_lens[:, None] - 1 + mx.arange(num_positions)[None, :]
    return mx.minimum(idx, seq_len - 2)


def _split_head(model: nn.Module) -> tuple[nn.Module, Any] | None:
    """(body, head) for decoder-only models whose logits are `head(body(tokens))` exactly.

    Known plain architectures only (no logit scaling or soft-capping after the head); others
    return None and use the full forward.
    """
    if getattr(model, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    body = getattr(model, "model", None)
    head = getattr(model, "lm_head", None)
    if head is None and body is not None and getattr(body, "embed_tokens", None) is not None:
        head = body.embed_tokens.as_linear
    return (body, head) if body is not None and head is not None else None


# Models whose __call__ is `head(self.model(inputs))` with nothing after the head.
PLAIN_HEAD_MODELS = frozenset({"llama", "qwen2", "qwen3", "mistral", "smollm3"})


def completion_log_probs(
    model: nn.Module,
    tokens: mx.array,
    prompt_lens: mx.array,
    num_positions: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[mx.array, mx.array | None]:
    """Log-probs (B, T) of each completion token given prompt and previous completion tokens.

    `tokens` (B, L) holds prompt then completion, right-padded (so the causal mask keeps the
    padding invisible to real tokens). Only the T completion positions reach the vocabulary
    projection and softmax: hidden states are gathered before the head when the architecture
    allows, which keeps the (B, T, V) work and its backward small.
    """
    idx = completion_positions(prompt_lens, num_positions, tokens.shape[1])
    targets = mx.take_along_axis(tokens, idx + 1, axis=1)
    split = _split_head(model)
    if split is not None:
        body, head = split
        hidden = mx.take_along_axis(body(tokens), idx[..., None], axis=1)
        logits = head(hidden)
    else:
        logits = mx.take_along_axis(model(tokens), idx[..., None], axis=1)
    return token_log_probs(logits, targets, temperature, with_entropy)


def shared_completion_log_probs(
    model: nn.Module,
    prompt: mx.array,
    pad: mx.array,
    completions: mx.array,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[mx.array, mx.array | None]:
    """`completion_log_probs` of completions (R, C) that share one prompt (1, P), which runs
    once (train/prefix.py); needs `supports_prompt_sharing(model)`."""
    split = _split_head(model)
    if split is None:
        raise ValueError("prompt sharing needs a plain decoder (see supports_prompt_sharing)")
    body, head = split
    logits = head(shared_hidden(body, prompt, completions, pad))
    return token_log_probs(logits, completions, temperature, with_entropy)


def supports_prompt_sharing(model: nn.Module) -> bool:
    """Plain-head decoders with full attention everywhere (the shared cache has no window)."""
    split = _split_head(model)
    if split is None or not hasattr(split[0], "layers"):
        return False
    args = getattr(model, "args", None)
    if getattr(args, "sliding_window", None) is None:
        return True
    types = getattr(args, "layer_types", None)  # a window with no layer list: assume it is used
    return bool(types) and all(t == "full_attention" for t in types)


def build_optimizer(cfg: OptimConfig, total_updates: int) -> optim.Optimizer:
    """AdamW with linear warm-up then cosine decay over `total_updates` optimizer updates."""
    decay = max(total_updates - cfg.warmup_steps, 1)
    schedule = optim.cosine_decay(cfg.learning_rate, decay, cfg.min_learning_rate)
    if cfg.warmup_steps > 0:
        warmup = optim.linear_schedule(
            cfg.learning_rate / cfg.warmup_steps, cfg.learning_rate, cfg.warmup_steps
        )
        schedule = optim.join_schedules([warmup, schedule], [cfg.warmup_steps])
    # Bias correction on, as in PyTorch/TRL: without it the first steps move LoRA weights ~3x lr.
    return optim.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay, bias_correction=True)


def enable_grad_checkpoint(model: nn.Module) -> None:
    """Recompute each transformer block's activations in backward (less memory, more time)."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    grad_checkpoint(model.layers[0])


@dataclass
class UpdateResult:
    metrics: dict[str, float]
    logps: mx.array  # (B, T) policy log-probs before this update: pi_old for later iterations
    tokens: int  # completion tokens processed


def micro_batch_rows(rows: int, seq_len: int, micro_batch_size: int, token_budget: int) -> int:
    """Rows per forward/backward: a divisor of `rows` (equal shapes: one compiled trace).

    `micro_batch_size` > 0 asks for at most that many rows; 0 chooses from the sequence length:
    as many rows as fit `token_budget` padded tokens (activation memory grows with rows x
    length, while below a few hundred tokens per matmul the CPU loses throughput).
    """
    cap = micro_batch_size if micro_batch_size > 0 else max(1, token_budget // max(seq_len, 1))
    cap = max(1, min(cap, rows))
    return max(d for d in range(1, cap + 1) if rows % d == 0)


class PolicyUpdate:
    """One optimizer update of the LoRA parameters: loss, gradient and AdamW step, compiled.

    The batch is split into `gradient_accumulation_steps` parts (TRL's semantics: bnpo and grpo
    normalize within a part, gradients are averaged over parts and over data-parallel ranks,
    see train/distributed.py), and every part into micro-batches of `micro_batch_rows` rows
    for memory. Micro-batching changes only the summation order: each micro-batch's loss is
    normalized by its part's token and row counts, and the gradients are summed inside the
    compiled step (train/step.py), so the update equals the part's in one piece.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        cfg: OptimConfig,
        *,
        temperature: float,
        max_completion_length: int,
        compile: bool = True,
        world: World = SINGLE,
    ) -> None:
        self.model, self.optimizer, self.cfg, self.world = model, optimizer, cfg, world
        self.accum = cfg.gradient_accumulation_steps
        entropy_needed = cfg.log_entropy or cfg.top_entropy_quantile < 1.0

        def loss_fn(model, tokens, prompt_lens, mask, adv, old, ref, token_norm, seq_norm):
            logps, entropy = completion_log_probs(
                model, tokens, prompt_lens, mask.shape[1], temperature, with_entropy=entropy_needed
            )
            return objective(logps, entropy, mask, adv, old, ref, token_norm, seq_norm)

        def shared_loss_fn(model, prompt, pad, comps, mask, adv, old, ref, token_norm, seq_norm):
            logps, entropy = shared_completion_log_probs(
                model, prompt, pad, comps, temperature, with_entropy=entropy_needed
            )
            return objective(logps, entropy, mask, adv, old, ref, token_norm, seq_norm)

        def objective(logps, entropy, mask, adv, old, ref, token_norm, seq_norm):
            # On the first iteration pi_old is the current policy: stop_gradient makes r == 1 exactly.
            old = mx.stop_gradient(logps) if old is None else old
            loss, metrics = policy_loss(
                logps, old, adv, mask,
                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta, ref_logps=ref,
                loss_type=cfg.loss_type, max_completion_length=max_completion_length,
                token_normalizer=token_norm, sequence_normalizer=seq_norm, entropy=entropy,
                importance_sampling_level=cfg.importance_sampling_level, delta=cfg.delta,
                top_entropy_quantile=cfg.top_entropy_quantile,
            )  # fmt: skip
            if not cfg.log_entropy:
                metrics["entropy"] = mx.array(0.0)
            return loss, (metrics, mx.stop_gradient(logps))

        self.step = CompiledStep(
            model, optimizer, loss_fn, max_grad_norm=cfg.max_grad_norm, compile=compile, world=world
        )
        # Same model/optimizer state; only its accumulate is used (one prompt per micro-batch).
        self.shared_step = CompiledStep(
            model, optimizer, shared_loss_fn, max_grad_norm=cfg.max_grad_norm, compile=compile,
            world=world,
        )  # fmt: skip
        self.share_prompt = (
            cfg.share_prompt and not cfg.grad_checkpoint and supports_prompt_sharing(model)
        )
        self.state = self.step.state
        self.compiled = compile
        self.last_micro_rows = 0  # rows per forward/backward of the latest update (bench/logs)

    def micro_rows(self, batch: Batch) -> int:
        """Rows per forward/backward for this batch (see `micro_batch_rows`)."""
        return micro_batch_rows(
            batch.size // self.accum, batch.tokens.shape[1],
            self.cfg.micro_batch_size, self.cfg.micro_batch_tokens,
        )  # fmt: skip

    def __call__(self, batch: Batch, use_old_logps: bool = True) -> UpdateResult:
        """Apply one update on `batch`; `use_old_logps=False` takes pi_old = the current policy."""
        self.model.train()
        if batch.size % self.accum:
            raise ValueError(f"{self.accum} micro-batches do not divide a batch of {batch.size}")
        # dapo: every micro-batch divides by the token count of the whole batch (times the
        # accumulation steps, since the summed gradients are averaged over parts).
        # Data parallel: the token count is summed over ranks (and divided by the world size,
        # since gradients are averaged), so the update is the combined batch's.
        row_tokens = np.asarray(batch.mask.sum(axis=1), dtype=np.float64)  # one host read
        prompt_lens = np.asarray(batch.prompt_lens)
        dapo_norm = global_count(float(row_tokens.sum()), self.world) / (
            self.world.size * self.accum
        )
        part_rows, rows = batch.size // self.accum, self.micro_rows(batch)
        tokens_host = np.asarray(batch.tokens) if self.share_prompt else None
        self.last_micro_rows = 0
        acc, logps, order = self.step.zeros(), [], []
        loss_sum: mx.array = mx.array(0.0)
        metric_sums: dict[str, mx.array] = {}
        for part in range(self.accum):
            first = part * part_rows
            part_tokens = max(float(row_tokens[first : first + part_rows].sum()), 1.0)
            token_norm = dapo_norm if self.cfg.loss_type == "dapo" else mx.array(part_tokens)
            seq_norm = mx.array(float(part_rows))
            for idx, seq_len, width, lead in self._pieces(
                batch, first, part_rows, rows, prompt_lens, row_tokens, tokens_host
            ):
                self.last_micro_rows = max(self.last_micro_rows, len(idx))
                mb = batch.take(idx, seq_len, width)
                old = mb.old_logps if use_old_logps else None
                step = self.step if lead is None else self.shared_step
                lead = (mb.tokens, mb.prompt_lens) if lead is None else lead
                loss, (metrics, lp), acc = step.accumulate(
                    acc, *lead, mb.mask, mb.advantages, old, mb.ref_logps, token_norm, seq_norm
                )
                # Evaluate per micro-batch: only one micro-batch's activations are ever alive.
                mx.eval(self.state, loss, metrics, lp, acc)
                logps.append(mx.pad(lp, [(0, 0), (0, batch.num_positions - width)]))
                order.append(idx)
                # Masked-mean metrics weighted by token share: the part's masked mean exactly.
                share = float(row_tokens[idx].sum()) / part_tokens / self.accum
                loss_sum = loss_sum + loss
                for key, value in metrics.items():
                    metric_sums[key] = metric_sums.get(key, mx.array(0.0)) + value * share
        grad_norm = self.step.apply(acc, self.accum)
        mx.eval(loss_sum, metric_sums)
        sums = {"loss": loss_sum.item() / self.accum}
        sums.update({key: value.item() for key, value in metric_sums.items()})
        sums["grad_norm"] = grad_norm.item()
        # Back to the batch's row order (pi_old of later iterations is indexed by row).
        inverse = np.argsort(np.concatenate(order))
        logps_all = mx.take(mx.concatenate(logps, axis=0), mx.array(inverse), axis=0)
        return UpdateResult(sums, logps_all, int(row_tokens.sum()))


    def _pieces(
        self,
        batch: Batch,
        first: int,
        count: int,
        rows: int,
        prompt_lens: np.ndarray,
        row_tokens: np.ndarray,
        tokens_host: np.ndarray | None,
    ) -> list[tuple[np.ndarray, int, int, tuple[mx.array, ...] | None]]:
        """Micro-batches of rows first..first+count: (rows, length, width, shared-prompt inputs
        or None for per-row micro-batches)."""
        lens = row_tokens.astype(np.int64)
        if tokens_host is not None:
            chunks = shared_micro_batches(
                tokens_host, prompt_lens, lens, range(first, first + count), batch.num_positions,
                self.cfg.micro_batch_size, self.cfg.micro_batch_tokens,
            )  # fmt: skip
            length = batch.tokens.shape[1]
            return [
                (c.rows, length, c.width,
                 (mx.array(c.prompt)[None], mx.array(c.pad), mx.array(c.completions)))
                for c in chunks
            ]  # fmt: skip
        groups = length_sorted_micro_batches(
            prompt_lens[first : first + count], lens[first : first + count],
            rows, batch.tokens.shape[1], batch.num_positions,
        )  # fmt: skip
        return [(idx + first, seq_len, width, None) for idx, seq_len, width in groups]


def sequence_log_probs(
    model: nn.Module, batch: Batch, temperature: float, reference: bool = False, chunk: int = 8
) -> mx.array:
    """(B, T) log-probs of the batch's completions without gradient, in chunks of `chunk` rows.

    `reference=True` evaluates the adapter-off base model (the KL reference).
    """
    model.eval()
    out = []
    for start in range(0, batch.size, chunk):
        part = batch.slice(start, start + chunk)
        if reference:
            with adapters_disabled(model):
                lp, _ = completion_log_probs(
                    model, part.tokens, part.prompt_lens, part.num_positions, temperature
                )
        else:
            lp, _ = completion_log_probs(
                model, part.tokens, part.prompt_lens, part.num_positions, temperature
            )
        mx.eval(lp)
        out.append(lp)
    return mx.concatenate(out, axis=0)
