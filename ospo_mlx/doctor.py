"""Environment report for `ospo doctor`: MLX build, device, BLAS, measured matmul speed."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass

from ospo_mlx import BLAS
from ospo_mlx.models.assets import asset_status


@dataclass
class DoctorReport:
    ospo_version: str
    python: str
    platform: str
    mlx_version: str
    backend: str
    device: str
    blas_status: str
    blas_path: str | None
    blas_detail: str
    matmul_gflops: float
    matmul_n: int
    assets: dict[str, str]
    training_defaults: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def mlx_backend() -> str:
    """Which MLX backend this process runs on: metal, cuda or cpu."""
    import mlx.core as mx

    if mx.metal.is_available():
        return "metal"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda"
    return "cpu"


def measure_matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` float32 n x n matmul throughput on the default device."""
    import mlx.core as mx

    a = mx.random.normal((n, n))
    b = mx.random.normal((n, n))
    mx.eval(a @ b)  # warm-up: first call pays for allocation and kernel setup
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def training_defaults() -> str:
    """What `model.dequantize: null` resolves to on this device (see should_dequantize)."""
    from ospo_mlx.models.load import should_dequantize

    if should_dequantize(None):
        return "float weights (MLX's CPU quantized matmuls are slow)"
    return "quantized weights kept"


def run_doctor(matmul_n: int = 1024) -> DoctorReport:
    import mlx.core as mx

    from ospo_mlx import __version__

    return DoctorReport(
        ospo_version=__version__,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        mlx_version=mx.__version__,
        backend=mlx_backend(),
        device=str(mx.default_device()),
        blas_status=BLAS.status,
        blas_path=BLAS.path,
        blas_detail=BLAS.detail,
        matmul_gflops=measure_matmul_gflops(matmul_n),
        matmul_n=matmul_n,
        assets=asset_status(),
        training_defaults=training_defaults(),
    )
