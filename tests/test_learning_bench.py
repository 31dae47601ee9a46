"""The learning bench's statistics and summary (bench/learning_stats.py, bench/learning.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import learning_stats as S

finite = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False)


def test_curve_summaries_by_hand():
    rewards = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert S.trailing_mean(rewards, 1, 3) == pytest.approx(0.1)
    assert S.trailing_mean(rewards, 5, 3) == pytest.approx(0.4)
    assert S.smooth(rewards, 2) == pytest.approx([0.1, 0.15, 0.25, 0.35, 0.45])
    assert S.steps_to_target(rewards, 0.3, 3) == 4  # mean(0.2, 0.3, 0.4)
    assert S.steps_to_target(rewards, 0.15, 3) == 3  # never before a full window
    assert S.steps_to_target(rewards, 0.9, 3) is None
    assert S.auc(rewards) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        S.auc([])


def test_paired_difference_of_a_constant_shift_has_no_width():
    a = [0.5, 0.6, 0.7, 0.4]
    mean, lo, hi = S.paired_diff_ci([x + 0.05 for x in a], a)
    assert mean == pytest.approx(0.05) and lo == pytest.approx(0.05) and hi == pytest.approx(0.05)
    with pytest.raises(ValueError):
        S.paired_diff_ci([1.0], [1.0, 2.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=1, max_size=12))
def test_bootstrap_interval_brackets_the_mean(values):
    mean, lo, hi = S.bootstrap_mean_ci(values, n_resamples=500)
    assert mean == pytest.approx(float(np.mean(values)))
    assert lo - 1e-12 <= mean <= hi + 1e-12
    assert min(values) - 1e-12 <= lo and hi <= max(values) + 1e-12


def test_t_interval_matches_the_t_table():
    # n = 5: t(0.975, 4) = 2.776; sd of 1..5 = 1.5811
    half = S.t_ci_halfwidth([1, 2, 3, 4, 5])
    assert half == pytest.approx(2.776 * 1.5811 / math.sqrt(5), rel=0.02)
    assert S.t_ci_halfwidth([3.0]) == 0.0


def test_curve_bands_of_identical_curves_have_no_width():
    c = [0.2, 0.4, 0.6, 0.8]
    bands = S.curve_bands([c, c, c], window=2)
    assert bands["step"] == [1, 2, 3, 4]
    assert bands["mean"] == pytest.approx([0.2, 0.3, 0.5, 0.7])
    assert bands["low"] == pytest.approx(bands["mean"]) and bands["high"] == pytest.approx(
        bands["mean"]
    )
    cut = S.curve_bands([c, c[:3]], window=1)  # cut to the shortest curve
    assert cut["step"] == [1, 2, 3]


def test_step_noise_recovers_the_sampling_noise_and_ignores_seed_offsets():
    rng = np.random.default_rng(0)
    trend = 0.4 + 0.005 * np.arange(80)
    curves = [trend + offset + rng.normal(0, 0.1, 80) for offset in (-0.2, 0.0, 0.3, 0.1)]
    assert S.step_noise(curves) == pytest.approx(0.1, rel=0.12)


def test_seeds_needed_by_hand():
    # ((1.95996 + 0.84162) * 1 / 1)^2 = 7.85 -> 8 seeds
    assert S.seeds_needed(1.0, 1.0) == 8
    assert S.seeds_needed(0.1, 1.0) == 2  # never fewer than two
    assert S.seeds_needed(2.0, 1.0) == 32  # 4 x 7.85 = 31.4 -> 32
    with pytest.raises(ValueError):
        S.seeds_needed(1.0, 0.0)


def test_power_plan_needs_fewer_seeds_with_more_steps():
    rng = np.random.default_rng(1)
    curves = [list(0.5 + rng.normal(0, 0.15, 30) + rng.normal(0, 0.01)) for _ in range(4)]
    aucs = [S.auc(c) for c in curves]
    plan = S.power_plan({"grpo": aucs}, {"grpo": curves}, "grpo", start_reward=0.45)
    gain = plan["seeds_needed"]["relative_gain"]
    assert gain["20"] >= gain["40"] >= gain["100"]
    assert plan["deltas"]["relative_auc"] == pytest.approx(0.25 * np.mean(aucs))
    assert plan["pilot_steps"] == 30 and plan["pilot_seeds"] == 4


def _run(variant, seed, rewards, test_reward=None):
    test = None
    if test_reward is not None:
        test = {
            "reward": test_reward,
            "bm25": test_reward / 2,
            "format_rate": 1.0,
            "distinct_word_ratio": 1.0,
            "answer_words": 4.0,
        }
    algorithm = "grpo" if variant == "grpo" else "ospo"
    return {"variant": variant, "algorithm": algorithm, "seed": seed, "rewards": rewards,
            "step_time_s": 1.0, "test": test}  # fmt: skip


def test_summary_pairs_seeds_and_names_the_issue_keys():
    from bench.learning import summarize

    runs = [
        _run("grpo", 0, [0.4, 0.5, 0.6], 0.5),
        _run("grpo", 1, [0.3, 0.4, 0.5], 0.4),
        _run("ospo-best", 0, [0.5, 0.6, 0.7], 0.6),
        _run("ospo-best", 1, [0.4, 0.5, 0.6], 0.5),
        _run("ospo-best", 2, [0.9, 0.9, 0.9], 0.9),  # no GRPO partner: not in the pairing
    ]
    args = SimpleNamespace(window=2, target=0.55, target_gain=0.05, steps=3)
    out = summarize(runs, args, start={"reward": 0.3, "bm25": 0.1, "raw_query": {"reward": 0.2}})
    assert out["algorithms"] == ["grpo", "ospo-best"]
    assert out["auc"]["grpo"] == {"0": pytest.approx(0.5), "1": pytest.approx(0.4)}
    assert out["diff_auc"]["ospo-best"]["mean"] == pytest.approx(0.1)
    assert out["diff_auc"]["ospo-best"]["seeds"] == 2
    assert out["diff_auc_ci95"]["ospo-best"] == pytest.approx([0.1, 0.1])
    assert out["heldout"]["grpo"]["reward"][0] == pytest.approx(0.45)
    assert out["raw_query_heldout"] == {"reward": 0.2}
    # steps to 0.55 over a 2-step mean: grpo seed 0 at step 3 (0.55), seed 1 never
    assert out["per_variant"]["grpo"]["steps_to_target"] == [3, None]
    assert out["power"]["pilot_seeds"] == 2


def test_pairing_cancels_the_prompt_difficulty_shared_by_a_seed():
    rng = np.random.default_rng(2)
    prompts = rng.normal(0, 0.2, 50)  # each step's prompts: shared by both runs of a seed
    a = [list(0.5 + prompts + rng.normal(0, 0.02, 50))]
    b = [list(0.45 + prompts + rng.normal(0, 0.02, 50))]
    assert S.paired_step_noise(a, b) == pytest.approx(0.02 * math.sqrt(2), rel=0.25)
    other_seed = list(0.5 + rng.normal(0, 0.2, 50) + rng.normal(0, 0.02, 50))  # other prompts
    assert S.step_noise([a[0], other_seed]) > 5 * S.paired_step_noise(a, b)
    plan = S.power_plan(
        {"grpo": [S.auc(b[0])], "ospo": [S.auc(a[0])]},
        {"grpo": b, "ospo": a},
        "grpo",
        start_reward=0.4,
    )
    assert not plan["seed_level_known"]  # one seed each: a lower bound
    paired, unpaired = plan["seeds_needed_paired"]["ospo"], plan["seeds_needed"]
    assert paired["relative_gain"]["20"] <= unpaired["relative_gain"]["20"]


def test_choice_curves_by_hand(tmp_path):
    import json

    from bench.learning import choice_curves, named_phrases

    assert named_phrases("<answer>Mesh, foam,</answer> x") == ["mesh", "foam"]
    hidden = {"t1": {"category": "running shoes", "use": "trail running", "material": "mesh"}}
    rows = [
        {
            "step": 1,
            "task_id": "t1",
            "completion": "<answer>trail running, foam</answer>",
            "segments": [[8, 21], [23, 27]],
            "owen": [0.3, 0.1],
        },  # foam: not listed, not judged
        {
            "step": 1,
            "task_id": "t1",
            "completion": "<answer>road running, trail running",
            "segments": [[8, 20], [22, 35]],
            "owen": [0.2, 0.4],
        },  # road running: wrong sign
        {"step": 1, "task_id": "t1", "completion": "<answer>mesh, trail running, a, b"},
        {"step": 2, "task_id": "t1", "completion": "<answer></answer>"},
        {"step": 2, "task_id": "other", "completion": "<answer>mesh</answer>"},  # not counted
    ]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = choice_curves(path, hidden)
    assert c["right_precision"] == pytest.approx([(0.5 + 0.5 + 0.5) / 3, 0.0])
    assert c["right_recall"] == pytest.approx([(0.5 + 1.0 + 0.5) / 3, 0.0])
    assert c["named"] == pytest.approx([(2 + 4 + 2) / 3, 0.0])
    assert c["closed"] == pytest.approx([1 / 3, 1.0])
    assert c["repetition_rate"] == pytest.approx([0.25 / 3, 0.0])  # "running" twice in row 2
    assert c["credit_sign_accuracy"] == pytest.approx([2 / 3])  # trail +, trail +, road + (wrong)


def test_power_plan_has_no_gain_target_when_the_baseline_did_not_gain():
    curves = [[0.5, 0.4, 0.45, 0.5], [0.3, 0.35, 0.3, 0.4]]
    aucs = [S.auc(c) for c in curves]
    plan = S.power_plan({"grpo": aucs}, {"grpo": curves}, "grpo", start_reward=0.9)
    assert "relative_gain" not in plan["deltas"] and "relative_gain" not in plan["seeds_needed"]
    assert plan["seed_level_known"]


def test_paired_plan_ignores_the_seed_spread_that_pairing_cancels():
    rng = np.random.default_rng(3)
    grpo = [list(0.3 + 0.2 * s + rng.normal(0, 0.1, 20)) for s in range(3)]  # seeds differ a lot
    ospo = [list(np.add(c, 0.05)) for c in grpo]  # a constant paired gain
    aucs = {"grpo": [S.auc(c) for c in grpo], "ospo": [S.auc(c) for c in ospo]}
    plan = S.power_plan(aucs, {"grpo": grpo, "ospo": ospo}, "grpo", start_reward=0.2)
    assert plan["seed_level_sd"] > 0.1
    assert plan["paired_seed_level_sd"]["ospo"] == pytest.approx(0, abs=1e-9)
    assert plan["paired_step_noise_sd"]["ospo"] == pytest.approx(0.0, abs=1e-12)
    assert plan["seeds_needed_paired"]["ospo"]["relative_auc"]["20"] == 2
    assert plan["seeds_needed"]["relative_auc"]["20"] > 2


def test_rl_pool_and_warm_up_tasks_are_disjoint(tmp_path):
    from bench.learning import split_train
    from ospo_mlx.errors import OspoError

    data = tmp_path / "data"
    data.mkdir()
    lines = [f'{{"id": "t{i}"}}' for i in range(5)]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    rl, sft = split_train(SimpleNamespace(rl_tasks=2), data, tmp_path / "out")
    assert rl.read_text(encoding="utf-8").splitlines() == lines[:2]
    assert sft.read_text(encoding="utf-8").splitlines() == lines[2:]
    assert split_train(SimpleNamespace(rl_tasks=0), data, tmp_path / "out") == (
        data / "train.jsonl",
        data / "train.jsonl",
    )
    with pytest.raises(OspoError, match="leaves no warm-up task"):
        split_train(SimpleNamespace(rl_tasks=5), data, tmp_path / "out")


def test_default_target_is_the_raw_query_on_the_trained_prompts():
    from bench.learning import summarize

    runs = [_run("grpo", 0, [0.2, 0.6, 0.7], 0.5), _run("ospo-best", 0, [0.2, 0.4, 0.8], 0.6)]
    start = {"reward": 0.3, "bm25": 0.1, "trained": {"reward": 0.2, "raw_query": {"reward": 0.5}}}
    args = SimpleNamespace(window=1, target=None, target_gain=None, steps=3)
    out = summarize(runs, args, start=start)
    assert out["target"] == pytest.approx(0.5)
    assert out["per_variant"]["grpo"]["steps_to_target"] == [2]
    assert out["per_variant"]["ospo-best"]["steps_to_target"] == [3]
    assert out["raw_query_trained_prompts"] == {"reward": 0.5}
    # an explicit gain still sets target = start + gain (start: first-window mean, 0.2)
    args.target_gain = 0.1
    assert summarize(runs, args, start=start)["target"] == pytest.approx(0.3)
