"""split_generation and step_metrics on hand-built records (no model): the slices a generation
feeding several optimizer steps is cut into, and the metrics each step reports."""

from __future__ import annotations

import numpy as np

from ospo_mlx.data.schema import Task
from ospo_mlx.train.attribute import Attribution
from ospo_mlx.train.phases import (
    CreditRecord,
    SampleRecord,
    ScoreRecord,
    UpdateRecord,
    split_generation,
    step_metrics,
)

G = 2  # completions per prompt


def records(world_size: int = 2):
    """Rank 0 of `world_size`: 4 prompts x G completions, one generation for 2 steps."""
    n = 8
    tasks = [Task(id=f"t{i // G}", kind="query_expansion", targets={}, query="q") for i in range(n)]
    sample = SampleRecord(
        indices=[10, 11, 12, 13], tasks=tasks, prompts=[[1], [2], [3], [4]],
        texts=[f"c{i}" for i in range(n)], ids=[[5] * (i + 1) for i in range(n)],
        offsets=[[(0, 1)] * (i + 1) for i in range(n)],
        finished=[True, False, True, True, True, True, False, False], seconds=3.0,
    )  # fmt: skip
    raw = np.array([1.0, 0.0, np.nan, 0.5, 0.2, 0.2, np.inf, 0.1])
    rewards = np.nan_to_num(raw, nan=0.0, posinf=0.0)
    other_rank = np.arange(n) + 100.0  # rank 1's rewards, gathered after this rank's
    all_rewards = np.concatenate([rewards, other_rank])[: n * world_size]
    flat = np.array([False, False, True, False, False, False, True, True])[: 4 * world_size]
    score = ScoreRecord(
        rewards=rewards, parts={"r": raw}, all_rewards=all_rewards, flat_groups=flat,
        advantages=np.arange(n, dtype=float), status=["ok"] * 7 + ["unclosed"],
        zeroed=np.array([False] * 7 + [True]), nonfinite=2, raw=raw,
        counts={"rewards/r/nonfinite": 2.0}, seconds=2.0,
    )  # fmt: skip
    segments = [[(0, 1)], [], [(0, 1), (1, 2)], [(0, 1)], [], [(0, 1)], [(0, 1)], [(0, 1)]]
    coalitions = [np.ones((c, 1), bool) for c in (3, 0, 2, 1, 0, 4, 0, 0)]
    attr = Attribution(
        segments, coalitions, [np.zeros(len(m)) for m in coalitions],
        [np.array([1.0, 3.0]) if i == 2 else np.ones(1) for i in range(n)],
        [np.ones(i + 1) for i in range(n)], [np.ones(i + 1, bool) for i in range(n)],
        evaluated=10, unpaired=[0, 0, 1, 0, 0, 2, 0, 0],
        budget_raised=[True, False, False, False, False, True, False, False],
        exact=[False] * 8, surrogate=[False, True, True, False, False, False, True, False],
    )  # fmt: skip
    credit = CreditRecord(
        attr, [np.ones(i + 1) for i in range(n)], np.zeros((n, n)), no_segments=2, seconds=1.0
    )
    return sample, score, credit


def test_split_generation_cuts_every_record_by_step_and_keeps_costs_on_the_first():
    sample, score, credit = records(world_size=2)
    (s1, sc1, cr1), (s2, sc2, cr2) = split_generation(sample, score, credit, 2, world_size=2)
    assert s1.indices == [10, 11] and s2.indices == [12, 13]
    assert s1.texts == ["c0", "c1", "c2", "c3"] and s2.prompts == [[3], [4]]
    # gathered rewards are rank-major: step j takes block j of every rank
    np.testing.assert_array_equal(sc1.all_rewards, [1.0, 0.0, 0.0, 0.5, 100, 101, 102, 103])
    np.testing.assert_array_equal(sc2.all_rewards, [0.2, 0.2, 0.0, 0.1, 104, 105, 106, 107])
    np.testing.assert_array_equal(sc1.flat_groups, [False, False, False, False])
    np.testing.assert_array_equal(sc2.flat_groups, [True, False, True, True])
    assert (sc1.nonfinite, sc2.nonfinite) == (1, 1)  # the NaN in step 1, the inf in step 2
    np.testing.assert_array_equal(sc2.advantages, [4, 5, 6, 7])
    assert sc2.status == ["ok"] * 3 + ["unclosed"] and sc2.zeroed.sum() == 1
    assert sc1.counts == {"rewards/r/nonfinite": 2.0} and sc2.counts == {"rewards/r/nonfinite": 0.0}
    assert (s1.seconds, sc1.seconds, cr1.seconds) == (3.0, 2.0, 1.0)
    assert (s2.seconds, sc2.seconds, cr2.seconds) == (0.0, 0.0, 0.0)
    assert (cr1.attribution.evaluated, cr2.attribution.evaluated) == (6, 4)
    assert (cr1.no_segments, cr2.no_segments) == (1, 1)
    assert cr2.token_advantages.shape == (4, 8) and len(cr2.weights) == 4


def test_step_metrics_of_a_slice_count_only_its_completions():
    sample, score, credit = records(world_size=2)
    parts = split_generation(sample, score, credit, 2, world_size=2)
    update = UpdateRecord({"loss": 0.5, "grad_norm": 1.0}, learning_rate=1e-3, seconds=0.5)
    rows = [step_metrics(1 + j, *p, update, extra={"x": float(j)}) for j, p in enumerate(parts)]
    first, second = rows
    assert first["ospo/coalitions"] == 6 and second["ospo/coalitions"] == 4
    assert first["ospo/unpaired_segments"] == 1 and second["ospo/unpaired_segments"] == 2
    assert first["ospo/budget_raised"] == 1 and second["ospo/budget_raised"] == 1
    assert first["ospo/surrogate_values"] == 2 and second["ospo/surrogate_values"] == 1
    assert first["ospo/credit_concentration"] == np.mean([1.0, 0.75, 1.0])  # row 1 has no values
    assert second["ospo/unclosed_answer"] == 1 and second["ospo/format_zeroed"] == 1
    assert first["completions/clipped_ratio"] == 0.25 and second["completions/max_length"] == 8
    assert first["time/step"] == 3.0 + 2.0 + 1.0 + 0.5 and second["time/step"] == 0.5
    assert first["frac_reward_zero_std"] == 0.0 and second["frac_reward_zero_std"] == 0.75
    assert (first["x"], second["x"]) == (0.0, 1.0)
    assert first["reward/nonfinite"] == 1 and first["rewards/r/nonfinite"] == 2.0
    # no attribution (GRPO): the credit metrics are there, at zero
    grpo = CreditRecord(None, credit.weights, credit.token_advantages)
    row = step_metrics(1, sample, score, grpo, update)
    assert row["ospo/unpaired_segments"] == 0 and row["ospo/credit_concentration"] == 0.0


def test_answer_stop_run_on_and_repeat_counts_follow_their_slice():
    from dataclasses import replace

    sample, score, credit = records(world_size=1)
    sample = replace(
        sample,
        stopped_at_answer=[True, True, False, True, False, False, False, True],
        after_answer=[False, False, True, False, True, True, False, False],
    )
    score = replace(score, collapsed=np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool))
    update = UpdateRecord({"loss": 0.5, "grad_norm": 1.0}, learning_rate=1e-3, seconds=0.5)
    whole = step_metrics(1, sample, score, credit, update)
    assert whole["completions/stopped_at_answer"] == 4 and whole["completions/after_answer"] == 3
    assert whole["reward/collapsed_repeats"] == 4
    first, second = (
        step_metrics(1 + j, *p, update)
        for j, p in enumerate(split_generation(sample, score, credit, 2, world_size=1))
    )
    assert (first["completions/stopped_at_answer"], second["completions/stopped_at_answer"]) == (
        3,
        1,
    )
    assert (first["completions/after_answer"], second["completions/after_answer"]) == (1, 2)
    assert (first["reward/collapsed_repeats"], second["reward/collapsed_repeats"]) == (1, 3)
    # records built without them (older callers): the counts are there, at zero
    bare = step_metrics(1, records(world_size=1)[0], records(world_size=1)[1], credit, update)
    assert bare["completions/after_answer"] == 0 and bare["reward/collapsed_repeats"] == 0
