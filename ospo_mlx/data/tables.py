"""Reading local parquet/CSV/JSON files through `datasets`, offline, into checked columns.

Converters see plain Python lists per column; every problem (missing file or column, empty
file, unreadable content, a value of the wrong type) becomes a one-line DataError naming the
file, row and column.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ospo_mlx.errors import DataError

LOADERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def cache_dir() -> Path:
    """Where `datasets` keeps its Arrow cache for ospo (never the user's HF cache)."""
    root = os.environ.get("OSPO_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "ospo-cache")
    return Path(root) / "datasets"


def read_columns(
    path: str | Path, required: Sequence[str], optional: Sequence[str] = ()
) -> tuple[dict[str, list[Any]], int]:
    """Columns of a local parquet/CSV/JSON file as lists, and the row count.

    Missing `required` columns, an empty file or unreadable content raise DataError; missing
    `optional` columns come back as lists of None.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; use .parquet, .csv or .json"
        )
    # No network, ever: local files only, with a private cache.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
        ds = datasets.load_dataset(
            loader, data_files=str(path), split="train", cache_dir=str(cache_dir())
        )
    except Exception as exc:  # datasets/pyarrow/pandas raise many types for malformed files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: could not read it as {loader} ({msg[:200]})") from None
    if ds.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {ds.column_names[:12]}")
    cols: dict[str, list[Any]] = {}
    for name in (*required, *optional):
        if name in ds.column_names:
            cols[name] = ds.data.column(name).to_pylist()
        else:
            cols[name] = [None] * ds.num_rows
    return cols, ds.num_rows


def as_text(
    value: Any, path: Path | str, row: int, column: str, *, allow_none: bool = True
) -> str | None:
    """A cell as a stripped string (numbers are accepted and converted); '' becomes None."""
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        if allow_none:
            return None
        raise DataError(f"{path}: row {row}, column '{column}': value is missing")
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = str(value).strip()
        return text or None
    raise DataError(
        f"{path}: row {row}, column '{column}': expected text, got {type(value).__name__}"
    )


def as_int(value: Any, path: Path | str, row: int, column: str) -> int:
    """A cell as an integer (ints, integral floats and digit strings)."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise DataError(
            f"{path}: row {row}, column '{column}': expected an integer, got {value!r}"
        ) from None
