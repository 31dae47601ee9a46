"""TRL's policy-update options, steps_per_generation, dynamic sampling and report_to, end to end
on the tiny model, and how OSPO's token advantages combine with each."""

from __future__ import annotations

import ospo_mlx  # noqa: F401  (BLAS before mlx)

# isort: split
import mlx.core as mx
import numpy as np
import pytest
from test_tracking import read_events
from test_trainer import tiny_config

from ospo_mlx.train.policy import adapter_weights
from ospo_mlx.train.runlog import read_jsonl
from ospo_mlx.train.tracking import tensorboard_tag


def run(repo_root, out, *overrides, **values):
    from ospo_mlx.train.trainer import Trainer

    trainer = Trainer.from_config(tiny_config(repo_root, out, *overrides, **values))
    return trainer, trainer.run()


def same_adapters(a, b, atol=1e-6) -> bool:
    wa, wb = adapter_weights(a.model), adapter_weights(b.model)
    return all(np.allclose(np.array(wa[k]), np.array(wb[k]), atol=atol) for k in wa)


def test_gspo_sequence_ratio_turns_ospo_credit_into_grpo(repo_root, tmp_path):
    """On-policy, the sequence ratio gives every token of a completion the same gradient weight,
    the mean of its token advantages, which OSPO keeps equal to A: OSPO + sequence trains exactly
    GRPO's adapters. sequence_token (GSPO-token) keeps OSPO's per-token credit."""
    grpo, _ = run(repo_root, tmp_path / "grpo", "optim.steps=1", algorithm="grpo")
    seq, _ = run(
        repo_root, tmp_path / "seq", "optim.steps=1", "optim.importance_sampling_level=sequence"
    )
    seq_tok, _ = run(
        repo_root,
        tmp_path / "st",
        "optim.steps=1",
        "optim.importance_sampling_level=sequence_token",
    )
    rows = read_jsonl(tmp_path / "st" / "rollouts.jsonl")
    assert any(np.ptp(r["token_advantages"]) > 1e-6 for r in rows)  # OSPO credit is not uniform
    assert same_adapters(seq, grpo, atol=1e-5)
    assert not same_adapters(seq_tok, grpo, atol=1e-5)


def test_importance_level_matters_only_off_policy(repo_root, tmp_path):
    """GRPO: token and sequence ratios train the same adapters on-policy, not once the update
    reuses rollouts (steps_per_generation 2: step 2 updates on rollouts of the step-1 policy)."""
    base = ("optim.steps=2", "optim.steps_per_generation=2")
    tok, _ = run(repo_root, tmp_path / "tok", *base, algorithm="grpo")
    seq, rows = run(
        repo_root, tmp_path / "seq", *base, "optim.importance_sampling_level=sequence",
        algorithm="grpo",
    )  # fmt: skip
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert not same_adapters(tok, seq, atol=1e-7)
    tok1, _ = run(repo_root, tmp_path / "tok1", "optim.steps=1", algorithm="grpo")
    seq1, _ = run(
        repo_root, tmp_path / "seq1", "optim.steps=1", "optim.importance_sampling_level=sequence",
        algorithm="grpo",
    )  # fmt: skip
    assert same_adapters(tok1, seq1, atol=1e-6)


def test_delta_bounds_reused_rollouts(repo_root, tmp_path):
    base = ("optim.steps=1", "optim.num_iterations=3", "optim.learning_rate=3e-3")
    plain, _ = run(repo_root, tmp_path / "plain", *base)
    loose, _ = run(repo_root, tmp_path / "loose", *base, "optim.delta=1e6")
    tight, rows = run(repo_root, tmp_path / "tight", *base, "optim.delta=1.01")
    assert same_adapters(plain, loose)  # a bound never reached changes nothing
    assert not same_adapters(plain, tight)  # iterations 2-3 move ratios past 1.01
    assert np.isfinite(rows[0]["loss"])


def test_masked_truncated_completions_contribute_nothing_whatever_their_credit(repo_root, tmp_path):
    from ospo_mlx.train.trainer import Trainer

    overrides = (
        "optim.steps=1", "optim.batch_size=4", "optim.num_generations=4",
        "optim.mask_truncated_completions=true",
    )  # fmt: skip
    trainers = [
        Trainer.from_config(tiny_config(repo_root, tmp_path / n, *overrides)) for n in ("a", "b")
    ]
    (part_a,), (part_b,) = (t.generate(1) for t in trainers)
    finished = np.array(part_a.batch.mask.sum(axis=1)) > 0
    assert 0 < finished.sum() < len(finished)  # both kinds in this batch
    lengths = [len(r["token_ids"]) for r in part_a.rollouts]
    np.testing.assert_array_equal(
        np.array(part_b.batch.mask.sum(axis=1))[finished], np.array(lengths)[finished]
    )
    assert part_a.metrics["completions/masked_truncated"] == (~finished).sum()
    # b: the truncated completions get wild token advantages; the update must not notice
    adv = np.array(part_b.batch.advantages)
    adv[~finished] = np.random.default_rng(0).normal(0, 1e3, adv[~finished].shape)
    part_b.batch.advantages = mx.array(adv.astype(np.float32))
    out_a = trainers[0].update(part_a.batch, use_old_logps=False)
    out_b = trainers[1].update(part_b.batch, use_old_logps=False)
    assert out_a.metrics["loss"] == pytest.approx(out_b.metrics["loss"], abs=1e-7)
    assert out_a.metrics["grad_norm"] > 0  # the finished ones did train
    assert same_adapters(*trainers, atol=0)
    # end to end: the step's metrics count them
    _, rows = run(repo_root, tmp_path / "e2e", *overrides)
    assert rows[0]["completions/masked_truncated"] == pytest.approx(
        16 * rows[0]["completions/clipped_ratio"]
    )


def test_top_entropy_quantile_end_to_end(repo_root, tmp_path):
    every, _ = run(repo_root, tmp_path / "all", "optim.steps=1")
    top, rows = run(
        repo_root, tmp_path / "top", "optim.steps=1", "optim.top_entropy_quantile=0.2",
        "optim.log_entropy=false",
    )  # fmt: skip
    assert np.isfinite(rows[0]["loss"]) and rows[0]["grad_norm"] > 0
    assert rows[0]["entropy"] == 0.0  # computed for the mask, not logged
    assert not same_adapters(every, top)


def test_dynamic_sampling_end_to_end(repo_root, tmp_path):
    overrides = (
        "optim.steps=2", "optim.dynamic_sampling=true", "optim.dynamic_sampling_max_draws=3",
    )  # fmt: skip
    trainer, rows = run(repo_root, tmp_path / "ds", *overrides)
    need = 2  # optim.batch_size in tiny.yaml
    for row in rows:
        drawn = row["dynamic_sampling/draws"] * need
        assert (
            drawn
            == need + row["dynamic_sampling/unused_groups"] + row["dynamic_sampling/dropped_groups"]
        )
        # only refilled groups can be flat
        assert row["frac_reward_zero_std"] * need == row["dynamic_sampling/refilled_groups"]
        if row["dynamic_sampling/draws"] < 3:
            assert row["frac_reward_zero_std"] == 0.0
    rollouts = read_jsonl(tmp_path / "ds" / "rollouts.jsonl")
    assert [r["step"] for r in rollouts] == [1] * 4 + [2] * 4
    plain, _ = run(repo_root, tmp_path / "plain", "optim.steps=2")
    drawn_total = sum(r["dynamic_sampling/draws"] for r in rows) * need
    n_tasks = len(plain.tasks)
    assert (trainer.epoch * n_tasks + trainer.position) == drawn_total
    assert (plain.epoch * n_tasks + plain.position) == 2 * need


def test_steps_per_generation_feeds_several_steps_from_one_pass(repo_root, tmp_path):
    trainer, rows = run(
        repo_root, tmp_path / "spg", "optim.steps=4", "optim.steps_per_generation=2"
    )
    assert [r["time/sample"] > 0 for r in rows] == [True, False, True, False]
    rollouts = read_jsonl(tmp_path / "spg" / "rollouts.jsonl")
    assert [r["step"] for r in rollouts] == [s for s in (1, 2, 3, 4) for _ in range(4)]
    assert trainer.epoch * len(trainer.tasks) + trainer.position == 4 * 2  # 4 steps x 2 prompts
    # steps 2 and 4 are updated off-policy (pi_old = the policy that sampled at steps 1, 3)
    assert all(np.isfinite(r["loss"]) for r in rows)
    # every step still holds one batch: its advantages were computed over the whole generation
    for step in (1, 3):
        gen = [r for r in rollouts if r["step"] in (step, step + 1)]
        assert len(gen) == 8


def test_report_to_tensorboard_end_to_end(repo_root, tmp_path):
    pytest.importorskip("tensorboardX")
    out = tmp_path / "tb"
    run(repo_root, out, "optim.steps=2", "run.report_to=tensorboard", "run.log_completions_steps=2")
    scalars, texts = read_events(out / "tensorboard")
    metrics = read_jsonl(out / "metrics.jsonl")
    for key in ("reward", "loss", "ndcg@10", "dynamic_sampling/draws"):
        tag = tensorboard_tag(key)  # ndcg@10 -> ndcg_10
        assert scalars[tag] == pytest.approx({m["step"]: m[key] for m in metrics}, rel=1e-6)
    assert set(texts) == {2} and "| step | group | prompt |" in texts[2]


def test_train_help_lists_the_trl_options(repo_root):
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--help"], cwd=repo_root, capture_output=True,
        text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for key in (
        "optim.importance_sampling_level", "optim.delta", "optim.mask_truncated_completions",
        "optim.top_entropy_quantile", "optim.steps_per_generation", "optim.dynamic_sampling",
        "optim.dynamic_sampling_max_draws", "run.report_to", "run.log_completions_steps",
    ):  # fmt: skip
        assert key in result.stdout, key


def test_dynamic_sampling_cap_refills_with_flat_groups(repo_root, tmp_path):
    """reward.missing_tags=zero: the tiny model never writes tags, so every group is flat; the
    filter draws up to the cap, then fills the batch with flat groups and counts them."""
    _, rows = run(
        repo_root, tmp_path / "flat", "optim.steps=1", "optim.dynamic_sampling=true",
        "optim.dynamic_sampling_max_draws=3", "reward.missing_tags=zero",
    )  # fmt: skip
    (row,) = rows
    assert row["dynamic_sampling/draws"] == 3
    assert row["dynamic_sampling/refilled_groups"] == 2  # optim.batch_size
    assert row["dynamic_sampling/dropped_groups"] == 3 * 2 - 2
    assert row["frac_reward_zero_std"] == 1.0 and row["loss"] == 0.0
