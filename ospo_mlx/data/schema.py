"""Records every part of ospo shares: catalog products and tasks, with JSONL I/O.

Catalog row: product_id, title, and optional brand, color, category, description, bullets
(plus free-form `attributes`). Task row: id, kind, query or history, targets
(product_id -> gain), optional pool (candidate product ids) and split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ospo_mlx.errors import DataError

TaskKind = Literal["query_expansion", "shopper_profile"]
TASK_KINDS: tuple[str, ...] = ("query_expansion", "shopper_profile")


@dataclass
class Product:
    product_id: str
    title: str
    brand: str | None = None
    color: str | None = None
    category: str | None = None
    description: str | None = None
    bullets: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


def product_text(product: Product, max_chars: int = 512) -> str:
    """The one text a retriever sees for a product: title, then brand/color/category, then prose.

    Fields are joined with " | " in a fixed order; empty fields are skipped; the result is cut
    to `max_chars` so long descriptions do not dominate the embedding.
    """
    parts = [product.title]
    for label, value in (
        ("brand", product.brand),
        ("color", product.color),
        ("category", product.category),
    ):
        if value:
            parts.append(f"{label}: {value}")
    for key in sorted(product.attributes):
        parts.append(f"{key}: {product.attributes[key]}")
    for prose in (product.description, product.bullets):
        if prose:
            parts.append(prose)
    return " | ".join(p.strip() for p in parts if p and p.strip())[:max_chars]


@dataclass
class HistoryItem:
    product_id: str
    date: str | None = None


@dataclass
class Task:
    id: str
    kind: str
    targets: dict[str, float]
    query: str | None = None
    history: list[HistoryItem] = field(default_factory=list)
    pool: list[str] | None = None
    split: str = "train"
    # Phrases the prompt offers to choose from (the controlled choice task); None elsewhere.
    candidates: list[str] | None = None

    def relevant_ids(self) -> list[str]:
        return [pid for pid, gain in self.targets.items() if gain > 0]


@dataclass(frozen=True, slots=True)
class TaskLine:
    """A task already encoded as its JSONL line (no newline): what `write_dataset` writes.

    Converters that build lines straight from arrays (`hm_lines`) yield these instead of Tasks;
    `line` must equal `json.dumps(to_dict(task), ensure_ascii=False)` of the Task it stands for.
    """

    split: str
    line: str


def _require(row: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in row:
        raise DataError(f"{where}: missing column '{key}'")
    value = row[key]
    if not isinstance(value, kind):
        raise DataError(
            f"{where}: column '{key}' should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    return value


def product_from_dict(row: dict[str, Any], where: str = "catalog row") -> Product:
    pid = _require(row, "product_id", (str, int), where)
    title = _require(row, "title", str, where)
    known = {f for f in Product.__dataclass_fields__}
    extra = {k: v for k, v in row.items() if k not in known}
    attributes = row.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise DataError(f"{where}: column 'attributes' should be an object of name -> value")
    if extra:
        raise DataError(f"{where}: unknown column(s) {sorted(extra)}; allowed: {sorted(known)}")
    return Product(
        product_id=str(pid),
        title=title,
        brand=row.get("brand"),
        color=row.get("color"),
        category=row.get("category"),
        description=row.get("description"),
        bullets=row.get("bullets"),
        attributes={str(k): str(v) for k, v in attributes.items()},
    )


def task_from_dict(row: dict[str, Any], where: str = "task row") -> Task:
    tid = _require(row, "id", (str, int), where)
    kind = _require(row, "kind", str, where)
    if kind not in TASK_KINDS:
        raise DataError(f"{where}: kind '{kind}' is not one of {list(TASK_KINDS)}")
    targets = _require(row, "targets", dict, where)
    if not targets:
        raise DataError(f"{where}: 'targets' is empty; a task needs at least one relevant product")
    try:
        targets = {str(k): float(v) for k, v in targets.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: 'targets' gains must be numbers ({exc})") from None
    history = [
        HistoryItem(str(h["product_id"]), h.get("date"))
        if isinstance(h, dict)
        else HistoryItem(str(h))
        for h in row.get("history") or []
    ]
    if kind == "query_expansion" and not isinstance(row.get("query"), str):
        raise DataError(f"{where}: a query_expansion task needs a string 'query'")
    if kind == "shopper_profile" and not history:
        raise DataError(f"{where}: a shopper_profile task needs a non-empty 'history'")
    pool = row.get("pool")
    candidates = row.get("candidates")
    if candidates is not None and (
        not isinstance(candidates, list) or not all(isinstance(c, str) for c in candidates)
    ):
        raise DataError(f"{where}: 'candidates' should be a list of strings")
    return Task(
        id=str(tid),
        kind=kind,
        targets=targets,
        query=row.get("query"),
        history=history,
        pool=[str(p) for p in pool] if pool is not None else None,
        split=str(row.get("split", "train")),
        candidates=list(candidates) if candidates else None,
    )


def to_dict(record: Product | Task) -> dict[str, Any]:
    """A JSON-ready dict without empty optional fields (keys in field order, as `asdict`)."""
    if type(record) is Task:
        # Built by hand: `asdict` deep-copies recursively and was most of the time of writing
        # a million H&M tasks; the result (and so every JSONL byte) is the same.
        raw: dict[str, Any] = {
            "id": record.id,
            "kind": record.kind,
            "targets": dict(record.targets),
            "query": record.query,
            "history": [{"product_id": h.product_id, "date": h.date} for h in record.history],
            "pool": list(record.pool) if record.pool is not None else None,
            "split": record.split,
            "candidates": list(record.candidates) if record.candidates is not None else None,
        }
    elif type(record) is Product:
        # By hand too (catalogs of a million products); attributes copied as `asdict` does.
        raw = {
            "product_id": record.product_id,
            "title": record.title,
            "brand": record.brand,
            "color": record.color,
            "category": record.category,
            "description": record.description,
            "bullets": record.bullets,
            "attributes": dict(record.attributes),
        }
    else:
        raw = asdict(record)
    return {k: v for k, v in raw.items() if v not in (None, [], {})}


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; malformed JSON is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                )
            yield lineno, obj


def write_jsonl(path: str | Path, records: Iterable[Product | Task | dict[str, Any]]) -> int:
    """Write records as JSONL (atomically: temp file then rename). Returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            obj = rec if isinstance(rec, dict) else to_dict(rec)
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def load_catalog(path: str | Path) -> dict[str, Product]:
    """Read catalog.jsonl into product_id -> Product; duplicate ids are an error."""
    catalog: dict[str, Product] = {}
    for lineno, row in read_jsonl(path):
        product = product_from_dict(row, where=f"{path}:{lineno}")
        if product.product_id in catalog:
            raise DataError(f"{path}:{lineno}: duplicate product_id '{product.product_id}'")
        catalog[product.product_id] = product
    if not catalog:
        raise DataError(f"{path}: the catalog is empty")
    return catalog


def load_tasks(path: str | Path, catalog: dict[str, Product] | None = None) -> list[Task]:
    """Read tasks.jsonl; with a catalog, every target/pool/history id must exist in it."""
    tasks: list[Task] = []
    seen: set[str] = set()
    for lineno, row in read_jsonl(path):
        where = f"{path}:{lineno}"
        task = task_from_dict(row, where=where)
        if task.id in seen:
            raise DataError(f"{where}: duplicate task id '{task.id}'")
        seen.add(task.id)
        if catalog is not None:
            ids = list(task.targets) + (task.pool or []) + [h.product_id for h in task.history]
            missing = [pid for pid in ids if pid not in catalog]
            if missing:
                raise DataError(
                    f"{where}: product id(s) {missing[:3]} not in the catalog; "
                    "rebuild the tasks and catalog together with `ospo data`"
                )
        tasks.append(task)
    if not tasks:
        raise DataError(f"{path}: no tasks in the file")
    return tasks


def find_task(
    catalog: dict[str, Product],
    *,
    tasks: str | Path | None = None,
    task_id: str | None = None,
    task_json: str | None = None,
) -> Task:
    """One task: `task_id` in the `tasks` JSONL, or a task given as one JSON object."""
    from ospo_mlx.errors import OspoError

    if task_json is not None:
        try:
            return task_from_dict(json.loads(task_json), where="--task-json")
        except json.JSONDecodeError as exc:
            raise OspoError(f"--task-json is not valid JSON ({exc.msg})") from None
    if tasks is None or task_id is None:
        raise OspoError("pass --tasks FILE --task ID, or --task-json '{...}'")
    found = [t for t in load_tasks(tasks, catalog) if t.id == task_id]
    if not found:
        raise OspoError(f"task '{task_id}' is not in {tasks}; check the id (the 'id' column)")
    return found[0]
