"""The export's output directory: nothing is written outside it, nothing is clobbered silently."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ospo_mlx.errors import OspoError


def prepare_out_dir(out: Path | str, force: bool = False) -> Path:
    """Create `out`, refusing a non-empty one unless `force` (then same-named files are replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OspoError(f"--out {out} is a file; pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OspoError(
            f"--out {out} is not empty; choose a new directory or pass --force to overwrite"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def safe_path(out: Path, name: str | Path) -> Path:
    """`out / name`, refusing names that are absolute or climb out of `out` (e.g. ``../x``).

    File names can come from the run directory or the base model directory, which are data:
    a crafted name must not make the export write elsewhere.
    """
    name = Path(name)
    if name.is_absolute() or ".." in name.parts or str(name) in {"", "."}:
        raise OspoError(
            f"refusing to write {str(name)!r}: export only writes plain names inside --out"
        )
    target = out / name
    root = out.resolve()
    resolved = target.resolve()
    if resolved != root and root not in resolved.parents:
        raise OspoError(f"refusing to write {target}: it resolves outside --out {out}")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def write_text(out: Path, name: str, text: str) -> Path:
    """Write a text file inside `out` atomically (temp file, fsync, rename)."""
    target = safe_path(out, name)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    return target


def write_json(out: Path, name: str, obj: Any) -> Path:
    return write_text(out, name, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def list_files(out: Path) -> list[tuple[str, int]]:
    """Every regular file under `out` as (relative posix path, size in bytes), sorted."""
    files = []
    for path in sorted(out.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files.append((path.relative_to(out).as_posix(), path.stat().st_size))
    return files
