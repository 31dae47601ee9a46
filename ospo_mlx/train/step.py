"""The compiled optimizer step shared by the RL update and the SFT warm-up.

Two compiled functions, the mlx-lm tuner pattern (model, optimizer and random state are their
inputs and outputs, so the adapters update in place without leaving the graph):

- `accumulate(acc, *inputs)`: loss and gradient of one micro-batch, added to the running
  gradient `acc` inside the graph. Traced once per micro-batch shape.
- `apply(acc, divisor)`: average over data-parallel ranks, divide, clip the global norm, AdamW.
  Traced once: its inputs (the gradient tree) never change shape.

Splitting the two keeps the number of traces small (the update no longer retraces for the
first/middle/last micro-batch) and lets any number of micro-batches feed one update. The random
state is part of both, so LoRA dropout draws a fresh mask on every call instead of the one
frozen into the first trace.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map

from ospo_mlx.train.distributed import SINGLE, World, average_gradients


def global_norm(grad: Any) -> mx.array:
    """Euclidean norm of a whole gradient tree."""
    return mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grad)))


def clip_by_global_norm(grad: Any, max_norm: float | None) -> tuple[Any, mx.array]:
    """(gradient clipped to `max_norm`, norm before clipping); `max_norm=None` only measures."""
    if max_norm is None:
        return grad, global_norm(grad)
    return optim.clip_grad_norm(grad, max_norm)


class CompiledStep:
    """Gradient accumulation and the optimizer update of a model's trainable parameters.

    `loss_fn(model, *inputs)` returns `(loss, aux)`; its gradient is taken with respect to
    the model's trainable parameters only. Use: `acc = step.zeros()`, then
    `loss, aux, acc = step.accumulate(acc, *inputs)` per micro-batch (evaluate `step.state`
    with the outputs to bound memory), then `grad_norm = step.apply(acc, divisor)`.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        loss_fn: Callable[..., tuple[mx.array, Any]],
        *,
        max_grad_norm: float | None,
        compile: bool = True,
        world: World = SINGLE,
    ) -> None:
        self.model, self.optimizer, self.compiled = model, optimizer, compile
        value_and_grad = nn.value_and_grad(model, loss_fn)

        def accumulate(acc: Any, *inputs: Any) -> tuple[mx.array, Any, Any]:
            (loss, aux), grad = value_and_grad(model, *inputs)
            return loss, aux, tree_map(mx.add, acc, grad)

        def apply(acc: Any, divisor: mx.array) -> mx.array:
            # Data parallel: average over ranks before clipping, inside the compiled step, so
            # every rank clips and applies the same global gradient.
            grad = tree_map(lambda g: g / divisor, average_gradients(acc, world))
            grad, norm = clip_by_global_norm(grad, max_grad_norm)
            optimizer.update(model, grad)
            return norm

        self.state = [model.state, optimizer.state, mx.random.state]
        wrap = partial(mx.compile, inputs=self.state, outputs=self.state) if compile else None
        self._accumulate = wrap(accumulate) if wrap else accumulate
        self._apply = wrap(apply) if wrap else apply

    def zeros(self) -> Any:
        """A zero gradient tree shaped like the trainable parameters."""
        return tree_map(mx.zeros_like, self.model.trainable_parameters())

    def accumulate(self, acc: Any, *inputs: Any) -> tuple[mx.array, Any, Any]:
        """(loss, aux, acc + gradient) of one micro-batch; lazy: evaluate `state` with them."""
        return self._accumulate(acc, *inputs)

    def apply(self, acc: Any, divisor: float = 1.0) -> mx.array:
        """Apply `acc / divisor` (clipped) with the optimizer; returns the pre-clip norm."""
        norm = self._apply(acc, mx.array(divisor, dtype=mx.float32))
        mx.eval(self.state, norm)
        return norm
