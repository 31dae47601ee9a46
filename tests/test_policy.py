"""LoRA policy: adapters on a frozen base, adapter-off reference, completion log-probs."""

from __future__ import annotations

from functools import partial

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama

from ospo_mlx.config import LoraConfig
from ospo_mlx.errors import ConfigError
from ospo_mlx.train.batching import micro_batches, pack_batch, round_up
from ospo_mlx.train.loss import k3_kl
from ospo_mlx.train.policy import (
    adapter_config,
    adapter_weights,
    adapters_disabled,
    apply_lora,
    completion_log_probs,
    lora_modules,
)

VOCAB = 97


def tiny_llama(seed: int = 0, quantize: bool = False) -> nn.Module:
    mx.random.seed(seed)
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=3,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=VOCAB,
    )
    model = llama.Model(args)
    if quantize:
        nn.quantize(model, group_size=32, bits=4)
    mx.eval(model.parameters())
    return model


def randomize_b(model: nn.Module, seed: int = 1) -> None:
    key = mx.random.key(seed)
    for _, layer in lora_modules(model):
        key, sub = mx.random.split(key)
        layer.lora_b = 0.05 * mx.random.normal(layer.lora_b.shape, key=sub)
    mx.eval(model.parameters())


def test_apply_lora_freezes_base_and_respects_layers_and_keys():
    model = tiny_llama()
    n = apply_lora(
        model, LoraConfig(rank=4, num_layers=2, keys=["self_attn.q_proj", "self_attn.v_proj"])
    )
    names = list(adapter_weights(model))
    assert len(names) == 2 * 2 * 2  # 2 blocks x 2 keys x (A, B)
    assert all(".layers.1." in k or ".layers.2." in k for k in names)
    assert n == sum(v.size for v in adapter_weights(model).values())
    assert adapter_config(model, LoraConfig(rank=4, num_layers=-1))["num_layers"] == 3
    with pytest.raises(ConfigError, match=r"lora\.keys"):
        apply_lora(tiny_llama(), LoraConfig(keys=["no_such_proj"]))


def test_alpha_sets_scale():
    model = tiny_llama()
    apply_lora(model, LoraConfig(rank=4, alpha=8.0))
    assert {m.scale for _, m in lora_modules(model)} == {2.0}


@pytest.mark.parametrize("quantize", [False, True])
def test_adapters_disabled_is_the_base_model_inside_and_outside_compile(quantize):
    model = tiny_llama(quantize=quantize)
    tokens = mx.array(np.random.default_rng(0).integers(0, VOCAB, (2, 32)), dtype=mx.int32)
    base = model(tokens)
    apply_lora(model, LoraConfig(rank=4))
    randomize_b(model)
    adapted = model(tokens)
    assert float(mx.abs(adapted - base).max()) > 1e-3  # adapters change the output
    with adapters_disabled(model):
        off = model(tokens)
    np.testing.assert_array_equal(np.array(off), np.array(base))
    np.testing.assert_array_equal(np.array(model(tokens)), np.array(adapted))  # restored

    state = [model.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def both(x):
        on = model(x)
        with adapters_disabled(model):
            ref = model(x)
        return on, ref

    on_c, ref_c = both(tokens)
    np.testing.assert_allclose(np.array(on_c), np.array(adapted), atol=1e-4)
    np.testing.assert_allclose(np.array(ref_c), np.array(base), atol=1e-4)


def brute_force_logps(model, prompt, completion, temperature):
    """Unpadded forward on one sequence, log-softmax at every completion position."""
    seq = mx.array([prompt + completion], dtype=mx.int32)
    logits = np.array(model(seq)[0].astype(mx.float32), dtype=np.float64) / temperature
    out = []
    for j, tok in enumerate(completion):
        row = logits[len(prompt) - 1 + j]
        out.append(row[tok] - np.log(np.exp(row - row.max()).sum()) - row.max())
    return np.array(out)


def test_completion_log_probs_match_unpadded_brute_force():
    model = tiny_llama()
    apply_lora(model, LoraConfig(rank=4))
    randomize_b(model)
    rng = np.random.default_rng(3)
    prompts = [rng.integers(0, VOCAB, n).tolist() for n in (5, 11, 3)]
    completions = [rng.integers(0, VOCAB, n).tolist() for n in (7, 2, 9)]
    batch = pack_batch(prompts, completions, [[0.0] * len(c) for c in completions], pad_id=0)
    assert batch.tokens.shape[1] % 32 == 0 and batch.mask.shape[1] % 32 == 0
    logps, _ = completion_log_probs(
        model, batch.tokens, batch.prompt_lens, batch.num_positions, 0.7
    )
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        np.testing.assert_allclose(
            np.array(logps[i, : len(c)]), brute_force_logps(model, p, c, 0.7), atol=1e-4
        )
    np.testing.assert_array_equal(np.array(batch.mask.sum(1)), [7, 2, 9])


def test_k3_kl_is_zero_with_zero_adapters_and_positive_after():
    model = tiny_llama()
    apply_lora(model, LoraConfig(rank=4))  # B = 0: the policy equals the reference
    rng = np.random.default_rng(1)
    batch = pack_batch(
        [list(rng.integers(0, VOCAB, 6))] * 2,
        [list(rng.integers(0, VOCAB, 5))] * 2,
        [[0.0] * 5] * 2,
    )
    args = (batch.tokens, batch.prompt_lens, batch.num_positions)
    pol, _ = completion_log_probs(model, *args)
    with adapters_disabled(model):
        ref, _ = completion_log_probs(model, *args)
    assert float(((k3_kl(pol, ref)) * batch.mask).sum()) == 0.0
    randomize_b(model)
    pol, _ = completion_log_probs(model, *args)
    assert float((k3_kl(pol, ref) * batch.mask).sum()) > 0.0


def test_only_adapters_are_trainable():
    model = tiny_llama()
    apply_lora(model, LoraConfig(rank=2))
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert trainable and all(k.endswith(("lora_a", "lora_b")) for k in trainable)


def test_batching_helpers():
    assert [round_up(n) for n in (0, 1, 32, 33)] == [32, 32, 32, 64]
    batch = pack_batch(
        [[1, 2]] * 4, [[3], [4, 5], [6], [7]], [[1.0], [2.0, 3.0, 9.0], [4.0], [5.0]]
    )
    np.testing.assert_array_equal(np.array(batch.advantages[1, :3]), [2.0, 3.0, 0.0])
    parts = micro_batches(batch, 2)
    assert [p.size for p in parts] == [2, 2]
    np.testing.assert_array_equal(np.array(parts[1].tokens[0, :3]), [1, 2, 6])
    with pytest.raises(ValueError):
        micro_batches(batch, 3)
