"""H&M tasks as JSONL lines built straight from the streaming converter's arrays.

`hm.build_tasks` makes a Task with HistoryItems and string pools per customer, and
`report.write_dataset` turns each into a dict and then JSON: together most of the CPU of a
full-size conversion (878k tasks). Here a line is joined from JSON fragments computed once per
article and once per date, and pools are drawn over catalog rows (`pools.build_pool_rows`,
the same Generator calls in the same order), so the text is `json.dumps(to_dict(task))` byte
for byte (tests/test_stream.py checks whole files against `hm.convert_hm`).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import numpy as np

from ospo_mlx.data.hm import HmConfig
from ospo_mlx.data.pools import build_pool_rows, split_keys
from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import TaskLine

# What `json.dumps(text, ensure_ascii=False)` calls for a str, without its ~1 us of dispatch.
_json = encode_basestring


_SPLITS = {"train": '"train"', "test": '"test"'}


class HmLineEncoder:
    """A shopper-profile task's JSONL line from catalog rows and date codes.

    The keys, their order, separators and escaping are those of `json.dumps(to_dict(task),
    ensure_ascii=False)` for the Task `hm.build_tasks` makes (no query, no candidates).
    """

    def __init__(self, pids: Sequence[str], date_values: Sequence[str]) -> None:
        self.pid = np.array([_json(p) for p in pids], dtype=object)
        # A history item is '{"product_id": P, "date": D}': one half per article, one per date.
        self.item_head = np.array(
            ['{"product_id": ' + q + ', "date": ' for q in self.pid], dtype=object
        )
        self.item_tail = np.array([_json(d) + "}" for d in date_values], dtype=object)

    def line(
        self,
        customer: str,
        target: int,
        history_rows: np.ndarray,
        history_dates: np.ndarray,
        pool: np.ndarray,
        split: str,
    ) -> str:
        """The line of task `hm-<customer>`: target row, history (rows, date codes), pool rows."""
        parts = [
            '{"id": ',
            _json("hm-" + customer),
            ', "kind": "shopper_profile", "targets": {',
            self.pid[target],
            ": 1.0}",
        ]
        if len(history_rows):  # to_dict drops empty fields
            items = self.item_head[history_rows] + self.item_tail[history_dates]
            parts += [', "history": [', ", ".join(items.tolist()), "]"]
        if len(pool):
            parts += [', "pool": [', ", ".join(self.pid[pool].tolist()), "]"]
        parts += [', "split": ', _SPLITS.get(split) or _json(split), "}"]
        return "".join(parts)


def hm_pools(targets: np.ndarray, group_codes: np.ndarray, cfg: HmConfig) -> Iterator[np.ndarray]:
    """Each target's pool (catalog rows), in order: `hm.build_tasks`' draws, one Generator.

    `group_codes` is each catalog row's product group code (the related negatives).
    """
    # Rows of each group in catalog order, as `build_tasks`' by_group lists.
    by_group = np.argsort(group_codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(group_codes))])
    taken = np.zeros(len(group_codes), dtype=bool)
    rng = np.random.default_rng(cfg.seed)
    for target in targets.tolist():
        g = group_codes[target]
        yield build_pool_rows(
            np.array([target], dtype=np.int64),
            cfg.pool_size,
            rng,
            n_catalog=len(group_codes),
            related_rows=by_group[bounds[g] : bounds[g + 1]],
            taken=taken,
            related_fraction=cfg.related_fraction,
        )


# The pipe protocol: a JSON line (options), then arrays as (dtype, size) headers + raw bytes.
# Plain bytes, never pickle: the codebase does not unpickle (tests/test_untrusted.py).
_HEADER = struct.Struct("<4sq")  # dtype string ("<i4", "<i8"), element count; -1 ends


def _write_array(out: Any, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    out.write(_HEADER.pack(array.dtype.str.encode("ascii"), array.size))
    out.write(array.tobytes())


def _read_exactly(stream: Any, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise EOFError("the pool pipe closed early")
    return data


def _read_array(stream: Any) -> np.ndarray | None:
    """The next array, or None at the end marker."""
    dtype, size = _HEADER.unpack(_read_exactly(stream, _HEADER.size))
    if size < 0:
        return None
    kind = np.dtype(dtype.rstrip(b"\0").decode("ascii"))
    if kind not in (np.dtype("<i4"), np.dtype("<i8")):
        raise EOFError(f"unexpected array type {kind} on the pool pipe")
    return np.frombuffer(_read_exactly(stream, size * kind.itemsize), dtype=kind)


def _end(out: Any) -> None:
    out.write(_HEADER.pack(b"<i8", -1))


def hm_pools_in_process(
    targets: np.ndarray, group_codes: np.ndarray, cfg: HmConfig, chunk: int = 4096
) -> Iterator[np.ndarray]:
    """`hm_pools` drawn in a second process (a second core) while this one encodes and writes.

    A plain subprocess (`python -m ospo_mlx.data.hm_lines`), not multiprocessing: spawn would
    re-run a caller's unguarded main script and fork is unsafe beside pyarrow's threads. Its
    input is small (targets, group codes) and chunks come back through a pipe, whose small
    buffer keeps it at most a chunk or two ahead, so memory stays bounded.
    """
    env = dict(os.environ)
    # The child must import this very ospo_mlx, wherever the parent found it.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ospo_mlx.data.hm_lines"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        try:
            options = {"cfg": asdict(cfg), "chunk": chunk}
            proc.stdin.write((json.dumps(options) + "\n").encode("utf-8"))
            _write_array(proc.stdin, np.asarray(targets, dtype=np.int64))
            _write_array(proc.stdin, np.asarray(group_codes, dtype=np.int64))
            proc.stdin.close()
            while (lengths := _read_array(proc.stdout)) is not None:
                flat = _read_array(proc.stdout)
                if flat is None:
                    raise EOFError("the pool pipe ended inside a chunk")
                yield from np.split(flat, np.cumsum(lengths)[:-1])
        except (EOFError, BrokenPipeError, struct.error):
            code = proc.wait()
            raise RuntimeError(
                f"the H&M pool process stopped (exit code {code}); its error is printed above"
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def _pool_worker_main() -> None:
    """The second process: read the inputs from stdin, write `hm_pools` chunks, then None."""
    # Ctrl-C reaches the whole process group: the parent stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    options = json.loads(stdin.readline())
    targets, group_codes = _read_array(stdin), _read_array(stdin)
    cfg = HmConfig(**options["cfg"])
    out = sys.stdout.buffer
    pools = hm_pools(targets, group_codes, cfg)
    while block := list(itertools.islice(pools, options["chunk"])):
        _write_array(out, np.array([len(p) for p in block], dtype=np.int64))
        _write_array(out, np.concatenate(block).astype(np.int32))
    _end(out)
    out.flush()


def hm_task_lines(
    kept: list[str],
    kept_codes: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    dates: np.ndarray,
    articles: np.ndarray,
    pools: Iterator[np.ndarray],
    encoder: HmLineEncoder,
    cfg: HmConfig,
    report: ConversionReport,
) -> Iterator[TaskLine]:
    """`hm.build_tasks` over arrays: one line per kept customer, in `kept` order.

    `starts`/`counts` per customer code index the sorted, merged `dates`/`articles` (catalog
    rows); `pools` yields each kept customer's pool (`hm_pools` of their targets).
    """
    test_ids = split_keys(kept, cfg.test_fraction, cfg.seed)
    report.note(f"split: seeded by customer (test_fraction={cfg.test_fraction}, seed={cfg.seed})")
    for customer, code, pool in zip(kept, kept_codes.tolist(), pools, strict=True):
        end = int(starts[code] + counts[code])
        lo = max(int(starts[code]), end - 1 - cfg.max_history)
        split = "test" if customer in test_ids else "train"
        history = articles[lo : end - 1], dates[lo : end - 1]
        yield TaskLine(split, encoder.line(customer, int(articles[end - 1]), *history, pool, split))


if __name__ == "__main__":
    _pool_worker_main()
