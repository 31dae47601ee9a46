"""Faster exp for MLX's CPU backend: 2^(x log2 e) instead of exp.

On x86 Linux, MLX's CPU exp runs at ~18 ns per element (sigmoid ~22 ns) while its pow runs
at ~7 ns (measured on 25M floats: exp 458 ms, pow 171 ms). The update spends a fifth of its
time in these: SiLU in every MLP and the log-softmax over the vocabulary. The result differs
from exp by the rounding of x log2 e: relative error below 1e-6 + 6e-8 |x| (tested). On Metal and CUDA exp
is fast, so everything here falls back to `mx.exp` there.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

LOG2_E = 1.4426950408889634


def cpu_backend() -> bool:
    return mx.default_device().type == mx.DeviceType.cpu


def fast_exp(x: mx.array) -> mx.array:
    """exp(x), as 2^(x log2 e) on the CPU backend."""
    return mx.power(2.0, x * LOG2_E) if cpu_backend() else mx.exp(x)


@partial(mx.compile, shapeless=True)
def _pow_swiglu_forward(gate: mx.array, x: mx.array) -> mx.array:
    return gate * x / (1.0 + mx.power(2.0, gate * -LOG2_E))


@partial(mx.compile, shapeless=True)
def _pow_swiglu_backward(gate: mx.array, x: mx.array, cotangent: mx.array):
    s = 1.0 / (1.0 + mx.power(2.0, gate * -LOG2_E))  # 2^c = inf gives s = 0, not NaN
    silu = gate * s
    return cotangent * x * (s + silu * (1.0 - s)), cotangent * silu


@mx.custom_function
def _pow_swiglu(gate: mx.array, x: mx.array) -> mx.array:
    """silu(gate) * x. A hand-written backward: autodiff of the quotient gave inf / inf = NaN
    for gates below ~ -44 (2^(-gate log2 e) overflows), and keeps only gate and x."""
    return _pow_swiglu_forward(gate, x)


@_pow_swiglu.vjp
def _pow_swiglu_vjp(primals, cotangent, output):
    return _pow_swiglu_backward(*primals, cotangent)


class PowSwiGLU(nn.Module):
    """mlx-lm's gated MLP, down(silu(gate(x)) * up(x)), with SiLU through `fast_exp`.

    Holds the original projections under their own names, so parameter paths, LoRA keys and
    exported weights are unchanged.
    """

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(_pow_swiglu(self.gate_proj(x), self.up_proj(x)))


def _swiglu_mlp_classes() -> tuple[type, ...]:
    # The mlx-lm MLPs known to compute exactly down(swiglu(gate(x), up(x))).
    from mlx_lm.models import llama, qwen2, qwen3

    return (llama.MLP, qwen2.MLP, qwen3.MLP)


def use_fast_activations(model: nn.Module) -> int:
    """On the CPU backend, swap known SwiGLU MLPs for `PowSwiGLU`; returns how many."""
    if not cpu_backend():
        return 0
    known = _swiglu_mlp_classes()
    swapped = 0
    for layer in getattr(getattr(model, "model", model), "layers", []):
        mlp = getattr(layer, "mlp", None)
        if type(mlp) in known:
            layer.mlp = PowSwiGLU(mlp)
            swapped += 1
    return swapped
