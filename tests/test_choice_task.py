"""The controlled choice task: data, prompt, warm-up answers, and the reward's credit structure."""

from __future__ import annotations

import json

import pytest

from ospo_mlx.data.choice import ChoiceConfig, generate_choice, right_phrases
from ospo_mlx.data.prompts import user_text
from ospo_mlx.data.schema import task_from_dict, to_dict
from ospo_mlx.data.synthetic import SyntheticConfig
from ospo_mlx.errors import ConfigError, DataError
from ospo_mlx.train.sft import warmup_answer

SMALL = ChoiceConfig(synthetic=SyntheticConfig(n_train=40, n_test=10))


@pytest.fixture(scope="module")
def choice():
    products, tasks, report = generate_choice(SMALL)
    return {p.product_id: p for p in products}, tasks, report.extra["hidden_intents"]


def test_candidates_hold_the_right_phrases_among_distractors(choice):
    catalog, tasks, hidden = choice
    assert len(tasks) == 50
    orders = set()
    for t in tasks:
        right = right_phrases(hidden[t.id])
        assert len(t.candidates) == 6 and len(set(t.candidates)) == 6
        assert set(right) <= set(t.candidates)
        # distractors are the same category's other uses and materials
        category = hidden[t.id]["category"]
        same = {p.attributes["use"] for p in catalog.values() if p.category == category}
        same |= {p.attributes["material"] for p in catalog.values() if p.category == category}
        assert set(t.candidates) <= same
        orders.add(tuple(t.candidates.index(r) for r in right))
    assert len(orders) > 5  # shuffled per task: the right phrases are not always in one place


def test_generation_is_deterministic_and_keeps_the_synthetic_tasks(choice):
    _, tasks, _ = choice
    _, again, _ = generate_choice(SMALL)
    assert [t.candidates for t in tasks] == [t.candidates for t in again]
    from ospo_mlx.data.synthetic import generate

    _, plain, _ = generate(SMALL.synthetic)
    assert [(t.id, t.query, t.targets, t.pool) for t in plain] == [
        (t.id, t.query, t.targets, t.pool) for t in tasks
    ]


def test_bad_options_and_rows_are_one_line_errors():
    with pytest.raises(ConfigError, match="distractor_uses"):
        ChoiceConfig(distractor_uses=9).validate()
    row = {"id": "x", "kind": "query_expansion", "targets": {"a": 1}, "query": "q"}
    with pytest.raises(DataError, match="candidates"):
        task_from_dict({**row, "candidates": "not a list"})


def test_candidates_round_trip_through_jsonl(choice):
    _, tasks, _ = choice
    row = json.loads(json.dumps(to_dict(tasks[0])))
    assert task_from_dict(row).candidates == tasks[0].candidates
    plain = {"id": "x", "kind": "query_expansion", "targets": {"a": 1}, "query": "q"}
    assert task_from_dict(plain).candidates is None and "candidates" not in to_dict(
        task_from_dict(plain)
    )


def test_prompt_lists_the_candidates_and_warmup_copies_some(choice):
    catalog, tasks, hidden = choice
    t = tasks[0]
    text = user_text(t, catalog)
    assert t.query in text and ", ".join(t.candidates) in text and "<answer>" in text
    picks = []
    for task in tasks:
        answer = warmup_answer(task, catalog)
        named = answer.split(", ")
        assert 2 <= len(named) <= 3 and set(named) <= set(task.candidates)
        assert warmup_answer(task, catalog) == answer  # drawn per task, reproducibly
        picks.append(set(named) >= set(right_phrases(hidden[task.id])))
    assert 0 < sum(picks) < len(picks)  # chosen without looking at which are right


@pytest.mark.slow
def test_right_phrases_earn_more_than_wrong_ones_under_minilm(choice):
    """The reward has the credit structure the task needs (real MiniLM, 50 tasks)."""
    import numpy as np

    from ospo_mlx.reward import RewardConfig, build_reward

    catalog, tasks, hidden = choice
    reward = build_reward(catalog, RewardConfig())

    def score(pick):
        texts = [
            f"<answer>{', '.join(pick(t, right_phrases(hidden[t.id])))}</answer>" for t in tasks
        ]
        return float(np.mean(reward.score(texts, tasks)))

    right = score(lambda t, r: r)
    everything = score(lambda t, r: t.candidates)
    wrong = score(lambda t, r: [c for c in t.candidates if c not in r][:2])
    raw = score(lambda t, r: [])
    assert right > raw + 0.2 and right > everything + 0.2 and wrong < raw - 0.1
