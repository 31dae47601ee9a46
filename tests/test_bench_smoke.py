"""Every bench script runs its --quick version and prints exactly one valid JSON line.

Scripts that accept --model run on the tiny random model. The ones that take longer than
~30 s on the shared 2-core CPU are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (script, extra arguments, slow?, keys the JSON line must carry)
SCRIPTS = [
    ("attribution", [], False, ["numpy_ms", "mlx_ms", "speedup", "max_abs_diff"]),
    ("coalitions", [], True, ["speedup", "max_abs_diff", "vectorized_ms", "sequential_ms"]),
    ("sampling", [], False, ["ospo_tokens_per_s", "mlx_lm_tokens_per_s", "ratio"]),
    ("update", [], False, []),
    ("step_overhead", [], False, ["ospo_grpo_ratio"]),
    ("peers", [], False, ["trainers", "missing", "ospo_vs_mlxlmlora_step", "ospo_vs_trl_step"]),
    (
        "fidelity",
        [],
        True,
        ["estimator_spearman", "estimator_top1", "planted_top1", "query_bias", "by_source"],
    ),
    ("index_scale", [], True, ["recall", "index", "extrapolated_1_8M"]),
    (
        "learning",
        [
            "--steps",
            "2",
            "--sft-steps",
            "2",
            "--test-tasks",
            "4",
            "--train-tasks",
            "16",
            "--rl-tasks",
            "4",
        ],
        True,
        ["algorithms", "seeds", "steps", "auc", "diff_auc_ci95", "heldout", "raw_query_heldout"],
    ),
]


def _accepts(script: Path, flag: str) -> bool:
    out = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    return flag in out.stdout


def _params():
    for name, extra, slow, keys in SCRIPTS:
        marks = [pytest.mark.slow] if slow else []
        yield pytest.param(name, extra, keys, marks=marks, id=name)


@pytest.mark.parametrize("name, extra, keys", list(_params()))
def test_bench_quick_prints_one_json_line(name, extra, keys, tmp_path):
    script = REPO / "bench" / f"{name}.py"
    if not script.is_file():
        pytest.skip(f"bench/{name}.py is not written yet")
    args = [sys.executable, str(script), "--quick", "--json", *extra]
    if _accepts(script, "--model"):
        args += ["--model", "tiny"]
    if _accepts(script, "--out"):
        args += ["--out", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout[-2000:]
    record = json.loads(lines[0])
    assert isinstance(record, dict)
    for key in keys:
        assert key in record, f"{name}: missing {key!r} in {sorted(record)}"
