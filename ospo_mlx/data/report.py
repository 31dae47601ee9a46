"""What a conversion read, kept and dropped (by reason), and writing its output directory.

Every converter fills one ConversionReport so nothing is dropped silently: the CLI prints it
as a table and it is saved, with the options and seed, as summary.json next to the data.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ospo_mlx.data.schema import Product, Task, TaskLine, to_dict, write_jsonl


@dataclass
class ConversionReport:
    """Counts of one conversion: rows read per file, records kept, rows dropped by reason."""

    source: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    kept: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self, what: str, n: int) -> None:
        """Record that `n` rows were read from `what` (a file name or record type)."""
        self.rows_read[what] = self.rows_read.get(what, 0) + int(n)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count `n` rows or records dropped for `reason` (a short phrase)."""
        if n:
            self.dropped[reason] += int(n)

    def note(self, message: str) -> None:
        self.notes.append(message)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "options": self.options,
            "rows_read": dict(self.rows_read),
            "kept": dict(self.kept),
            "dropped": dict(sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0]))),
            "notes": list(self.notes),
            **({"extra": self.extra} if self.extra else {}),
        }

    def rich_table(self) -> Any:
        """A rich Table of the counts (imported lazily: rich is only needed for display)."""
        from rich.table import Table

        table = Table(title=f"ospo data {self.kind}: {self.source}", show_header=True)
        table.add_column("step")
        table.add_column("what")
        table.add_column("count", justify="right")
        for what, n in self.rows_read.items():
            table.add_row("read", what, f"{n:,}")
        for what, n in self.kept.items():
            table.add_row("kept", what, f"{n:,}")
        for reason, n in sorted(self.dropped.items(), key=lambda kv: (-kv[1], kv[0])):
            table.add_row("[yellow]dropped[/]", reason, f"{n:,}")
        if not self.dropped:
            table.add_row("dropped", "(nothing)", "0")
        return table


def write_dataset(
    out_dir: str | Path,
    catalog: Mapping[str, Product] | Iterable[Product],
    tasks: Iterable[Task | TaskLine],
    report: ConversionReport,
) -> dict[str, Path]:
    """Write catalog.jsonl, train.jsonl, test.jsonl and summary.json into `out_dir`.

    Tasks go to the file named by their split ('train' or 'test'), written as they are
    iterated (a generator is never held whole); the kept counts are filled into the report
    before summary.json is written. A TaskLine is written as its ready-made line.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    products = catalog.values() if isinstance(catalog, Mapping) else catalog
    paths = {"catalog": out / "catalog.jsonl", "summary": out / "summary.json"}
    report.kept["catalog products"] = write_jsonl(paths["catalog"], products)
    # Tasks stream to their split's file as they come (a converter may yield millions), each
    # through a temp file renamed at the end, so a killed run leaves no torn file.
    counts: dict[str, int] = {"train": 0, "test": 0}
    files: dict[str, object] = {}
    try:
        for split in counts:
            files[split] = out.joinpath(f"{split}.jsonl.tmp").open("w", encoding="utf-8")
        for task in tasks:
            if task.split not in files:
                files[task.split] = out.joinpath(f"{task.split}.jsonl.tmp").open(
                    "w", encoding="utf-8"
                )
                counts[task.split] = 0
            if type(task) is TaskLine:
                files[task.split].write(task.line + "\n")
            else:
                files[task.split].write(json.dumps(to_dict(task), ensure_ascii=False) + "\n")
            counts[task.split] += 1
    except BaseException:
        for split in files:
            out.joinpath(f"{split}.jsonl.tmp").unlink(missing_ok=True)
        raise
    finally:
        for fh in files.values():
            fh.close()
    for split, n in counts.items():
        paths[split] = out / f"{split}.jsonl"
        out.joinpath(f"{split}.jsonl.tmp").replace(paths[split])
        report.kept[f"{split} tasks"] = n
    tmp = paths["summary"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(paths["summary"])
    return paths
