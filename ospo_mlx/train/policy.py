"""The LoRA policy: adapters on a frozen (full-precision or quantized) base, and its log-probs.

The KL reference is the policy at the start of RL: the same model with its adapters switched
off (`adapters_disabled`) when RL starts from fresh LoRA (B = 0), or with the starting
adapters swapped in (`adapters_loaded`); no second copy of the base weights is held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.tuner.lora import LoRALinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from ospo_mlx.config import LoraConfig, OptimConfig
from ospo_mlx.errors import ConfigError
from ospo_mlx.train.batching import Batch, micro_batches
from ospo_mlx.train.distributed import SINGLE, World, average_gradients, global_count
from ospo_mlx.train.loss import policy_loss, token_log_probs


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


class PolicyUpdate:
    """One optimizer update of the LoRA parameters: loss, gradient and AdamW step, compiled.

    The model, optimizer and random state are the compiled function's inputs and outputs (the
    mlx-lm tuner pattern), so the adapters update in place without leaving the graph. Gradients
    of `gradient_accumulation_steps` micro-batches are summed, averaged (also over data-parallel
    ranks, see train/distributed.py), norm-clipped, applied.
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

        def loss_fn(model, tokens, prompt_lens, mask, adv, old, ref, norm):
            logps, entropy = completion_log_probs(
                model, tokens, prompt_lens, mask.shape[1], temperature, with_entropy=cfg.log_entropy
            )
            # On the first iteration pi_old is the current policy: stop_gradient makes r == 1 exactly.
            old = mx.stop_gradient(logps) if old is None else old
            loss, metrics = policy_loss(
                logps, old, adv, mask,
                epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high, beta=cfg.beta, ref_logps=ref,
                loss_type=cfg.loss_type, max_completion_length=max_completion_length,
                token_normalizer=norm, entropy=entropy,
            )  # fmt: skip
            return loss, (metrics, mx.stop_gradient(logps))

        value_and_grad = nn.value_and_grad(model, loss_fn)

        def step(tokens, prompt_lens, mask, adv, old, ref, norm, prev_grad, do_update):
            (loss, (metrics, logps)), grad = value_and_grad(
                model, tokens, prompt_lens, mask, adv, old, ref, norm
            )
            if prev_grad is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev_grad)
            grad_norm = mx.array(0.0)
            if do_update:
                # Data parallel: average over ranks before clipping, inside the compiled step,
                # so every rank clips and applies the same global gradient.
                grad = average_gradients(grad, world)
                if self.accum > 1:
                    grad = tree_map(lambda g: g / self.accum, grad)
                if cfg.max_grad_norm is not None:
                    grad, grad_norm = optim.clip_grad_norm(grad, cfg.max_grad_norm)
                else:
                    grad_norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grad)))
                optimizer.update(model, grad)
                grad = None
            return loss, metrics, logps, grad, grad_norm

        self.state = [model.state, optimizer.state, mx.random.state]
        self.compiled = compile
        self._step = (
            partial(mx.compile, inputs=self.state, outputs=self.state)(step) if compile else step
        )

    def __call__(self, batch: Batch, use_old_logps: bool = True) -> UpdateResult:
        """Apply one update on `batch`; `use_old_logps=False` takes pi_old = the current policy."""
        self.model.train()
        # dapo: every micro-batch divides by the token count of the whole batch (times the
        # accumulation steps, since the summed gradients are averaged over micro-batches).
        # Data parallel: the token count is summed over ranks (and divided by the world size,
        # since gradients are averaged), so the update is the combined batch's.
        norm = global_count(batch.mask.sum(), self.world) / (self.world.size * self.accum)
        grad, sums, logps = None, {}, []
        parts = micro_batches(batch, self.accum)
        for i, mb in enumerate(parts):
            old = mb.old_logps if use_old_logps else None
            loss, metrics, lp, grad, grad_norm = self._step(
                mb.tokens, mb.prompt_lens, mb.mask, mb.advantages, old, mb.ref_logps, norm,
                grad, i == len(parts) - 1,
            )  # fmt: skip
            mx.eval(self.state, loss, metrics, lp, grad, grad_norm)
            logps.append(lp)
            sums["loss"] = sums.get("loss", 0.0) + loss.item() / len(parts)
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value.item() / len(parts)
        sums["grad_norm"] = grad_norm.item()
        return UpdateResult(sums, mx.concatenate(logps, axis=0), int(batch.mask.sum().item()))


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
