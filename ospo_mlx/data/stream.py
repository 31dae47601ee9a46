"""Reading big parquet/CSV files in Arrow record batches, with progress, for the converters.

`datasets.load_dataset` (tables.read_columns) copies a whole file into its Arrow cache and then
into Python lists: fine for samples, several GB for the real H&M transactions. Here a file is
read batch by batch through pyarrow (the engine under `datasets`), only the needed columns,
so memory is bounded by one batch plus what the converter keeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from ospo_mlx.errors import DataError

# (what, rows done, rows total or None): called after every batch.
ProgressFn = Callable[[str, int, int | None], None]


@dataclass
class StreamOptions:
    """How big files are read."""

    batch_rows: int = field(
        default=1 << 20,
        metadata={"help": "Rows per Arrow record batch of narrow parquet files (labels)."},
    )
    text_batch_rows: int = field(
        default=1 << 15,
        metadata={
            "help": "Rows per batch of parquet files with long text (ESCI products: ~2 KB a "
            "row, so a batch stays ~64 MB)."
        },
    )
    csv_block_bytes: int = field(
        default=64 << 20, metadata={"help": "Bytes of CSV parsed per block."}
    )
    pool_process_min_tasks: int = field(
        default=20_000,
        metadata={
            "help": "H&M: draw the candidate pools in a second process (a second core) while "
            "this one encodes and writes, when at least this many tasks are made (starting it "
            "costs ~0.3 s); -1: never. The output is the same either way."
        },
    )


def _fail(path: Path, exc: Exception) -> DataError:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"{path}: could not read it ({msg[:200]})")


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV file (its first line)."""
    from pyarrow import csv

    _check_file(path)
    try:
        reader = csv.open_csv(path, read_options=csv.ReadOptions(block_size=1 << 16))
    except (pa.ArrowInvalid, OSError) as exc:
        raise _fail(path, exc) from None
    return list(reader.schema.names)


def iter_csv(
    path: str | Path,
    required: Sequence[str],
    types: dict[str, pa.DataType],
    options: StreamOptions | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of the `required` columns of a CSV file, typed as `types`.

    Empty strings and the usual NA spellings are nulls (as pandas reads them); a missing column
    or a value that does not convert is a one-line DataError.
    """
    from pyarrow import csv

    path = Path(path)
    options = options or StreamOptions()
    names = csv_header(path)
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {names[:12]}")
    size = path.stat().st_size
    with path.open("rb") as fh:
        try:
            reader = csv.open_csv(
                fh,
                read_options=csv.ReadOptions(block_size=options.csv_block_bytes),
                convert_options=csv.ConvertOptions(
                    include_columns=list(required),
                    column_types={c: types[c] for c in required if c in types},
                    strings_can_be_null=True,
                ),
            )
            done = 0
            for batch in reader:
                done += batch.num_rows
                if progress is not None:
                    # The row total is unknown up front: estimate it from the bytes read so far
                    # (an overestimate of the bytes by one read-ahead block, corrected at the end).
                    progress(path.name, done, int(done * size / max(fh.tell(), 1)))
                yield batch
        except pa.ArrowInvalid as exc:
            raise _fail(path, exc) from None
    if progress is not None:
        progress(path.name, done, done)


def iter_parquet(
    path: str | Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    options: StreamOptions | None = None,
    progress: ProgressFn | None = None,
) -> Iterator[pa.RecordBatch]:
    """Record batches of a parquet file's `required` and present `optional` columns.

    Optional columns the file lacks come back as all-null string columns.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    options = options or StreamOptions()
    _check_file(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _fail(path, exc) from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {names[:12]}")
    total = pf.metadata.num_rows
    if total == 0:
        raise DataError(f"{path}: the file has no rows")
    present = [c for c in (*required, *optional) if c in names]
    done = 0
    try:
        for batch in pf.iter_batches(batch_size=options.batch_rows, columns=present):
            done += batch.num_rows
            for c in optional:
                if c not in names:
                    batch = batch.append_column(c, pa.nulls(batch.num_rows, pa.string()))
            if progress is not None:
                progress(path.name, done, total)
            yield batch
    except (pa.ArrowInvalid, OSError) as exc:
        raise _fail(path, exc) from None


class RichProgress:
    """A `ProgressFn` drawing one rich progress bar per file: rows (or `unit`), rate and ETA."""

    def __init__(self, console=None, unit: str = "rows"):
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.completed:,.0f} " + unit),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, int] = {}
        self._start: dict[str, float] = {}
        self._last = time.perf_counter()

    def __enter__(self) -> RichProgress:
        self._last = time.perf_counter()
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def __call__(self, what: str, done: int, total: int | None) -> None:
        if what not in self._tasks:
            self._tasks[what] = self._progress.add_task(what, total=total, rate="")
            self._start[what] = self._last  # a file starts where the previous one ended
        self._last = time.perf_counter()
        rate = done / max(time.perf_counter() - self._start[what], 1e-9)
        self._progress.update(
            self._tasks[what], completed=done, total=max(total or done, done), rate=f"{rate:,.0f}/s"
        )
