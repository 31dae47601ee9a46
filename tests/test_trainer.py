"""The compiled update, checkpoints/resume and the end-to-end trainer on the tiny model."""

from __future__ import annotations

import json

import ospo_mlx

# isort: split
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten
from test_policy import VOCAB, tiny_llama

from ospo_mlx.config import LoraConfig, OptimConfig
from ospo_mlx.train import checkpoint as ckpt
from ospo_mlx.train.batching import pack_batch
from ospo_mlx.train.policy import (
    PolicyUpdate,
    adapter_config,
    adapter_weights,
    apply_lora,
    build_optimizer,
    lora_modules,
)
from ospo_mlx.train.runlog import RunLog, read_jsonl
from ospo_mlx.train.trainer import sanitize_rewards, token_advantages, zero_std_groups


def random_batch(seed: int = 0, n: int = 4):
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, VOCAB, int(rng.integers(3, 9))).tolist() for _ in range(n)]
    comps = [rng.integers(0, VOCAB, int(rng.integers(2, 12))).tolist() for _ in range(n)]
    advs = [rng.normal(size=len(c)).tolist() for c in comps]
    return pack_batch(prompts, comps, advs)


def make_policy(seed=0, lora_seed=0, **optim):
    model = tiny_llama(seed)
    apply_lora(model, LoraConfig(rank=4), seed=lora_seed)
    cfg = OptimConfig(**{"learning_rate": 1e-2, "steps": 10, **optim})
    opt = build_optimizer(cfg, cfg.steps * cfg.num_iterations)
    return model, opt, cfg


def test_compiled_update_moves_lora_b_and_matches_uncompiled():
    results = {}
    for compiled in (True, False):
        model, opt, cfg = make_policy(gradient_accumulation_steps=2)
        assert all(float(mx.abs(m.lora_b).max()) == 0.0 for _, m in lora_modules(model))
        update = PolicyUpdate(
            model, opt, cfg, temperature=1.0, max_completion_length=16, compile=compiled
        )
        out = update(random_batch())
        # first iteration is on-policy: ratio exactly 1, nothing clipped
        assert out.metrics["clip_ratio/region_mean"] == 0.0
        assert out.metrics["grad_norm"] > 0
        results[compiled] = adapter_weights(model)
    bs = [v for k, v in results[True].items() if k.endswith("lora_b")]
    assert all(float(mx.abs(b).max()) > 0 for b in bs), "gradients must reach every LoRA B"
    for k, v in results[True].items():
        np.testing.assert_allclose(np.array(v), np.array(results[False][k]), atol=1e-5)


def test_gradient_accumulation_equals_one_big_batch():
    weights = {}
    for accum in (1, 2, 4):
        model, opt, cfg = make_policy(
            gradient_accumulation_steps=accum, loss_type="dapo", max_grad_norm=None
        )
        PolicyUpdate(model, opt, cfg, temperature=1.0, max_completion_length=16)(random_batch())
        weights[accum] = adapter_weights(model)
    for k in weights[1]:
        for accum in (2, 4):
            np.testing.assert_allclose(
                np.array(weights[accum][k]), np.array(weights[1][k]), atol=2e-5
            )


def test_second_iteration_clips_against_pi_old():
    model, opt, cfg = make_policy(num_iterations=3, epsilon=0.01, learning_rate=5e-2)
    update = PolicyUpdate(model, opt, cfg, temperature=1.0, max_completion_length=16)
    batch = random_batch()
    first = update(batch, use_old_logps=False)
    batch.old_logps = first.logps
    later = [update(batch).metrics["clip_ratio/region_mean"] for _ in range(2)]
    assert first.metrics["clip_ratio/region_mean"] == 0.0
    assert max(later) > 0.0  # the policy moved beyond 1 +/- 0.01 on some tokens


def test_checkpoint_roundtrip_restores_adapters_optimizer_and_rng(tmp_path):
    model, opt, cfg = make_policy()
    update = PolicyUpdate(model, opt, cfg, temperature=1.0, max_completion_length=16)
    update(random_batch(1))
    mx.random.seed(123)
    ckpt.save_checkpoint(
        tmp_path,
        1,
        adapter_weights(model),
        adapter_config(model, LoraConfig(rank=4)),
        opt,
        {"epoch": 0},
    )
    expected_key = np.array(mx.random.state[0])
    update(random_batch(2))  # continue: this is what a resumed run must reproduce
    after = adapter_weights(model)

    model2, opt2, _ = make_policy(lora_seed=5)  # other LoRA init: the adapters must come from disk
    mx.random.seed(999)
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 1 and loaded.state["epoch"] == 0
    ckpt.restore(model2, opt2, loaded)
    np.testing.assert_array_equal(np.array(mx.random.state[0]), expected_key)
    PolicyUpdate(model2, opt2, cfg, temperature=1.0, max_completion_length=16)(random_batch(2))
    for k, v in adapter_weights(model2).items():
        np.testing.assert_allclose(np.array(v), np.array(after[k]), atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "step_000001").iterdir())
    assert files == [
        "adapter_config.json",
        "adapters.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left behind


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(ospo_mlx.errors.OspoError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_adapters_load_with_mlx_lm(tmp_path):
    from mlx_lm.tuner.utils import load_adapters

    model, _, _ = make_policy()
    for _, layer in lora_modules(model):
        layer.lora_b = mx.ones(layer.lora_b.shape) * 0.01
    lora = LoraConfig(rank=4)
    ckpt.save_adapters(tmp_path, adapter_weights(model), adapter_config(model, lora))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["lora_parameters"]["rank"] == 4
    fresh = load_adapters(tiny_llama(0), str(tmp_path))
    tokens = mx.array([[1, 2, 3, 4]])
    np.testing.assert_allclose(np.array(fresh(tokens)), np.array(model(tokens)), atol=1e-5)


def test_runlog_truncates_steps_after_the_resumed_checkpoint(tmp_path):
    with RunLog(tmp_path, "a: 1\n") as log:
        for step in (1, 2, 3):
            log.metrics({"step": step, "reward": float("nan") if step == 2 else 0.5})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "rew')  # a torn line from a hard kill
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[1]["reward"] is None
    with RunLog(tmp_path, "a: 1\n", resume_step=2) as log:
        assert log.dropped == 2
        log.metrics({"step": 3, "reward": 1.0})
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_reward_bookkeeping():
    rewards, bad = sanitize_rewards(np.array([0.5, np.nan, np.inf, 0.2]))
    assert bad == 2 and rewards.tolist() == [0.5, 0.0, 0.0, 0.2]
    assert zero_std_groups(np.array([1.0, 1.0, 0.0, 0.5]), 2).tolist() == [True, False]


def test_grpo_token_advantages_broadcast_and_ospo_uniform_equals_grpo():
    from ospo_mlx.attribution import credit

    class Cfg:
        advantage_mode, alpha, clip, format_tokens = "prop", 0.5, None, "floor"

    seq = np.array([1.5, -0.5, 0.0])
    lengths = [3, 1, 2]
    rewards = np.array([0.9, 0.1, 0.4])
    grpo = token_advantages("grpo", seq, [], lengths, rewards, Cfg)
    np.testing.assert_array_equal(grpo, [[1.5, 1.5, 1.5], [-0.5, 0, 0], [0, 0, 0]])
    # uniform attribution: equal Owen values give equal token weights -> exactly GRPO
    uniform = [
        credit.token_weights([(0, 9)], [(3 * t, 3 * t + 3) for t in range(n)], np.array([0.7]), 0.0)
        for n in lengths
    ]
    ospo = token_advantages("ospo", seq, uniform, lengths, rewards, Cfg)
    np.testing.assert_allclose(ospo, grpo, atol=1e-12)
    assert not np.allclose(
        token_advantages(
            "ospo", seq, [np.array([1.0, 0.0, 0.0]), np.ones(1), np.ones(2)], lengths, rewards, Cfg
        ),
        grpo,
    )


def test_trainable_parameters_are_only_lora():
    model, _, _ = make_policy()
    assert all(
        k.split(".")[-1] in {"lora_a", "lora_b"}
        for k, _ in tree_flatten(model.trainable_parameters())
    )


# ---------------------------------------------------------------------------- end to end (tiny model)

METRIC_KEYS = {
    "step", "reward", "reward_std", "frac_reward_zero_std", "kl", "entropy",
    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
    "completions/mean_length", "completions/min_length", "completions/max_length",
    "completions/clipped_ratio", "loss", "grad_norm", "learning_rate", "ndcg@10",
    "ospo/segments_mean", "ospo/coalitions", "ospo/no_answer_tags", "ospo/unclosed_answer",
    "ospo/format_zeroed", "ospo/unpaired_segments", "ospo/budget_raised", "ospo/exact_values",
    "ospo/surrogate_values",
    "ospo/credit_concentration",
    "completions/stopped_at_answer", "completions/after_answer", "reward/collapsed_repeats",
    "time/sample", "time/reward", "time/attribution", "time/update", "time/step",
    "tokens_per_second", "peak_memory_gb",
}  # fmt: skip
ROLLOUT_KEYS = {
    "step", "group", "member", "task_id", "prompt", "completion", "token_ids", "token_offsets",
    "reward", "advantage", "segments", "coalitions", "coalition_values", "owen",
    "token_weights", "token_advantages", "algorithm",
}  # fmt: skip


def tiny_config(repo_root, out, *overrides, **values):
    from ospo_mlx.config import load_config

    data = [
        f"data.catalog={repo_root}/data/demo/catalog.jsonl",
        f"data.train={repo_root}/data/demo/train.jsonl",
    ]
    return load_config(
        repo_root / "configs" / "tiny.yaml", [*data, *overrides], **{"run.out": str(out), **values}
    )


@pytest.fixture(scope="module")
def tiny_run(repo_root, tmp_path_factory):
    """An uninterrupted 3-step OSPO run of the tiny model, checkpointing every step."""
    from ospo_mlx.train.trainer import Trainer

    out = tmp_path_factory.mktemp("run") / "full"
    history = Trainer.from_config(tiny_config(repo_root, out, "optim.steps=3")).run()
    return out, history


def test_end_to_end_run_writes_a_valid_run_dir(tiny_run):
    out, history = tiny_run
    assert len(history) == 3
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for row in metrics:
        assert set(row) >= METRIC_KEYS, METRIC_KEYS - set(row)
    assert metrics[0]["clip_ratio/region_mean"] == 0.0  # num_iterations = 1: always on-policy
    rollouts = read_jsonl(out / "rollouts.jsonl")
    assert len(rollouts) == 3 * 2 * 2  # steps x prompts x generations
    for row in rollouts:
        assert set(row) == ROLLOUT_KEYS
        assert len(row["token_ids"]) == len(row["token_offsets"]) == len(row["token_advantages"])
        assert len(row["coalitions"]) == len(row["coalition_values"])
        assert len(row["owen"]) == len(row["segments"])
        # OSPO keeps each completion's mean token advantage at its sequence advantage; the
        # default clip (2 std) can only shrink it, never flip its sign.
        mean, adv = np.mean(row["token_advantages"]), row["advantage"]
        assert abs(mean) <= abs(adv) + 1e-6 and mean * adv >= 0
    assert (out / "config.yaml").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert {p.name for p in (out / "adapters").iterdir()} == {
        "adapters.safetensors",
        "adapter_config.json",
    }
    b = [
        v
        for k, v in mx.load(str(out / "adapters" / "adapters.safetensors")).items()
        if k.endswith("lora_b")
    ]
    assert b and all(
        float(mx.abs(x).max()) > 0 for x in b
    )  # the compiled step reached every adapter


def test_resume_continues_identically(tiny_run, repo_root, tmp_path):
    from ospo_mlx.train.trainer import Trainer

    full, _ = tiny_run
    out = tmp_path / "resumed"
    Trainer.from_config(tiny_config(repo_root, out, "optim.steps=3")).run(max_steps=2)  # "killed" after step 2
    resumed = Trainer.from_config(tiny_config(repo_root, out, "optim.steps=3"), resume=True)
    assert resumed.step == 2
    resumed.run()
    a = mx.load(str(full / "adapters" / "adapters.safetensors"))
    b = mx.load(str(out / "adapters" / "adapters.safetensors"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(np.array(b[k]), np.array(a[k]), atol=1e-5)
    ma, mb = read_jsonl(full / "metrics.jsonl"), read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in mb] == [1, 2, 3]
    assert mb[2]["reward"] == pytest.approx(ma[2]["reward"], abs=1e-9)
    ra = [r["completion"] for r in read_jsonl(full / "rollouts.jsonl") if r["step"] == 3]
    rb = [r["completion"] for r in read_jsonl(out / "rollouts.jsonl") if r["step"] == 3]
    assert ra == rb


def test_mlx_lm_loads_our_adapters(tiny_run):
    from mlx_lm import load

    from ospo_mlx.models.load import tiny_model_dir
    from ospo_mlx.train.policy import adapters_disabled

    out, _ = tiny_run
    model, _ = load(str(tiny_model_dir()), adapter_path=str(out / "adapters"))
    tokens = mx.array([[1, 2, 3, 4, 5]])
    adapted = model(tokens)
    with adapters_disabled(model):
        base = model(tokens)
    assert float(mx.abs(adapted - base).max()) > 0  # the trained adapters are applied


def test_compiled_and_uncompiled_trainers_agree(tiny_run, repo_root, tmp_path):
    """optim.compile=false trains the same adapters as the compiled default."""
    from ospo_mlx.train.trainer import Trainer

    full, _ = tiny_run  # the default: compiled
    out = tmp_path / "uncompiled"
    trainer = Trainer.from_config(tiny_config(repo_root, out, "optim.steps=3", "optim.compile=false"))
    assert not trainer.update.compiled
    trainer.run()
    a = mx.load(str(full / "adapters" / "adapters.safetensors"))
    b = mx.load(str(out / "adapters" / "adapters.safetensors"))
    for k in a:
        np.testing.assert_allclose(np.array(b[k]), np.array(a[k]), atol=1e-5)


def test_grpo_algorithm_broadcasts_the_sequence_advantage(repo_root, tmp_path):
    from ospo_mlx.train.trainer import Trainer

    out = tmp_path / "grpo"
    Trainer.from_config(tiny_config(repo_root, out, "optim.steps=1", algorithm="grpo")).run()
    for row in read_jsonl(out / "rollouts.jsonl"):
        assert row["algorithm"] == "grpo"
        assert row["token_advantages"] == [row["advantage"]] * len(row["token_ids"])
        assert row["segments"] is not None  # attributions are still logged for the inspector


def test_cli_bad_config_key_is_a_one_line_error(repo_root, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--config", "configs/tiny.yaml", "--set", "optim.stepz=3"],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == "error: unknown config key 'optim.stepz'; did you mean 'optim.steps'?\n"


def test_progress_prints_one_plain_line_per_step_without_a_tty():
    import io

    from rich.console import Console

    from ospo_mlx.ui.progress import TrainProgress, format_duration, trend

    buf = io.StringIO()
    console = Console(file=buf, width=300, force_terminal=False)
    metrics = {
        "reward": 0.25,
        "ndcg@10": 0.25,
        "time/step": 2.0,
        "time/sample": 1.0,
        "peak_memory_gb": 0.5,
    }
    with TrainProgress(3, 1, console=console, live=False) as progress:
        progress.update(2, metrics)
        progress.update(3, {**metrics, "reward": 0.5})
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("step 2/3 | reward 0.2500 | ndcg@10 0.2500")
    assert "sample 1.0" in lines[0] and "mem 0.50GB" in lines[0] and "eta" in lines[0]
    # several rewards in the sum: each one's mean; no retrieval reward: no ndcg@10
    from ospo_mlx.ui.progress import plain_line

    parts = {"reward": 0.5, "rewards/retrieval/mean": 0.4, "rewards/kw/mean": 0.2}
    assert "| retrieval 0.4000 | kw 0.2000 |" in plain_line(1, 3, parts, None)
    assert "ndcg" not in plain_line(1, 3, {"reward": 0.5, "rewards/kw/mean": 0.5}, None)
    assert "kw" not in plain_line(1, 3, {"reward": 0.5, "rewards/kw/mean": 0.5}, None)
    assert trend([0.1, 0.2, 0.3]) == "↑" and trend([0.3, 0.1]) == "↓" and trend([1.0]) == "·"
    assert format_duration(125) == "2m05s" and format_duration(3700) == "1h01m"
    # the live view renders without error too
    live = Console(file=io.StringIO(), width=120, force_terminal=True)
    with TrainProgress(3, console=live, live=True) as progress:
        progress.update(1, metrics)


def test_reused_rollouts_clip_and_kl_against_the_adapter_off_reference(repo_root, tmp_path):
    from ospo_mlx.train.trainer import Trainer

    overrides = (
        "optim.steps=1",
        "optim.num_iterations=3",
        "optim.beta=0.1",
        "optim.gradient_accumulation_steps=2",
    )
    (row,) = Trainer.from_config(tiny_config(repo_root, tmp_path / "iters", *overrides)).run()
    # iteration 1 is on-policy at the reference (B = 0); iterations 2-3 have moved away from both
    assert row["kl"] > 0 and row["clip_ratio/region_mean"] > 0
    assert all(np.isfinite(v) for v in row.values())


def test_kl_reference_is_the_policy_at_the_start_of_rl(repo_root, tmp_path):
    """After the warm-up, the first on-policy step sits at the reference: KL 0 (TRL's rule).

    With the old adapters-off reference the warmed-up policy started far from it (KL > 0).
    """
    import mlx.core as mx

    from ospo_mlx.train.trainer import Trainer

    out = tmp_path / "kl"
    overrides = ("optim.steps=1", "optim.beta=0.1", "sft.steps=3", "sft.learning_rate=0.05")
    trainer = Trainer.from_config(tiny_config(repo_root, out, *overrides))
    (row,) = trainer.run()
    assert abs(row["kl"]) < 1e-6
    warm = mx.load(str(out / "warmup" / "adapters.safetensors"))
    assert any(float(mx.abs(v).max()) > 0 for k, v in warm.items() if "lora_b" in k)
    # A resumed run takes the warm-up's adapters as its reference again.
    resumed = Trainer.from_config(
        tiny_config(repo_root, out, "optim.steps=2", *overrides[1:]), resume=True
    )
    for k, v in warm.items():
        np.testing.assert_array_equal(np.array(resumed.reference_adapters[k]), np.array(v))


def test_credit_metrics_and_no_coalitions_for_inactive_completions(tiny_run):
    out, history = tiny_run
    for row in history:
        assert row["ospo/unpaired_segments"] == 0  # every segment keeps its singleton pair
        assert 0.0 <= row["ospo/credit_concentration"] <= 1.0
    for row in read_jsonl(out / "rollouts.jsonl"):
        if row["reward"] == 0.0 or row["advantage"] == 0.0:
            assert row["coalitions"] == []  # uniform fallback: nothing evaluated


# ---------------------------------------------------------------------------- warm-up and init adapters


def test_warmup_runs_once_before_rl_and_seeds_model_adapters(repo_root, tmp_path):
    """sft.steps > 0 trains the format first (RUN/warmup/); model.adapters starts from them."""
    from ospo_mlx.train.policy import adapter_weights
    from ospo_mlx.train.trainer import Trainer

    out = tmp_path / "warm"
    trainer = Trainer.from_config(tiny_config(repo_root, out, "optim.steps=2", "sft.steps=3"))
    assert not trainer.warmed_up
    trainer.run(max_steps=1)
    assert trainer.warmed_up
    rows = read_jsonl(out / "warmup" / "sft_metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    warm = mx.load(str(out / "warmup" / "adapters.safetensors"))
    assert all(float(mx.abs(v).max()) > 0 for k, v in warm.items() if k.endswith("lora_b"))

    # Resuming skips the warm-up: the checkpoint already holds its effect.
    resumed = Trainer.from_config(tiny_config(repo_root, out, "optim.steps=2", "sft.steps=3"), resume=True)
    assert resumed.warmed_up and resumed.warm_up() is None
    resumed.run()
    assert len(read_jsonl(out / "warmup" / "sft_metrics.jsonl")) == 3

    # A new run started from the warm-up adapters holds exactly them before its first step.
    seeded_config = tiny_config(
        repo_root, tmp_path / "seeded", "optim.steps=1", f"model.adapters={out / 'warmup'}"
    )
    seeded = Trainer.from_config(seeded_config)
    for k, v in adapter_weights(seeded.model).items():
        np.testing.assert_array_equal(np.array(v), np.array(warm[k]))


def test_model_adapters_errors(repo_root, tmp_path):
    from ospo_mlx.errors import ConfigError
    from ospo_mlx.train.trainer import Trainer

    with pytest.raises(ConfigError, match=r"model\.adapters: .* is not a directory"):
        tiny_config(repo_root, tmp_path / "a", f"model.adapters={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="sft: steps must be >= 0"):
        tiny_config(repo_root, tmp_path / "a", "sft.steps=-1")
    other = tmp_path / "rank2"  # adapters of another LoRA shape are refused, naming the mismatch
    Trainer.from_config(tiny_config(repo_root, other, "optim.steps=1", "lora.rank=2")).run()
    with pytest.raises(ospo_mlx.errors.OspoError, match=r"lora_a has shape \(64, 2\)"):
        Trainer.from_config(tiny_config(repo_root, tmp_path / "b", f"model.adapters={other / 'adapters'}"))


@pytest.mark.parametrize("mode", ["sequence", "floor"])
def test_format_tokens_end_to_end(repo_root, tmp_path, mode):
    """sequence (default): tokens outside every segment get exactly A; floor (0): they get 0."""
    from ospo_mlx.attribution.credit import segment_token_mask
    from ospo_mlx.train.trainer import Trainer

    out = tmp_path / mode
    # Unclipped: the split keeps each completion's mean exactly.
    options = ("optim.steps=2", f"attribution.format_tokens={mode}", "attribution.clip=null")
    Trainer.from_config(tiny_config(repo_root, out, *options)).run()
    checked = 0
    for row in read_jsonl(out / "rollouts.jsonl"):
        if row["advantage"] == 0.0 or row["reward"] == 0.0 or not row["segments"]:
            continue  # no split to make: GRPO's uniform advantage
        inside = segment_token_mask(row["segments"], row["token_offsets"])
        adv = np.asarray(row["token_advantages"])
        expected = row["advantage"] if mode == "sequence" else 0.0
        np.testing.assert_allclose(adv[~inside], expected, atol=1e-12)
        assert np.mean(adv) == pytest.approx(row["advantage"], abs=1e-6)
        checked += int((~inside).any())
    assert checked > 0  # some completion had tokens outside its segments


@pytest.mark.parametrize("stop", [True, False])
def test_stop_at_answer_hands_the_closing_tag_to_the_sampler(repo_root, tmp_path, monkeypatch, stop):
    from ospo_mlx.train import rollout
    from ospo_mlx.train.trainer import Trainer

    seen = []
    real = rollout.sample_groups

    def spy(model, tok, prompts, config, **kw):
        seen.append(config.stop_strings)
        return real(model, tok, prompts, config, **kw)

    monkeypatch.setattr(rollout, "sample_groups", spy)
    cfg = tiny_config(
        repo_root, tmp_path / "run", "optim.steps=1", f"sampling.stop_at_answer={str(stop).lower()}"
    )
    trainer = Trainer.from_config(cfg)
    record = trainer.sample(1)
    assert seen == [(cfg.prompt.answer_tags[1],) if stop else ()]
    assert cfg.sampling.stop_strings == ()  # the run's config is left as written
    close = cfg.prompt.answer_tags[1]
    assert record.stopped_at_answer == [t.endswith(close) for t in record.texts]
    assert len(record.after_answer) == len(record.texts)
