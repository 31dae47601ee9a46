"""Micro-batched updates equal the whole batch's; the shared compiled step keeps dropout random."""

from __future__ import annotations

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten
from test_policy import VOCAB, randomize_b, tiny_llama

from ospo_mlx.config import LoraConfig, OptimConfig, load_config
from ospo_mlx.errors import ConfigError
from ospo_mlx.train.batching import (
    MICRO_MULTIPLE,
    length_sorted_micro_batches,
    pack_batch,
    round_up,
)
from ospo_mlx.train.loss import LOSS_TYPES
from ospo_mlx.train.policy import (
    PolicyUpdate,
    adapter_weights,
    apply_lora,
    build_optimizer,
    micro_batch_rows,
)
from ospo_mlx.train.sft import SFTConfig, sft_step

ROWS = 8
LR = 0.5  # large, so the update is far above float round-off


def skewed_batch(seed: int = 0, grouped: bool = False):
    """8 completions of very different lengths (so token shares differ per micro-batch), with
    pi_old and reference log-probs away from the policy's (so clipping and KL are non-zero).
    `grouped`: two prompts (lengths 7 and 19, so left padding differs) of 4 completions each,
    interleaved, as GRPO groups are after a shuffle."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, VOCAB, int(rng.integers(3, 9))).tolist() for _ in range(ROWS)]
    if grouped:
        two = [rng.integers(1, VOCAB, n).tolist() for n in (7, 19)]
        prompts = [two[i % 2] for i in range(ROWS)]
    lengths = [1, 2, 3, 5, 8, 13, 21, 30]
    comps = [rng.integers(0, VOCAB, n).tolist() for n in lengths]
    advs = [rng.normal(size=n).tolist() for n in lengths]
    batch = pack_batch(prompts, comps, advs)
    shape = batch.mask.shape
    batch.old_logps = mx.array(rng.normal(-4.6, 0.3, size=shape).astype(np.float32))
    batch.ref_logps = mx.array(rng.normal(-4.6, 0.3, size=shape).astype(np.float32))
    return batch


def run_update(micro: int, accum: int = 1, use_old: bool = True, grouped: bool = False, **options):
    """One update on a fresh policy; returns (metrics, gradient applied, adapters, logps)."""
    model = tiny_llama(0)
    apply_lora(model, LoraConfig(rank=4), seed=0)
    randomize_b(model)  # B = 0 would leave A without gradient
    cfg = OptimConfig(
        learning_rate=LR, steps=4, max_grad_norm=None, micro_batch_size=micro,
        gradient_accumulation_steps=accum, **options,
    )  # fmt: skip
    # SGD: the adapters move by exactly -lr * gradient, so they check what apply() received.
    update = PolicyUpdate(
        model, optim.SGD(learning_rate=LR), cfg, temperature=1.0, max_completion_length=32
    )
    seen = {}
    apply = update.step.apply

    def spy(acc, divisor=1.0):
        seen.update({k: np.array(v) / divisor for k, v in tree_flatten(acc)})
        return apply(acc, divisor)

    update.step.apply = spy
    batch = skewed_batch(grouped=grouped)
    rows = update.micro_rows(batch)
    if (ROWS // accum) % micro == 0:  # per-row micro-batches: a divisor of the part's rows
        assert rows == min(micro, ROWS // accum)
    out = update(batch, use_old_logps=use_old)
    if update.share_prompt and grouped:  # one prompt per micro-batch, near-equal pieces
        group = ROWS // accum // 2
        pieces = -(-group // min(micro, group))
        assert update.last_micro_rows == -(-group // pieces)
    weights = {k: np.array(v) for k, v in adapter_weights(model).items()}
    return out.metrics, seen, weights, np.array(out.logps)


def assert_same(full, micro, rtol=1e-5, atol=1e-6, grouped=False):
    (m1, g1, w1, l1), (m2, g2, w2, l2) = full, micro
    assert m1.keys() == m2.keys()
    for key in m1:
        np.testing.assert_allclose(m2[key], m1[key], rtol=rtol, atol=atol, err_msg=key)
    for key in g1:
        # Summation order differs: tolerance relative to the tensor's scale (cancellation).
        scale = float(np.abs(g1[key]).max())
        np.testing.assert_allclose(g2[key], g1[key], rtol=1e-4, atol=1e-5 * scale, err_msg=key)
    # Plain SGD (AdamW's first step, g / |g|, would blow round-off in near-zero entries up).
    for key in w1:
        step = LR * float(np.abs(g1[key]).max())  # the largest move: tolerance relative to it
        np.testing.assert_allclose(w2[key], w1[key], rtol=rtol, atol=1e-5 * step, err_msg=key)
    real = np.array(skewed_batch(grouped=grouped).mask) > 0  # padding has no log-prob
    np.testing.assert_allclose(l2[real], l1[real], rtol=rtol, atol=atol)


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_equal_the_full_batch(loss_type, beta):
    full = run_update(ROWS, loss_type=loss_type, beta=beta, epsilon=0.1)
    m = full[0]
    # The comparison is meaningful: the batch clips, has KL and a non-zero gradient everywhere.
    assert m["clip_ratio/region_mean"] > 0 and m["kl"] > 0
    assert all(np.abs(g).max() > 0 for g in full[1].values())
    for micro in (1, 2, 4):
        assert_same(full, run_update(micro, loss_type=loss_type, beta=beta, epsilon=0.1))


@pytest.mark.parametrize("beta", [0.0, 0.05])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_shared_prompt_update_equals_the_per_row_update(loss_type, beta):
    # The prompt runs once per micro-batch for its completions (left-padded, broadcast keys and
    # values): loss, metrics, gradient, adapters and log-probs equal every row's own forward.
    options = dict(loss_type=loss_type, beta=beta, epsilon=0.1)
    per_row = run_update(ROWS, grouped=True, share_prompt=False, **options)
    assert per_row[0]["clip_ratio/region_mean"] > 0 and per_row[0]["kl"] > 0
    for micro in (1, 3, 4):
        shared = run_update(micro, grouped=True, share_prompt=True, **options)
        assert_same(per_row, shared, grouped=True)
    parts = run_update(2, accum=2, grouped=True, share_prompt=True, **options)
    assert_same(
        run_update(4, accum=2, grouped=True, share_prompt=False, **options), parts, grouped=True
    )


def test_prompt_sharing_is_off_where_it_cannot_apply():
    model = tiny_llama(0)
    apply_lora(model, LoraConfig(rank=4), seed=0)
    opt = optim.SGD(learning_rate=LR)

    def sharing(**options):
        cfg = OptimConfig(steps=1, **options)
        return PolicyUpdate(model, opt, cfg, temperature=1.0, max_completion_length=8).share_prompt

    assert sharing() and not sharing(share_prompt=False)
    assert not sharing(grad_checkpoint=True)  # mlx-lm's checkpointed blocks take no cache
    # A sliding window (the shared cache has none) turns it off unless every layer is full.
    model.args.sliding_window = 4
    model.args.layer_types = None
    assert not sharing()
    model.args.layer_types = ["sliding_attention"] + ["full_attention"] * 2
    assert not sharing()
    model.args.layer_types = ["full_attention"] * 3
    assert sharing()


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_inside_accumulation_parts_equal_the_parts_whole(loss_type):
    # gradient_accumulation_steps keeps TRL's per-part normalization; micro-batching must not
    # change it.
    whole = run_update(4, accum=2, loss_type=loss_type)
    assert_same(whole, run_update(1, accum=2, loss_type=loss_type))


def test_on_policy_first_iteration_is_unchanged_by_micro_batching():
    full = run_update(ROWS, use_old=False)
    assert full[0]["clip_ratio/region_mean"] == 0.0
    assert_same(full, run_update(2, use_old=False))


def test_normalizers_are_what_make_micro_batches_exact():
    # Without the whole batch's counts a micro-batch's loss is its own mean, not its share.
    from ospo_mlx.train.loss import aggregate

    rng = np.random.default_rng(0)
    per_token = mx.array(rng.normal(size=(4, 6)).astype(np.float32))
    mask = mx.array((np.arange(6)[None, :] < np.array([[1], [2], [5], [6]])).astype(np.float32))
    for loss_type in LOSS_TYPES:
        whole = aggregate(per_token, mask, loss_type, 6).item()
        tokens, parts = mask.sum(), [(0, 1), (1, 4)]
        shares = [
            aggregate(per_token[a:b], mask[a:b], loss_type, 6, tokens, 4).item() for a, b in parts
        ]
        assert sum(shares) == pytest.approx(whole, rel=1e-6)
        naive = sum(aggregate(per_token[a:b], mask[a:b], loss_type, 6).item() for a, b in parts)
        assert naive != pytest.approx(whole, rel=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 64),
    seq=st.integers(1, 4096),
    micro=st.integers(0, 80),
    budget=st.integers(1, 8192),
)
def test_micro_batch_rows_divides_and_respects_the_budget(rows, seq, micro, budget):
    r = micro_batch_rows(rows, seq, micro, budget)
    assert 1 <= r <= rows and rows % r == 0
    cap = micro if micro > 0 else max(1, budget // seq)
    assert r <= max(cap, 1)
    # the largest such divisor
    assert all(rows % d for d in range(r + 1, min(cap, rows) + 1))


def test_negative_micro_batch_size_is_a_config_error(repo_root):
    with pytest.raises(ConfigError, match="micro_batch_size"):
        load_config(repo_root / "configs" / "tiny.yaml", ["optim.micro_batch_size=-1"])


# ----------------------------------------------------------------------------- SFT step


def sft_losses(dropout: float, compile: bool = True) -> list[float]:
    model = tiny_llama(0)
    apply_lora(model, LoraConfig(rank=4, dropout=dropout), seed=0)
    randomize_b(model, seed=3)  # dropout on x only shows through a non-zero B
    cfg = SFTConfig(steps=3, batch_size=4, learning_rate=1e-3)
    step = sft_step(model, build_optimizer(OptimConfig(), 3), cfg, compile=compile)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, VOCAB, 6).tolist() for _ in range(4)]
    targets = [rng.integers(0, VOCAB, 5).tolist() for _ in range(4)]
    batch = pack_batch(prompts, targets, [[1.0] * 5] * 4)
    model.train()
    out = []
    for _ in range(3):  # same weights and inputs each call: only the dropout mask can differ
        loss, _, acc = step.accumulate(step.zeros(), batch.tokens, batch.prompt_lens, batch.mask)
        mx.eval(step.state, loss, acc)
        out.append(loss.item())
    return out


def test_lora_dropout_draws_a_new_mask_on_every_compiled_sft_call():
    losses = sft_losses(dropout=0.5)
    assert len(set(losses)) == 3, losses


def test_without_dropout_compiled_sft_calls_are_deterministic():
    losses = sft_losses(dropout=0.0)
    assert len(set(losses)) == 1, losses
    np.testing.assert_allclose(sft_losses(0.0, compile=False)[0], losses[0], rtol=1e-6)


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 80), st.integers(1, 64)), min_size=1, max_size=40),
    rows=st.integers(1, 8),
)
def test_length_sorted_micro_batches_cover_every_row_once_and_hold_it(lengths, rows):
    prompts = np.array([p for p, _ in lengths])
    comps = np.array([c for _, c in lengths])
    seq, width = round_up(int((prompts + comps).max())), round_up(int(comps.max()))
    groups = length_sorted_micro_batches(prompts, comps, rows, seq, width)
    seen = np.concatenate([idx for idx, _, _ in groups])
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    totals = prompts + comps
    assert list(totals[seen]) == sorted(totals)  # short rows together
    for idx, length, w in groups:
        assert len(idx) <= rows
        assert totals[idx].max() <= length <= seq and comps[idx].max() <= w <= width
        assert length % MICRO_MULTIPLE == 0 or length == seq


def test_take_keeps_rows_whole_and_in_the_given_order():
    batch = pack_batch([[1, 2], [3], [4, 5, 6]], [[7], [8, 9], [10]], [[1.0], [2.0, 3.0], [4.0]])
    part = batch.take([2, 0], seq_len=4, width=1)
    np.testing.assert_array_equal(np.array(part.tokens), [[4, 5, 6, 10], [1, 2, 7, 0]])
    np.testing.assert_array_equal(np.array(part.prompt_lens), [3, 2])
    np.testing.assert_array_equal(np.array(part.advantages), [[4.0], [1.0]])
