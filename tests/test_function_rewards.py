"""Rewards as a plug-in: TRL-style function rewards, their weighted sum, and OSPO credit for them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ospo_mlx.config import load_config
from ospo_mlx.data.schema import Task
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward import CombinedReward, FunctionReward, RewardConfig, load_function
from ospo_mlx.reward.base import part_metrics

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "keyword_reward.py"

TASKS = [
    Task(id="t1", kind="query_expansion", targets={"p1": 3.0}, query="red running shoes"),
    Task(id="t2", kind="shopper_profile", targets={"p2": 1.0}),
]


class Recorder:
    """A TRL-style function that records its calls and scores answer length."""

    __name__ = "length"

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, **kwargs})
        return [float(len(c.split())) for c in completions]


def test_function_gets_answer_texts_prompts_and_task_fields_in_one_call():
    fn = Recorder()
    reward = FunctionReward(fn, prompt_of=lambda t: f"prompt of {t.id}")
    texts = ["<answer>red shoes</answer>", "<answer>red shoes</answer>", "<answer>a b c</answer>"]
    scores = reward.score(texts, [TASKS[0], TASKS[0], TASKS[1]])
    assert scores.tolist() == [2.0, 2.0, 3.0]
    (call,) = fn.calls  # one call; the duplicate (text, task) row is scored once
    assert call["completions"] == ["red shoes", "a b c"]
    assert call["prompts"] == ["prompt of t1", "prompt of t2"]
    assert call["responses"] == [texts[0], texts[2]]
    assert call["task_id"] == ["t1", "t2"] and call["kind"] == [t.kind for t in TASKS]
    assert call["query"] == ["red running shoes", None]
    assert call["targets"] == [{"p1": 3.0}, {"p2": 1.0}]


def test_answer_rule_zeroes_without_calling_the_function():
    fn = Recorder()
    strict = FunctionReward(fn, RewardConfig(missing_tags="zero"))
    assert strict.score(["no tags here", "<answer>x y</answer>"], TASKS).tolist() == [0.0, 2.0]
    assert fn.calls[0]["completions"] == ["x y"]
    assert strict.scored("no tags here") == (None, "missing_tags")


def test_coalition_values_are_one_call_for_the_whole_batch():
    fn = Recorder()
    reward = FunctionReward(fn)
    text = "<answer>red shoes, white soles</answer>"
    start = len("<answer>")
    spans = [(start, start + 9), (start + 11, start + 22)]  # "red shoes", "white soles"
    masks = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=bool)
    values = reward.coalition_values([text, text], [spans, spans], [masks, masks[1:]], TASKS)
    assert len(fn.calls) == 1  # every coalition of every completion: one call
    assert values[0].tolist() == [0.0, 2.0, 2.0, 4.0]  # v(empty) = fn("") = 0 words
    assert values[1].tolist() == [2.0, 2.0, 4.0]
    # unique (text, task) rows only: 4 texts for t1, 3 for t2
    assert fn.calls[0]["completions"] == [
        "", "red shoes", "white soles", "red shoes white soles",
        "red shoes", "white soles", "red shoes white soles",
    ]  # fmt: skip


def test_user_function_errors_are_one_line_and_name_the_function():
    def boom(prompts, completions, **kw):
        raise ValueError("bad input\nsecond line")

    def short(prompts, completions, **kw):
        return [1.0]

    def words(prompts, completions, **kw):
        return ["high"] * len(completions)

    texts = ["<answer>a</answer>", "<answer>b</answer>"]
    with pytest.raises(OspoError, match=r"^reward function 'boom' raised ValueError: bad input$"):
        FunctionReward(boom).score(texts, TASKS)
    with pytest.raises(OspoError, match=r"'short' returned 1 for 2 completions"):
        FunctionReward(short).score(texts, TASKS)
    with pytest.raises(OspoError, match=r"'words' returned a str at row 0"):
        FunctionReward(words).score(texts, TASKS)


def test_none_is_not_applicable_and_nonfinite_is_counted_as_zero():
    def odd(prompts, completions, **kw):
        return [None, float("inf")]

    reward = FunctionReward(odd)
    scores = reward.score(["<answer>a</answer>", "<answer>b</answer>"], TASKS)
    assert np.isnan(scores[0]) and scores[1] == 0.0
    assert reward.counts() == {"nonfinite": 1.0}
    assert reward.counts() == {"nonfinite": 0.0}  # reset on read


class Fixed:
    """A reward with fixed scores and coalition values (NaN = not applicable)."""

    def __init__(self, name, scores, values=None):
        self.name, self.scores, self.values = name, np.asarray(scores, float), values

    def score(self, responses, tasks):
        return self.scores

    def coalition_values(self, responses, segments, masks, tasks):
        return [np.asarray(v, float) for v in self.values]

    def scored(self, response):
        return response, "ok"


def test_combined_reward_is_the_weighted_sum_ignoring_none():
    a = Fixed("a", [1.0, np.nan, np.nan], [[0.0, 1.0], [np.nan, np.nan]])
    b = Fixed("b", [0.5, 0.2, np.nan], [[0.5, 0.5], [np.nan, np.nan]])
    combined = CombinedReward([a, b], [2.0, 10.0])
    got = combined.score(["x", "y", "z"], TASKS + TASKS[:1])
    np.testing.assert_allclose(got[:2], [2.0 * 1.0 + 10.0 * 0.5, 10.0 * 0.2])
    assert np.isnan(got[2])  # no part applies: NaN, which the trainer counts and treats as 0
    values = combined.coalition_values(["x", "y"], [[], []], [None, None], TASKS)
    np.testing.assert_allclose(values[0], [5.0, 2.0 + 5.0])
    assert values[1].tolist() == [0.0, 0.0]
    assert combined.counts()["rewards/none_coalitions"] == 2.0
    m = part_metrics(combined.score_parts(["x", "y", "z"], TASKS + TASKS[:1]))
    assert m["rewards/a/mean"] == 1.0 and m["rewards/a/none"] == 2.0
    assert m["rewards/b/mean"] == pytest.approx(0.35) and m["rewards/b/std"] == pytest.approx(0.15)
    with pytest.raises(ConfigError, match="two rewards are named 'a'"):
        CombinedReward([a, a])


@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.floats(-5, 5)), min_size=4, max_size=4),
        min_size=1,
        max_size=4,
    ),
    st.data(),
)
def test_combine_matches_a_per_row_weighted_sum(parts, data):
    weights = data.draw(st.lists(st.floats(0, 3), min_size=len(parts), max_size=len(parts)))
    arrays = [np.array([np.nan if v is None else v for v in p]) for p in parts]
    rewards = [Fixed(f"r{k}", arr) for k, arr in enumerate(arrays)]
    got = CombinedReward(rewards, weights).combine(arrays)
    for row in range(4):
        terms = [w * p[row] for w, p in zip(weights, parts, strict=True) if p[row] is not None]
        if terms:
            assert got[row] == pytest.approx(sum(terms), abs=1e-9)
        else:
            assert np.isnan(got[row])


def test_load_function_from_a_file_or_a_module_and_its_errors(tmp_path):
    fn = load_function(f"{EXAMPLE}:keyword_coverage")
    assert fn(["p"], ["red shoes"], query=["red running shoes"]) == [pytest.approx(2 / 3)]
    assert load_function("json:dumps") is json.dumps
    with pytest.raises(ConfigError, match="not found"):
        load_function(f"{tmp_path / 'nope.py'}:f")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        load_function(f"{EXAMPLE}:nope")
    with pytest.raises(ConfigError, match="cannot import 'no_such_mod'"):
        load_function("no_such_mod:f")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('import-time failure')\n")
    with pytest.raises(OspoError, match=r"loading .*broken\.py raised RuntimeError: import-time"):
        load_function(f"{broken}:f")


def test_keyword_example_is_length_aware_and_skips_profiles():
    fn = load_function(f"{EXAMPLE}:keyword_coverage")
    q = ["red shoes"]
    assert fn(q, ["red shoes"], query=q) == [1.0]
    assert fn(q, ["red shoes " + "x " * 16], query=q) == [pytest.approx(1 / 2.2)]
    assert fn(q, ["anything"], query=[None]) == [None]


def test_reward_config_checks_functions_and_weights(tmp_path):
    tiny = REPO / "configs" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"reward\.weights: 2 weight"):
        load_config(tiny, ["reward.functions=a.py:f", "reward.weights=[1, 2]"])
    with pytest.raises(ConfigError, match=r"is not 'pkg\.module:fn'"):
        load_config(tiny, ["reward.functions=just_a_module"])
    with pytest.raises(ConfigError, match="nothing to reward"):
        load_config(tiny, ["reward.retrieval_weight=0"])
    cfg = load_config(tiny, [f"reward.functions={EXAMPLE}:keyword_coverage", "reward.weights=[0.5]"])
    assert cfg.reward.functions == [f"{EXAMPLE}:keyword_coverage"] and cfg.reward.weights == [0.5]


# ---------------------------------------------------------------------------- the trainer


def test_trainer_from_parts_trains_a_function_reward_without_touching_disk(tmp_path, monkeypatch):
    """Tiny model, in-memory tasks, a function reward: OSPO credit, metrics, no files written."""
    from ospo_mlx.models.load import load_model
    from ospo_mlx.train.policy import apply_lora, build_optimizer
    from ospo_mlx.train.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    config = load_config(
        None,
        ["sampling.max_new_tokens=12", "attribution.max_coalitions=6", "run.save_every=1"],
        **{"model.name": "tiny", "optim.steps": 2, "optim.num_generations": 2},
    )
    model, tokenizer = load_model("tiny")
    apply_lora(model, config.lora, seed=0)
    calls = []

    def letters(prompts, completions, **kw):  # a dense reward the random model can vary
        calls.append(len(completions))
        return [sum(ch in "aeiou" for ch in c) / max(len(c), 1) for c in completions]

    tasks = [
        Task(id=f"t{i}", kind="query_expansion", targets={"p": 1.0}, query=f"query number {i}")
        for i in range(4)
    ]
    trainer = Trainer(
        model, tokenizer, tasks, FunctionReward(letters, config.reward),
        build_optimizer(config.optim, config.optim.steps), config,
    )  # fmt: skip
    history = trainer.run()
    assert [m["step"] for m in history] == [1, 2]
    assert list(tmp_path.iterdir()) == []  # no run directory, no checkpoint, no log
    for m in history:
        assert "rewards/letters/mean" in m and "rewards/letters/std" in m
        assert m["rewards/letters/mean"] == pytest.approx(m["reward"], abs=1e-9)
        assert "ndcg@10" not in m  # no retrieval reward in the sum
    assert sum(m["ospo/coalitions"] for m in history) > 0
    # per step: one call for the full answers, at most one for every coalition of the batch
    assert len(calls) <= 2 * len(history) and sum(calls) > len(calls)


def test_one_command_trains_the_example_reward_and_the_inspector_shows_its_credit(tmp_path):
    """`ospo train` with the example reward file next to the retrieval reward, on the tiny model."""
    out = tmp_path / "kw"
    cmd = [
        sys.executable, "-m", "cli.main", "train", "--config", "configs/tiny.yaml",
        "--out", str(out), "--steps", "2", "--plain",
        "--set", "reward.functions=examples/keyword_reward.py:keyword_coverage",
        "--set", "reward.weights=[0.5]", "--set", "reward.missing_tags=whole",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for m in rows:
        assert {"rewards/keyword_coverage/mean", "rewards/retrieval/mean", "ndcg@10"} <= set(m)
        parts = m["rewards/retrieval/mean"] + 0.5 * m["rewards/keyword_coverage/mean"]
        assert m["reward"] == pytest.approx(parts, abs=1e-6)  # every demo task has a query
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert any(r["coalition_values"] for r in rollouts)
    inspect = subprocess.run(
        [sys.executable, "-m", "cli.main", "inspect", str(out), "--static"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert inspect.returncode == 0 and "coalitions" in inspect.stdout


def test_a_failing_reward_file_is_a_one_line_cli_error(tmp_path):
    bad = tmp_path / "bad_reward.py"
    bad.write_text("def bad(prompts, completions, **kw):\n    return [1.0]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "train", "--config", "configs/tiny.yaml",
         "--out", str(tmp_path / "run"), "--steps", "1", "--plain",
         "--set", f"reward.functions={bad}:bad"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: reward function 'bad' returned 1 for"
    )
    assert "Traceback" not in proc.stderr
