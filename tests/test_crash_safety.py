"""Crash safety: runs killed with SIGKILL at random moments always resume to a valid state.

The fast test drives the real run-directory writers (RunLog, save_checkpoint) and the real
compiled update on a tiny policy in a subprocess (this file is also that worker script), kills
it many times, and checks that the resumed run ends with exactly the adapters and metrics of
an uninterrupted run. The slow tests do the same with `ospo train` on configs/tiny.yaml and
check the SIGINT/SIGTERM path.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEPS = 6


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)])}


def _start(run: Path, steps: int, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(run), str(steps)]
    if resume:
        cmd.append("--resume")
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def _validate(run: Path) -> int:
    """The state a reader (or --resume) sees after a kill: returns the checkpointed step."""
    from ospo_mlx.train import checkpoint as ckpt
    from ospo_mlx.train.runlog import read_jsonl

    for name in ("metrics.jsonl", "rollouts.jsonl"):
        if (run / name).exists():
            read_jsonl(run / name)  # parses: at most a torn last line, which is skipped
    if not (run / "checkpoints" / "latest").exists():
        return 0
    loaded = ckpt.load_checkpoint(run)  # complete and readable
    assert loaded.adapters and loaded.optimizer
    assert (run / "adapters" / "adapters.safetensors").is_file()
    return loaded.step


def _final(run: Path) -> tuple[list[dict], list[dict], dict]:
    import numpy as np

    from ospo_mlx.train import checkpoint as ckpt
    from ospo_mlx.train.runlog import read_jsonl

    metrics = read_jsonl(run / "metrics.jsonl")
    rollouts = read_jsonl(run / "rollouts.jsonl")
    loaded = ckpt.load_checkpoint(run)
    return metrics, rollouts, {k: np.array(v) for k, v in loaded.adapters.items()}


def _run_to_end(run: Path, steps: int, resume: bool) -> None:
    proc = _start(run, steps, resume)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]


def test_random_sigkills_always_resume_to_the_uninterrupted_result(tmp_path):
    import numpy as np

    reference = tmp_path / "reference"
    _run_to_end(reference, STEPS, resume=False)
    ref_metrics, ref_rollouts, ref_adapters = _final(reference)
    assert [m["step"] for m in ref_metrics] == list(range(1, STEPS + 1))

    run = tmp_path / "killed"
    rng = random.Random(0)
    kills, deadline = 0, time.monotonic() + 25
    while time.monotonic() < deadline:
        resume = (run / "checkpoints" / "latest").exists()
        proc = _start(run, STEPS, resume)
        line = proc.stdout.readline()  # "ready": imports and model done, the loop starts
        if not line.startswith("ready"):
            proc.wait(timeout=60)
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
            break  # nothing left to do: the run finished before we could kill it
        time.sleep(rng.uniform(0.0, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        kills += 1
        _validate(run)
        if kills >= 8:
            break
    assert kills >= 3, "the machine is too slow to kill the run at least 3 times"
    print(f"{kills} kills")
    _run_to_end(run, STEPS, resume=(run / "checkpoints" / "latest").exists())

    metrics, rollouts, adapters = _final(run)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert sorted({r["step"] for r in rollouts}) == list(range(1, STEPS + 1))
    assert len(rollouts) == len(ref_rollouts)
    for got, want in zip(metrics, ref_metrics, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
        assert got["checksum"] == pytest.approx(want["checksum"], rel=1e-6)
    for key, value in ref_adapters.items():
        np.testing.assert_allclose(adapters[key], value, atol=1e-6)
    assert not list(run.rglob("*.tmp*")), "temporary files are cleaned up by the next save"


def test_torn_jsonl_lines_are_dropped_on_resume(tmp_path):
    run = tmp_path / "run"
    _run_to_end(run, 3, resume=False)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "loss": 0.1')  # a kill in the middle of a write
    with (run / "rollouts.jsonl").open("a") as fh:
        fh.write('{"step": 4, "completion": "hal')
    assert _validate(run) == 3
    _run_to_end(run, 5, resume=True)
    metrics, rollouts, _ = _final(run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rollouts] == [s for s in range(1, 6) for _ in range(4)]
    assert all(line.endswith("\n") for line in (run / "metrics.jsonl").read_text().splitlines(True))


def test_first_signal_sets_a_flag_and_the_second_takes_the_default_action():
    from ospo_mlx.train.interrupt import GracefulStop

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the Python-level handler runs at the next bytecode boundary
        assert stop.requested and stop.exit_code == 143
        # the next signal would end the process at once (not run Python code)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- the real CLI


def _cli(run: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "cli", "train", "--config", "configs/tiny.yaml", "--out", str(run),
           "--plain", *args]  # fmt: skip
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())  # fmt: skip


@pytest.mark.slow
def test_cli_train_survives_sigkill_and_resumes(tmp_path):
    """`ospo train` killed at random points on the tiny model; --resume completes the run."""
    steps = 5
    ref = tmp_path / "ref"
    proc = _cli(ref, "--steps", str(steps))
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    run = tmp_path / "run"
    rng = random.Random(1)
    for _ in range(3):
        resume = (run / "checkpoints" / "latest").exists()
        proc = _cli(run, "--steps", str(steps), *(["--resume"] if resume else []))
        line = proc.stdout.readline()  # the first step line: the run is in its loop
        if not line.startswith("step"):
            break
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait(timeout=30)
        if _validate(run) == steps:
            break  # it finished before the kill landed
    if _validate(run) < steps:
        resume = (run / "checkpoints" / "latest").exists()
        proc = _cli(run, "--steps", str(steps), *(["--resume"] if resume else []))
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    from ospo_mlx.train.runlog import read_jsonl

    got = read_jsonl(run / "metrics.jsonl")
    want = read_jsonl(ref / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, steps + 1))
    for a, b in zip(got, want, strict=True):  # same seed, same data order: same rewards
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
    rows = read_jsonl(run / "rollouts.jsonl")
    assert sorted({r["step"] for r in rows}) == list(range(1, steps + 1))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_train_checkpoints_and_exits_on_signal(tmp_path, sig):
    run = tmp_path / "run"
    proc = _cli(run, "--steps", "50", "--set", "run.save_every=100")
    line = proc.stdout.readline()
    assert line.startswith("step"), proc.stderr.read()[-3000:]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 if sig == signal.SIGINT else proc.returncode == 143
    assert "Traceback" not in err
    assert "checkpoint" in err and "--resume" in err
    step = _validate(run)
    assert step >= 1  # the interrupted step's predecessor at least, though save_every is 100
    from ospo_mlx.train.runlog import read_jsonl

    assert read_jsonl(run / "metrics.jsonl")[-1]["step"] == step


# ----------------------------------------------------------------------------- the worker


def _worker(run: Path, steps: int, resume: bool) -> None:
    import ospo_mlx  # noqa: F401  (BLAS before mlx)

    # isort: split
    import mlx.core as mx
    import numpy as np
    from test_policy import tiny_llama
    from test_trainer import random_batch

    from ospo_mlx.config import LoraConfig, OptimConfig
    from ospo_mlx.train import checkpoint as ckpt
    from ospo_mlx.train.policy import (
        PolicyUpdate,
        adapter_config,
        adapter_weights,
        apply_lora,
        build_optimizer,
    )
    from ospo_mlx.train.runlog import RunLog

    model = tiny_llama(0)
    lora = LoraConfig(rank=4)
    apply_lora(model, lora, seed=0)
    cfg = OptimConfig(learning_rate=1e-2, steps=steps)
    optimizer = build_optimizer(cfg, steps)
    step = 0
    if resume:
        loaded = ckpt.load_checkpoint(run)
        ckpt.restore(model, optimizer, loaded)
        step = loaded.step
    update = PolicyUpdate(model, optimizer, cfg, temperature=1.0, max_completion_length=16)
    log = RunLog(run, "worker: true\n", resume_step=step if resume else None)
    print("ready", flush=True)
    filler = "x" * 20_000  # long rows: a kill often lands in the middle of a write
    while step < steps:
        step += 1
        result = update(random_batch(step))
        weights = adapter_weights(model)
        checksum = float(sum(mx.abs(v).sum().item() for v in weights.values()))
        log.metrics({"step": step, "loss": result.metrics["loss"], "checksum": checksum})
        log.rollouts([{"step": step, "member": i, "completion": filler} for i in range(4)])
        ckpt.save_checkpoint(run, step, weights, adapter_config(model, lora), optimizer,
                             {"epoch": 0, "position": step, "numpy_rng": {}})  # fmt: skip
        np.random.default_rng(step).random(1)
        print(f"step {step}", flush=True)
    log.close()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv)
