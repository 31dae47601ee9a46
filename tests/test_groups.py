"""DAPO dynamic sampling's group filter and the Groups container (train/groups.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.train.groups import GroupFilter, Groups


def make_groups(rewards: list[list[float]], first_task: int = 0) -> Groups:
    g = len(rewards[0])
    n = len(rewards)
    return Groups(
        g,
        list(range(first_task, first_task + n)),
        [[t] for t in range(first_task, first_task + n)],
        [f"t{first_task + i // g}m{i % g}" for i in range(n * g)],
        [[i] for i in range(n * g)],
        [[(0, 1)] for _ in range(n * g)],
        [bool(i % 2) for i in range(n * g)],
        np.asarray(rewards, dtype=np.float64).reshape(-1),
    )


def test_select_and_concat_keep_groups_whole_and_in_order():
    a = make_groups([[0.1, 0.2], [0.5, 0.5], [0.3, 0.0]])
    picked = a.select([2, 0])
    assert picked.task_indices == [2, 0]
    assert picked.texts == ["t2m0", "t2m1", "t0m0", "t0m1"]
    np.testing.assert_array_equal(picked.raw_rewards, [0.3, 0.0, 0.1, 0.2])
    both = Groups.concat([picked, a.select([1])], 2)
    assert both.task_indices == [2, 0, 1] and len(both.ids) == 6 == len(both.finished)
    np.testing.assert_array_equal(a.flat(), [False, True, False])
    # NaN rewards count as 0 (as the trainer sanitizes them): [nan, 0] is flat
    assert make_groups([[np.nan, 0.0]]).flat().tolist() == [True]


def test_each_rewards_parts_follow_their_completions_through_the_filter():
    """The trainer keeps each reward's scores (rewards/<name>/*) on the groups it draws."""
    first = make_groups([[0.0, 0.0], [0.1, 0.4]])
    first.parts = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([np.nan, 0, 0, 1.0])}
    second = make_groups([[0.2, 0.9]], first_task=10)
    second.parts = {"a": np.array([5.0, 6.0])}  # no "b" scores: not applicable (NaN)
    f = GroupFilter(need=2, group_size=2)
    f.add(first)
    f.add(second)
    batch, _ = f.finish()
    assert batch.task_indices == [1, 10]
    np.testing.assert_array_equal(batch.parts["a"], [3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(batch.parts["b"], [0.0, 1.0, np.nan, np.nan])


def test_disabled_filter_keeps_the_first_draw_as_is():
    f = GroupFilter(need=2, group_size=2, enabled=False)
    f.add(make_groups([[0.0, 0.0], [0.0, 0.0]]))
    assert f.full
    batch, m = f.finish()
    assert batch.task_indices == [0, 1]
    assert m == {
        "dynamic_sampling/draws": 1.0,
        "dynamic_sampling/dropped_groups": 0.0,
        "dynamic_sampling/refilled_groups": 0.0,
        "dynamic_sampling/unused_groups": 0.0,
    }


def test_filter_drops_flat_groups_and_draws_until_full():
    f = GroupFilter(need=3, group_size=2)
    f.add(make_groups([[0.0, 0.0], [0.1, 0.4], [1.0, 1.0]], first_task=0))
    assert not f.full and f.kept == 1
    f.add(make_groups([[0.2, 0.2], [0.9, 0.0], [0.3, 0.1]], first_task=10))
    assert f.full
    batch, m = f.finish()
    assert batch.task_indices == [1, 11, 12]  # the groups with signal, in draw order
    assert not batch.flat().any()
    assert m["dynamic_sampling/draws"] == 2
    assert m["dynamic_sampling/dropped_groups"] == 3
    assert m["dynamic_sampling/refilled_groups"] == 0
    assert m["dynamic_sampling/unused_groups"] == 0


def test_filter_refills_with_flat_groups_when_the_draws_run_out():
    f = GroupFilter(need=3, group_size=2)
    f.add(make_groups([[0.0, 0.0], [0.1, 0.4], [1.0, 1.0]]))
    batch, m = f.finish()
    assert batch.task_indices == [1, 0, 2]  # signal first, then flat groups fill the batch
    assert m["dynamic_sampling/refilled_groups"] == 2
    assert m["dynamic_sampling/dropped_groups"] == 0


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(2, 4), st.integers(0, 10_000))
def test_filter_accounts_for_every_drawn_group(need, draws, g, seed):
    """draws x need = used + unused + dropped, and the batch has exactly `need` groups."""
    rng = np.random.default_rng(seed)
    f = GroupFilter(need=need, group_size=g)
    for d in range(draws):
        flat = rng.random(need) < 0.6
        rewards = [[0.5] * g if is_flat else rng.random(g).tolist() for is_flat in flat]
        f.add(make_groups(rewards, first_task=100 * d))
        if f.full:
            break
    batch, m = f.finish()
    assert batch.num_groups == need and len(batch.texts) == need * g
    total = m["dynamic_sampling/draws"] * need
    assert (
        total == need + m["dynamic_sampling/unused_groups"] + m["dynamic_sampling/dropped_groups"]
    )
    assert batch.flat().sum() == m["dynamic_sampling/refilled_groups"]
    assert len(set(batch.task_indices)) == need  # no group used twice


def test_finish_without_enough_groups_is_an_error():
    f = GroupFilter(need=3, group_size=2)
    f.add(make_groups([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="3 groups needed"):
        f.finish()
