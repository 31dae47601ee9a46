"""The CPU exp through pow: accuracy against NumPy, and the swapped SwiGLU MLP is the same model."""

from __future__ import annotations

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from test_policy import VOCAB, tiny_llama

from ospo_mlx.config import LoraConfig
from ospo_mlx.models.fastmath import PowSwiGLU, cpu_backend, fast_exp, use_fast_activations
from ospo_mlx.models.load import load_model
from ospo_mlx.train.policy import apply_lora


@settings(max_examples=30, deadline=None)
@given(low=st.floats(-87.0, 0.0), width=st.floats(0.0, 40.0), seed=st.integers(0, 2**31 - 1))
def test_fast_exp_is_exp_to_float32_precision(low, width, seed):
    x = np.random.default_rng(seed).uniform(low, low + width, 1000).astype(np.float32)
    want = np.exp(x.astype(np.float64))
    got = np.array(fast_exp(mx.array(x))).astype(np.float64)
    # Normal float32 range (x >= -87). Relative error grows with |x|: x log2 e is rounded.
    rel = np.abs(got - want) / want
    assert (rel <= 1e-6 + 6e-8 * np.abs(x)).all(), float(rel.max())


def test_fast_exp_keeps_the_edges():
    x = mx.array([-np.inf, -200.0, 0.0, 200.0], dtype=mx.float32)
    np.testing.assert_array_equal(np.array(fast_exp(x)), [0.0, 0.0, 1.0, np.inf])


def test_swapped_mlp_computes_the_same_model_and_gradient():
    original, swapped = tiny_llama(0), tiny_llama(0)
    assert use_fast_activations(swapped) == (3 if cpu_backend() else 0)
    if not cpu_backend():
        return
    assert all(isinstance(layer.mlp, PowSwiGLU) for layer in swapped.layers)
    # Same parameter paths: adapters, checkpoints and exports do not see the swap.
    assert sorted(k for k, _ in tree_flatten(original.parameters())) == sorted(
        k for k, _ in tree_flatten(swapped.parameters())
    )
    tokens = mx.array(np.random.default_rng(0).integers(0, VOCAB, (2, 12)).astype(np.int32))
    np.testing.assert_allclose(
        np.array(swapped(tokens)), np.array(original(tokens)), rtol=1e-5, atol=1e-5
    )
    grads = []
    for model in (original, swapped):
        apply_lora(model, LoraConfig(rank=4, keys=["mlp.gate_proj", "self_attn.q_proj"]), seed=0)
        for _, m in model.named_modules():
            if hasattr(m, "lora_b"):
                m.lora_b = mx.ones_like(m.lora_b) * 0.1
        loss = nn.value_and_grad(model, lambda m, t: m(t).astype(mx.float32).square().mean())
        grads.append(dict(tree_flatten(loss(model, tokens)[1])))
    assert grads[0].keys() == grads[1].keys() and any("gate_proj" in k for k in grads[0])
    for key in grads[0]:
        np.testing.assert_allclose(np.array(grads[1][key]), np.array(grads[0][key]),
                                   rtol=1e-4, atol=1e-6, err_msg=key)  # fmt: skip


def test_load_model_swaps_on_the_cpu_backend():
    model, _ = load_model("tiny")
    kinds = {type(layer.mlp).__name__ for layer in model.model.layers}
    assert kinds == ({"PowSwiGLU"} if cpu_backend() else {"MLP"})


def test_pow_swiglu_is_finite_with_gradient_at_extreme_gates():
    # A large learning rate drives gates far negative: SiLU's gradient must stay finite (an
    # uncapped 2^(-gate log2 e) overflowed to inf / inf = NaN) and match MLX's sigmoid form.
    from mlx_lm.models.activations import swiglu

    from ospo_mlx.models.fastmath import _pow_swiglu

    gate = mx.array([-1e4, -500.0, -90.0, -45.0, -20.0, -1.0, 0.0, 1.0, 30.0, 500.0])
    up = mx.full(gate.shape, 3.0)
    for fn in (lambda g: _pow_swiglu(g, up).sum(), lambda g: _pow_swiglu(g, up * 1e3).sum()):
        grad = np.array(mx.grad(fn)(gate))
        assert np.isfinite(grad).all(), grad
    np.testing.assert_allclose(
        np.array(mx.grad(lambda g: _pow_swiglu(g, up).sum())(gate)),
        np.array(mx.grad(lambda g: swiglu(g, up).sum())(gate)), rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(
        np.array(_pow_swiglu(gate, up)), np.array(swiglu(gate, up)), rtol=1e-5, atol=1e-6
    )
