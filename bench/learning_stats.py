"""The learning bench's statistics: curve summaries, bootstrap intervals and the power estimate.

Pure functions over per-step reward lists (one list per seed), so they are tested by hand
computation and property tests (tests/test_learning_bench.py).

    auc(rewards)                      mean reward over the steps (the area per step)
    paired_diff_ci(a, b)              mean of a - b over seeds and its percentile bootstrap CI
    curve_bands(curves, window)       per-step mean and 95% band over seeds of smoothed curves
    power_plan(aucs_a, aucs_b, ...)   seeds needed to detect a relative AUC difference
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np


def trailing_mean(rewards: Sequence[float], step: int, window: int) -> float:
    """Mean reward of the `window` steps ending at 1-based `step` (fewer at the start)."""
    if not 1 <= step <= len(rewards):
        raise ValueError(f"step {step} is outside 1..{len(rewards)}")
    return float(np.mean(rewards[max(0, step - window) : step]))


def smooth(rewards: Sequence[float], window: int) -> list[float]:
    """The trailing mean at every step (one step sees few prompts, so raw steps are noisy)."""
    return [trailing_mean(rewards, s, window) for s in range(1, len(rewards) + 1)]


def steps_to_target(rewards: Sequence[float], target: float, window: int) -> int | None:
    """First 1-based step whose full-window trailing mean reaches `target`; None if never."""
    for step in range(min(window, len(rewards)), len(rewards) + 1):
        if trailing_mean(rewards, step, window) >= target:
            return step
    return None


def auc(rewards: Sequence[float]) -> float:
    """Area under the reward curve per step: the mean reward over all steps of a run."""
    if not len(rewards):
        raise ValueError("auc of an empty curve")
    return float(np.mean(rewards))


def bootstrap_mean_ci(
    values: Sequence[float], n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(mean, CI low, CI high): percentile bootstrap of the mean (a single value: no width)."""
    from ospo_mlx.eval import bootstrap_mean_ci as bootstrap

    return bootstrap(values, n_resamples, seed, confidence)


def paired_diff_ci(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """(mean of a - b, 95% CI low, high) over paired seeds (resampling seeds, not steps)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return bootstrap_mean_ci(np.subtract(a, b), n_resamples, seed)


def t_ci_halfwidth(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half-width of a normal-theory CI of the mean, widened by the t/z ratio for small n."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return 0.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    # Cornish-Fisher style t quantile (good to ~1% for n >= 3): no scipy needed.
    df = x.size - 1
    t = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    return float(t * x.std(ddof=1) / math.sqrt(x.size))


def curve_bands(curves: Sequence[Sequence[float]], window: int) -> dict[str, list[float]]:
    """Per-step mean and 95% band (t interval over seeds) of the smoothed curves.

    Curves of different lengths are cut to the shortest, so every step has every seed.
    """
    if not curves:
        raise ValueError("curve_bands needs at least one curve")
    steps = min(len(c) for c in curves)
    rows = np.array([smooth(list(c)[:steps], window) for c in curves])
    mean = rows.mean(axis=0)
    half = np.array([t_ci_halfwidth(rows[:, s]) for s in range(steps)])
    return {
        "step": list(range(1, steps + 1)),
        "mean": mean.tolist(),
        "low": (mean - half).tolist(),
        "high": (mean + half).tolist(),
    }


def step_noise(curves: Sequence[Sequence[float]]) -> float:
    """Std of one step's reward around the seeds' mean curve (sampling noise per step)."""
    steps = min(len(c) for c in curves)
    rows = np.array([list(c)[:steps] for c in curves], dtype=np.float64)
    if rows.shape[0] < 2:  # one seed: residuals around its own 5-step trailing mean
        resid = rows[0] - np.array(smooth(rows[0].tolist(), 5))
        return float(resid.std(ddof=1)) if steps > 1 else 0.0
    # two-way residuals: remove each step's mean (the shared curve) and each seed's offset
    resid = rows - rows.mean(axis=0) - rows.mean(axis=1, keepdims=True) + rows.mean()
    dof = (rows.shape[0] - 1) * (steps - 1)
    return float(math.sqrt((resid**2).sum() / dof)) if dof > 0 else 0.0


def seeds_needed(sd_diff: float, delta: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired seeds needed for a two-sided test at `alpha` to detect `delta` with `power`."""
    if delta <= 0:
        raise ValueError("delta must be > 0")
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return max(2, math.ceil((z * sd_diff / delta) ** 2))


def paired_step_noise(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> float:
    """Std of the per-step difference a - b of paired runs (same seed, so same prompts).

    Runs with the same seed draw the same prompts at each step, so the prompt's difficulty,
    the largest part of one step's reward, cancels in the difference."""
    diffs = []
    for x, y in zip(a, b, strict=True):
        n = min(len(x), len(y))
        d = np.subtract(x[:n], y[:n])
        diffs.append(d - d.mean())  # each seed's own mean difference is the signal, not noise
    pooled = np.concatenate(diffs) if diffs else np.zeros(0)
    dof = pooled.size - len(diffs)
    return float(math.sqrt((pooled**2).sum() / dof)) if dof > 0 else 0.0


def power_plan(
    aucs: dict[str, Sequence[float]],
    curves: dict[str, Sequence[Sequence[float]]],
    baseline: str,
    start_reward: float,
    relative: float = 0.25,
    steps_options: Sequence[int] = (20, 40, 60, 100),
) -> dict[str, Any]:
    """Seeds x steps needed to detect a `relative` AUC difference from `baseline` at 95%.

    From pilot runs. An AUC over T steps has variance s_seed^2 + s_step^2 / T: s_step is one
    step's noise, s_seed the seed-to-seed spread of a run's true level, estimated as
    var(AUC) - s_step^2 / T_pilot (at least 0; 0 when the pilot has one seed per variant,
    which makes the plan a lower bound). Two designs:
    - unpaired: the difference of two AUCs has twice that variance;
    - paired: the same seeds draw the same prompts, so the per-step difference's own noise
      (`paired_step_noise`) replaces 2 s_step^2, and the seed-level spread is that of the
      per-seed AUC differences (var(d) - s_pair^2 / T_pilot, at least 0).
    Two effect sizes: `relative` x the baseline's AUC (the paper's "% NDCG over GRPO") and
    `relative` x its gain over the warm-up's reward (a difference in how much was learned).
    Power 80%, two-sided alpha 5%.
    """
    base = np.asarray(aucs[baseline], dtype=np.float64)
    t_pilot = min(len(c) for c in curves[baseline])
    s_step = float(np.mean([step_noise(c) for c in curves.values() if c]))
    spread = [np.var(v, ddof=1) for v in aucs.values() if len(v) >= 2]
    var_auc = float(np.mean(spread)) if spread else 0.0
    s_seed2 = max(0.0, var_auc - s_step**2 / t_pilot)
    pairs = [v for v in curves if v != baseline and curves[v]]
    s_pair: dict[str, float] = {}
    s_dseed2: dict[str, float] = {}
    for v in pairs:  # each OSPO variant against the baseline, on their common seeds
        k = min(len(curves[baseline]), len(curves[v]))
        s_pair[v] = paired_step_noise(curves[v][:k], curves[baseline][:k])
        # seed-level spread of the paired difference itself (prompt difficulty cancels in it)
        d = np.subtract(aucs[v][:k], aucs[baseline][:k])
        s_dseed2[v] = (
            max(0.0, float(np.var(d, ddof=1)) - s_pair[v] ** 2 / t_pilot) if k >= 2 else 0.0
        )
    mean_auc = float(base.mean())
    # 25% of the gain is undefined when the baseline did not gain: then no plan for it
    gain = mean_auc - start_reward
    deltas = {"relative_auc": relative * mean_auc, "relative_gain": relative * gain}
    if gain <= 0:
        del deltas["relative_gain"]
    plan: dict[str, Any] = {
        "pilot_steps": t_pilot,
        "pilot_seeds": int(base.size),
        "step_noise_sd": s_step,
        "paired_step_noise_sd": s_pair,
        "auc_sd_between_seeds": math.sqrt(var_auc),
        "seed_level_sd": math.sqrt(s_seed2),
        "paired_seed_level_sd": {v: math.sqrt(x) for v, x in s_dseed2.items()},
        "seed_level_known": bool(spread),
        "baseline_auc": mean_auc,
        "start_reward": start_reward,
        "deltas": deltas,
        "seeds_needed": {},
        "seeds_needed_paired": {},
    }
    for name, delta in deltas.items():
        plan["seeds_needed"][name] = {
            str(t): seeds_needed(math.sqrt(2 * (s_seed2 + s_step**2 / t)), delta)
            for t in steps_options
        }
        for v in pairs:
            plan["seeds_needed_paired"].setdefault(v, {})[name] = {
                str(t): seeds_needed(math.sqrt(s_dseed2[v] + s_pair[v] ** 2 / t), delta)
                for t in steps_options
            }
    return plan
