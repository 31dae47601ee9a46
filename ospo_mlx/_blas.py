"""Load an optimized BLAS into the process before MLX does its first matmul.

MLX's Linux CPU wheel links a reference BLAS that is ~50x slower than OpenBLAS.
Preloading ``libopenblas.so.0`` with ``RTLD_GLOBAL`` before ``mlx.core`` is imported
makes the dynamic linker resolve MLX's BLAS symbols to it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# Debian/Ubuntu (libopenblas0-pthread), Fedora, Arch, conda-ish prefixes: tried in order.
CANDIDATE_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)


@dataclass
class BlasState:
    """What happened when ospo tried to load an optimized BLAS (shown by `ospo doctor`)."""

    status: str  # "loaded" | "off" | "not-linux" | "not-found" | "failed" | "too-late"
    path: str | None = None
    detail: str = ""

    @property
    def optimized(self) -> bool:
        return self.status == "loaded"


STATE = BlasState(status="not-attempted")


def _find_openblas() -> str | None:
    for candidate in CANDIDATE_PATHS:
        if Path(candidate).exists():
            return candidate
    found = ctypes.util.find_library("openblas")
    return found


def load_optimized_blas() -> BlasState:
    """Preload OpenBLAS on Linux, honouring ``OSPO_BLAS=<path>|off``. Safe to call twice."""
    global STATE
    if STATE.status != "not-attempted":
        return STATE
    choice = os.environ.get("OSPO_BLAS", "").strip()
    if choice.lower() in {"off", "0", "none", "false"}:
        STATE = BlasState("off", detail="disabled by OSPO_BLAS=off")
        return STATE
    if not sys.platform.startswith("linux"):
        STATE = BlasState("not-linux", detail="MLX uses Accelerate/Metal on macOS")
        return STATE
    if "mlx.core" in sys.modules:
        # The reference BLAS symbols are already bound; loading now would not help.
        STATE = BlasState("too-late", detail="mlx.core was imported before ospo_mlx")
        return STATE
    path = choice or _find_openblas()
    if not path:
        STATE = BlasState(
            "not-found",
            detail="no libopenblas.so.0 found; install it (Debian/Ubuntu: "
            "apt-get install libopenblas0-pthread) or set OSPO_BLAS=/path/to/libopenblas.so.0",
        )
        return STATE
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        STATE = BlasState("failed", path=path, detail=str(exc))
        return STATE
    STATE = BlasState("loaded", path=path)
    return STATE
