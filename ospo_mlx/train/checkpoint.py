"""Adapters and resumable checkpoints, written atomically (temp file, fsync, rename).

Adapters use mlx-lm's format (`adapters.safetensors` + `adapter_config.json`), so
`mlx_lm.load(model, adapter_path=run/adapters)` works. A checkpoint adds the optimizer state,
the MLX random state and a `state.json` (step, data cursor, NumPy RNG state); `checkpoints/latest`
names the last complete one and is only rewritten after the checkpoint is fully on disk.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from ospo_mlx.errors import OspoError
from ospo_mlx.safety import check_weight_shapes, inside, load_tensors

ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
RANDOM_KEY = "__mx_random_state__"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _commit(tmp, path)


def atomic_save_safetensors(
    path: Path, arrays: dict[str, mx.array], metadata: dict[str, str] | None = None
) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")  # mlx appends .safetensors otherwise
    mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
    _commit(tmp, path)


def save_adapters(directory: Path, weights: dict[str, mx.array], config: dict[str, Any]) -> None:
    """Write mlx-lm adapters: the LoRA weights and the adapter_config.json that describes them."""
    directory = Path(directory)
    atomic_save_safetensors(directory / ADAPTER_FILE, weights, {"format": "mlx"})
    atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")


def optimizer_arrays(optimizer: optim.Optimizer) -> dict[str, mx.array]:
    """The optimizer state (step, learning rate, AdamW moments) plus the MLX random key, flat."""
    arrays = dict(tree_flatten(optimizer.state))
    arrays[RANDOM_KEY] = mx.random.state[0]
    return arrays


@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]
    adapters: dict[str, mx.array]
    optimizer: dict[str, mx.array]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, mx.array],
    config: dict[str, Any],
    optimizer: optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write checkpoints/step_NNNNNN/ completely, then point checkpoints/latest at it.

    Also refreshes run_dir/adapters/ (the latest adapters readers and `mlx_lm.load` use).
    """
    run_dir = Path(run_dir)
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_adapters(tmp, weights, config)
    atomic_save_safetensors(tmp / OPTIMIZER_FILE, optimizer_arrays(optimizer))
    atomic_write_text(tmp / STATE_FILE, json.dumps({**state, "step": step}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    atomic_write_text(run_dir / "checkpoints" / "latest", final.name + "\n")
    save_adapters(run_dir / "adapters", weights, config)
    return final


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The last complete checkpoint of a run (the one `checkpoints/latest` names)."""
    run_dir = Path(run_dir)
    latest = run_dir / "checkpoints" / "latest"
    if not latest.is_file():
        raise OspoError(
            f"{run_dir}: no checkpoint to resume from (checkpoints/latest is missing); start without --resume"
        )
    # `latest` is data: it may only name a directory inside checkpoints/.
    path = inside(
        run_dir / "checkpoints", latest.read_text(encoding="utf-8").strip(), "checkpoints/latest"
    )
    missing = [
        n
        for n in (ADAPTER_FILE, ADAPTER_CONFIG, OPTIMIZER_FILE, STATE_FILE)
        if not (path / n).is_file()
    ]
    if missing:
        raise OspoError(
            f"{path}: checkpoint is incomplete (missing {', '.join(missing)}); delete it and resume again"
        )
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise OspoError(f"{path / STATE_FILE}: corrupt checkpoint state ({exc.msg})") from None
    return Checkpoint(
        path=path,
        state=state,
        adapters=load_tensors(path / ADAPTER_FILE, "checkpoint adapters"),
        optimizer=load_tensors(path / OPTIMIZER_FILE, "optimizer state"),
    )


def restore(model: nn.Module, optimizer: optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Load adapters into the model, the optimizer state and the MLX random key.

    Call before building the compiled update: it captures the optimizer's state dict object.
    """
    # Names and shapes before load_weights (which would accept other shapes with strict=False).
    check_weight_shapes(
        dict(tree_flatten(model.trainable_parameters())), checkpoint.adapters,
        checkpoint.path / ADAPTER_FILE,
        hint="it was trained with another base model or LoRA setting; resume with the run's own config.yaml",
    )  # fmt: skip
    model.load_weights(list(checkpoint.adapters.items()), strict=False)
    arrays = dict(checkpoint.optimizer)
    key = arrays.pop(RANDOM_KEY, None)
    optimizer.state = tree_unflatten(list(arrays.items()))
    if key is not None:
        # The state cannot be assigned; a key is (seed >> 32, seed & 0xffffffff), so re-seed.
        hi, lo = (int(v) for v in key.tolist())
        mx.random.seed((hi << 32) | lo)
    mx.eval(model.parameters(), optimizer.state, mx.random.state)
