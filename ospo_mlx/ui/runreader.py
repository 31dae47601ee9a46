"""Incremental reader of a run directory (docs/run_format.md) for the inspector and `--static`.

The trainer appends one complete JSON line at a time, so a reader remembers how far it got in
each JSONL file and, on every `poll()`, parses only the complete lines appended since. A line
that does not parse (or lacks a required key) is skipped and counted, never dropped silently;
a trailing line without its newline is left for the next poll (the writer may still be on it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ospo_mlx.errors import DataError, OspoError

ROLLOUTS = "rollouts.jsonl"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"

# Keys a rollout line must carry to be shown at all; the attribution keys may be absent
# (e.g. a GRPO run with log_attributions off) and default to empty lists.
_REQUIRED = ("step", "group", "member", "completion", "reward", "advantage")


@dataclass(frozen=True)
class RolloutRecord:
    """One completion of rollouts.jsonl, typed. Unknown extra keys are kept in `extra`."""

    step: int
    group: int
    member: int
    completion: str
    reward: float
    advantage: float
    task_id: str = ""
    prompt: str = ""
    token_ids: list[int] = field(default_factory=list)
    token_offsets: list[tuple[int, int]] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)
    coalitions: list[list[int]] = field(default_factory=list)
    coalition_values: list[float] = field(default_factory=list)
    owen: list[float] = field(default_factory=list)
    token_weights: list[float] = field(default_factory=list)
    token_advantages: list[float] = field(default_factory=list)
    algorithm: str = "ospo"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> RolloutRecord:
        """Build a record from one parsed line; raises ValueError/TypeError/KeyError if malformed."""
        missing = [k for k in _REQUIRED if k not in row]
        if missing:
            raise KeyError(f"missing key(s) {', '.join(missing)}")
        known = set(cls.__dataclass_fields__) - {"extra"}
        completion = str(row["completion"])
        rec = cls(
            step=int(row["step"]),
            group=int(row["group"]),
            member=int(row["member"]),
            completion=completion,
            reward=float(row["reward"]),
            advantage=float(row["advantage"]),
            task_id=str(row.get("task_id", "")),
            prompt=str(row.get("prompt", "")),
            token_ids=[int(t) for t in row.get("token_ids") or []],
            token_offsets=[(int(a), int(b)) for a, b in row.get("token_offsets") or []],
            segments=[(int(a), int(b)) for a, b in row.get("segments") or []],
            coalitions=[[int(j) for j in c] for c in row.get("coalitions") or []],
            coalition_values=[float(v) for v in row.get("coalition_values") or []],
            owen=[float(v) for v in row.get("owen") or []],
            token_weights=[float(v) for v in row.get("token_weights") or []],
            token_advantages=[float(v) for v in row.get("token_advantages") or []],
            algorithm=str(row.get("algorithm", "ospo")),
            extra={k: v for k, v in row.items() if k not in known},
        )
        rec.validate()
        return rec

    def validate(self) -> None:
        """Check the cross-field invariants the views rely on (raise ValueError if broken)."""
        n = len(self.completion)
        for a, b in [*self.token_offsets, *self.segments]:
            if not 0 <= a <= b <= n:
                raise ValueError(f"span ({a}, {b}) outside the completion (length {n})")
        if self.token_advantages and len(self.token_advantages) != len(self.token_offsets):
            raise ValueError("token_advantages and token_offsets differ in length")
        if len(self.coalitions) != len(self.coalition_values):
            raise ValueError("coalitions and coalition_values differ in length")
        if self.owen and len(self.owen) != len(self.segments):
            raise ValueError("owen and segments differ in length")

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.step, self.group, self.member)

    @property
    def length(self) -> int:
        """Completion length in tokens (falls back to characters when no tokens were logged)."""
        return len(self.token_ids) or len(self.token_offsets) or len(self.completion)

    @property
    def segment_texts(self) -> list[str]:
        return [self.completion[a:b] for a, b in self.segments]

    def segment_token_counts(self) -> list[int]:
        """Tokens whose span overlaps each segment (a token straddling two counts for both)."""
        return [
            sum(1 for ta, tb in self.token_offsets if ta < b and tb > a) for a, b in self.segments
        ]

    def coalition_texts(self, sep: str = " … ") -> list[str]:
        texts = self.segment_texts
        return [sep.join(texts[j] for j in c if 0 <= j < len(texts)) for c in self.coalitions]


@dataclass
class _Tail:
    """Read position in one append-only JSONL file."""

    path: Path
    offset: int = 0
    partial: bool = False  # a trailing line without newline is waiting

    def read_new_lines(self) -> list[tuple[int, bytes]]:
        """Return (byte offset, line) for each complete line appended since the last call."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:  # truncated or replaced: start over
            self.offset = 0
        if size == self.offset:
            self.partial = False
            return []
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        end = chunk.rfind(b"\n")
        self.partial = end != len(chunk) - 1
        if end < 0:
            return []
        out, pos = [], 0
        for line in chunk[: end + 1].split(b"\n")[:-1]:
            out.append((self.offset + pos, line))
            pos += len(line) + 1
        self.offset += end + 1
        return out


@dataclass
class PollResult:
    """What one `RunReader.poll()` found."""

    new_records: list[RolloutRecord]
    new_metrics: int
    new_warnings: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.new_records or self.new_metrics or self.new_warnings)


class RunReader:
    """The contents of a run directory, updated incrementally with `poll()`.

    Records are indexed step -> group -> member. A later line with the same
    (step, group, member) replaces the earlier one (a resumed run re-logging a step).
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        if not self.run_dir.exists():
            raise OspoError(
                f"run directory {self.run_dir} does not exist; pass the --out of `ospo train`"
            )
        if not self.run_dir.is_dir():
            raise OspoError(
                f"{self.run_dir} is not a directory; pass a run directory (runs/<name>)"
            )
        if not any((self.run_dir / f).exists() for f in (ROLLOUTS, METRICS, CONFIG)):
            raise OspoError(
                f"{self.run_dir} is not a run directory (no {ROLLOUTS}, {METRICS} or {CONFIG}); "
                "pass the directory `ospo train` wrote"
            )
        self.config: dict[str, Any] = {}
        self.metrics: list[dict[str, Any]] = []
        self.steps: dict[int, dict[int, dict[int, RolloutRecord]]] = {}
        self.skipped_lines = 0
        self.warnings: list[str] = []
        self._rollouts = _Tail(self.run_dir / ROLLOUTS)
        self._metrics = _Tail(self.run_dir / METRICS)
        self._load_config()
        self.poll()

    # -- reading ---------------------------------------------------------------------------
    def _load_config(self) -> None:
        path = self.run_dir / CONFIG
        if not path.exists():
            return
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            self._warn(
                f"{CONFIG} could not be parsed ({type(exc).__name__}); header fields are unknown"
            )
            return
        self.config = data if isinstance(data, dict) else {}

    def _warn(self, message: str) -> str:
        self.warnings.append(message)
        return message

    def _skip(self, name: str, offset: int, reason: str) -> str:
        self.skipped_lines += 1
        return self._warn(f"{name} byte {offset}: corrupt line skipped ({reason})")

    def poll(self) -> PollResult:
        """Read the lines appended since the last poll; return what is new."""
        warnings: list[str] = []
        records: list[RolloutRecord] = []
        for offset, line in self._rollouts.read_new_lines():
            if not line.strip():
                continue
            try:
                rec = RolloutRecord.from_dict(_json_object(line))
            except (ValueError, TypeError, KeyError) as exc:
                reason = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
                warnings.append(self._skip(ROLLOUTS, offset, reason))
                continue
            self.steps.setdefault(rec.step, {}).setdefault(rec.group, {})[rec.member] = rec
            records.append(rec)
        n_metrics = 0
        for offset, line in self._metrics.read_new_lines():
            if not line.strip():
                continue
            try:
                row = _json_object(line)
            except (ValueError, TypeError) as exc:
                warnings.append(self._skip(METRICS, offset, type(exc).__name__))
                continue
            self.metrics.append(row)
            n_metrics += 1
        return PollResult(records, n_metrics, warnings)

    def finish(self) -> list[str]:
        """For one-shot readers: report trailing incomplete lines as skipped (with a warning)."""
        out = []
        for tail in (self._rollouts, self._metrics):
            if tail.partial:
                self.skipped_lines += 1
                out.append(self._warn(f"{tail.path.name}: trailing incomplete line skipped"))
                tail.partial = False
        return out

    # -- queries ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        name = _find_key(self.config, "name")
        return str(name) if isinstance(name, str) and name else self.run_dir.resolve().name

    @property
    def algorithm(self) -> str:
        algo = _find_key(self.config, "algorithm")
        if algo is None:
            for groups in self.steps.values():
                for members in groups.values():
                    for rec in members.values():
                        return rec.algorithm
        return str(algo or "?")

    @property
    def model(self) -> str:
        model = _find_key(self.config, "model")
        if isinstance(model, dict):  # a nested `model: {name: ...}` section
            if "name" in model and model["name"] is None:
                return "smollm2-135m-instruct"  # null = the embedded default model
            model = model.get("path") or model.get("name")
        return str(model or "?")

    @property
    def warmup_steps(self) -> int:
        """Supervised warm-up updates before RL (0 when the run had none)."""
        config = self.config if isinstance(self.config, dict) else {}
        warmup = config.get("sft", config.get("warmup"))  # `warmup` in runs made before the rename
        steps = warmup.get("steps") if isinstance(warmup, dict) else None
        return steps if isinstance(steps, int) and steps > 0 else 0

    @property
    def last_step(self) -> int | None:
        steps = [m.get("step") for m in self.metrics if isinstance(m.get("step"), int)]
        steps += list(self.steps)
        return max(steps) if steps else None

    def metric_series(self, key: str) -> list[float]:
        """Values of one metrics.jsonl key, in step order, skipping steps that lack it."""
        return [float(m[key]) for m in self.metrics if isinstance(m.get(key), (int, float))]

    def step_ids(self) -> list[int]:
        return sorted(self.steps)

    def group_ids(self, step: int) -> list[int]:
        return sorted(self.steps.get(step, {}))

    def members(self, step: int, group: int) -> list[RolloutRecord]:
        return [m for _, m in sorted(self.steps.get(step, {}).get(group, {}).items())]

    def record(self, step: int, group: int, member: int) -> RolloutRecord:
        try:
            return self.steps[step][group][member]
        except KeyError:
            raise DataError(
                f"no completion at step {step}, group {group}, member {member} in {self.run_dir / ROLLOUTS}; "
                f"steps present: {_ranges(self.step_ids())}"
            ) from None

    def all_records(self) -> list[RolloutRecord]:
        return [
            rec for s in self.step_ids() for g in self.group_ids(s) for rec in self.members(s, g)
        ]


def _json_object(line: str) -> dict[str, Any]:
    """One JSONL line as a dict; ValueError/TypeError for anything else."""
    row = json.loads(line)
    if not isinstance(row, dict):
        raise TypeError("not a JSON object")
    return row


def _ranges(ids: list[int]) -> str:
    """Compact '1-5, 8' form of sorted ints (for error messages)."""
    if not ids:
        return "none"
    parts, start, prev = [], ids[0], ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)


def _find_key(config: dict[str, Any], key: str) -> Any:
    """`config[key]`, else the first `key` in a nested section (the config layout may nest)."""
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, dict):
            found = _find_key(value, key)
            if found is not None:
                return found
    return None
