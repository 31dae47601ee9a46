"""The stand-in game as a control variate (attribution/surrogate.py) and the reward's side of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.estimators import estimate, sample_coalitions
from ospo_mlx.attribution.reference import coalition_values, game_from_function, shapley_exact
from ospo_mlx.attribution.surrogate import (
    SurrogateGame,
    control_variate_shapley,
    interpolated_embeddings,
    shapley_of,
    stand_in_games,
    surrogate_masks,
)
from ospo_mlx.errors import ConfigError

SETTINGS = settings(max_examples=40, deadline=None)


def _all(n: int) -> np.ndarray:
    keys = np.arange(1 << n)
    return ((keys[:, None] >> np.arange(n)) & 1).astype(bool)


@SETTINGS
@given(st.integers(2, 10), st.integers(2, 40), st.integers(0, 2**32 - 1))
def test_control_variate_is_exact_when_the_stand_in_misses_by_an_additive_game(n, budget, seed):
    """phi(v) = phi(v~) + phi(v - v~): with v - v~ additive the kernel part is exact, so the
    estimate is exact Shapley of v at any budget, however far v~ is from v."""
    rng = np.random.default_rng(seed)
    stand_in = rng.normal(size=1 << n)  # an arbitrary game with interactions
    effects = rng.normal(scale=0.3, size=n)
    v = stand_in + game_from_function(n, lambda s: 0.2 + float(sum(effects[list(s)])))
    config = AttributionConfig(max_coalitions=budget)
    masks = sample_coalitions(n, config, rng)
    est = estimate(masks, coalition_values(v, masks), config, SurrogateGame(_all(n), stand_in))
    if len(masks) == 1 << n:
        assert est.exact and not est.surrogate  # everything evaluated: no stand-in needed
    else:
        assert est.surrogate and not est.exact
    np.testing.assert_allclose(est.phi, shapley_exact(v), atol=1e-8)


@SETTINGS
@given(st.integers(5, 10), st.integers(0, 2**32 - 1))
def test_a_close_stand_in_beats_the_plain_estimate(n, seed):
    """A stand-in that misses v by small interactions leaves a smaller error than the kernel
    estimate of v alone, on the same sampled coalitions."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(scale=0.2, size=n)
    pair = rng.normal(scale=0.2, size=(n, n))
    v = game_from_function(
        n, lambda s: float(sum(effects[list(s)]) + sum(pair[i, j] for i in s for j in s if i < j))
    )
    stand_in = v + rng.normal(scale=0.005, size=1 << n)
    config = AttributionConfig(max_coalitions=n + 4)
    masks = sample_coalitions(n, config, rng)
    values = coalition_values(v, masks)
    truth = shapley_exact(v)
    plain = estimate(masks, values, config).phi
    cv = estimate(masks, values, config, SurrogateGame(_all(n), stand_in)).phi
    assert np.abs(cv - truth).max() < 0.05
    assert np.abs(cv - truth).max() <= np.abs(plain - truth).max()
    assert cv.sum() == pytest.approx(v[-1] - v[0])  # efficiency holds


@SETTINGS
@given(st.integers(1, 16), st.integers(2, 300), st.integers(0, 2**32 - 1))
def test_stand_in_coalitions_cover_the_sampled_ones(n, limit, seed):
    rng = np.random.default_rng(seed)
    sampled = sample_coalitions(n, AttributionConfig(max_coalitions=24), rng)
    masks = surrogate_masks(sampled, limit, rng)
    keys = {m.tobytes() for m in masks}
    assert len(keys) == len(masks)  # no duplicates
    assert all(m.tobytes() in keys for m in sampled)
    complete = SurrogateGame(masks, np.zeros(len(masks))).complete
    assert complete == (len(masks) == 1 << n)
    if (1 << n) <= limit:
        assert complete  # every coalition fits: the stand-in's Shapley values are exact
    else:
        assert len(masks) <= limit + len(sampled) + 2 * n


def test_shapley_of_a_complete_game_in_any_order_is_exact():
    rng = np.random.default_rng(0)
    v = rng.normal(size=64)
    masks = _all(6)
    order = rng.permutation(64)
    np.testing.assert_allclose(shapley_of(SurrogateGame(masks[order], v[order])), shapley_exact(v))


def test_the_stand_in_must_cover_the_sampled_coalitions():
    masks = _all(3)
    game = SurrogateGame(masks[:4], np.zeros(4))
    with pytest.raises(ValueError, match="does not cover"):
        control_variate_shapley(masks, np.zeros(8), game)


def test_interpolated_embeddings_pass_through_the_anchors():
    rng = np.random.default_rng(1)
    empty, singles = rng.normal(size=8), rng.normal(size=(3, 8))
    masks = np.vstack([np.zeros((1, 3), bool), np.eye(3, dtype=bool), np.ones((1, 3), bool)])
    got = interpolated_embeddings(empty, singles, masks)
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    np.testing.assert_allclose(got[0], unit(empty), rtol=1e-5)
    for j in range(3):
        np.testing.assert_allclose(got[1 + j], unit(singles[j]), rtol=1e-5)
    np.testing.assert_allclose(got[4], unit(singles.sum(0) - 2 * empty), rtol=1e-5)


def test_config_validates_the_surrogate_keys():
    with pytest.raises(ConfigError, match=r"attribution\.surrogate ="):
        AttributionConfig(surrogate="linear").validate()
    with pytest.raises(ConfigError, match="surrogate_coalitions"):
        AttributionConfig(surrogate_coalitions=1).validate()


class _Recorder:
    """A reward with a stand-in game that records what it was asked for."""

    def __init__(self, answer=None):
        self.calls = []
        self.answer = answer

    def surrogate_values(self, responses, segments, masks, tasks):
        self.calls.append([m.shape for m in masks])
        return [np.zeros(len(m)) if self.answer is None else self.answer for m in masks]


def test_stand_in_games_skip_exact_completions_and_respect_the_config():
    rng = np.random.default_rng(0)
    small = _all(3)  # every coalition evaluated: exact, no stand-in
    big = sample_coalitions(9, AttributionConfig(max_coalitions=16), rng)
    args = (["a", "b"], [[(0, 1)] * 3, [(0, 1)] * 9], [small, big], [None, None])
    reward = _Recorder()
    games = stand_in_games(reward, *args, AttributionConfig(surrogate_coalitions=512), rng)
    assert games[0] is None and games[1] is not None and games[1].complete
    assert reward.calls == [[(512, 9)]]
    for config in (AttributionConfig(surrogate="none"), AttributionConfig(estimator="contiguous")):
        reward = _Recorder()
        assert stand_in_games(reward, *args, config, rng) == [None, None]
        assert reward.calls == []
    assert stand_in_games(object(), *args, AttributionConfig(), rng) == [None, None]
    # A reward answering None for a response (no pooled states) leaves it to the plain estimate.
    none_reward = _Recorder()
    none_reward.surrogate_values = lambda *a: [None]
    assert stand_in_games(none_reward, *args, AttributionConfig(), rng) == [None, None]


def test_ospo_attribute_reports_the_stand_in(tmp_path):
    """`ospo attribute`: a 6-segment answer at 8 coalitions uses the stand-in game; the values
    still add up to reward - v(empty); a bad --surrogate is a one-line error."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    import cli.main

    if not cli.main.app.registered_commands:
        cli.main._register_commands()
    demo = Path(__file__).resolve().parents[1] / "data" / "demo"
    answer = "<answer>wool, warm, for hiking, waterproof, lightweight, gift idea</answer>"
    base = ["attribute", "--catalog", str(demo / "catalog.jsonl"), "--tasks",
            str(demo / "train.jsonl"), "--task", "syn-0000", "--response", answer,
            "--max-coalitions", "8", "--json"]  # fmt: skip
    runner = CliRunner()
    got = {}
    for surrogate in ("pooled", "none"):
        result = runner.invoke(cli.main.app, [*base, "--surrogate", surrogate])
        assert result.exit_code == 0, result.output
        row = json.loads(result.output.strip().splitlines()[-1])
        assert len(row["segments"]) == 6 and not row["exact"]
        assert row["surrogate"] == (surrogate == "pooled")
        assert sum(row["owen"]) == pytest.approx(row["reward"] - row["baseline"], abs=1e-6)
        got[surrogate] = row
    assert got["pooled"]["values"] == got["none"]["values"]  # same coalitions scored
    # Without --max-coalitions the training default applies: 16 of the 64 coalitions.
    result = runner.invoke(cli.main.app, [a for a in base if a not in ("--max-coalitions", "8")])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    assert len(row["coalitions"]) == AttributionConfig().max_coalitions == 16
    assert row["surrogate"] and not row["exact"]
    result = runner.invoke(cli.main.app, [*base, "--surrogate", "linear"])
    # A ConfigError, which `ospo` prints as one line (cli.main.main).
    assert isinstance(result.exception, ConfigError)
    assert "attribution.surrogate" in str(result.exception)
