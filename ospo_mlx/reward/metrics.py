"""Ranking metrics, vectorized over a batch (pure NumPy).

Everything starts from a gain matrix `gains (B, K)`: the relevance gain of the product at each
rank of each ranking (0 for irrelevant products and for padding). `Judgments` builds it from
integer rankings in one vectorized lookup; `gains_from_ids` from lists of product ids.

Definitions (k = the cutoff, rank r counted from 1):
- DCG@k = sum_r gain_r / log2(r + 1); NDCG@k = DCG@k / ideal DCG@k over all the task's targets
  (a ranking that cannot reach a target, e.g. a pool without it, simply scores lower).
- recall@k = relevant found in the top k / relevant in total; hit@k = 1 if any is found.
- MRR = 1 / rank of the first relevant product (0 when none is ranked).
- AP = sum over relevant ranks r of precision@r, divided by the number of relevant products.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

# ESCI labels -> graded gains (Exact, Substitute, Complement, Irrelevant).
ESCI_GAINS: dict[str, float] = {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0}
METRIC_NAMES = ("ndcg", "recall", "hit", "mrr", "ap")


def discounts(k: int) -> np.ndarray:
    """1 / log2(r + 1) for ranks r = 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def dcg(gains: np.ndarray) -> np.ndarray:
    """DCG of each row of `gains (B, K)`."""
    gains = np.asarray(gains, dtype=np.float64)
    return gains @ discounts(gains.shape[-1])


def ndcg(gains: np.ndarray, ideal: np.ndarray) -> np.ndarray:
    """NDCG: DCG of `gains (B, K)` over the DCG of `ideal (B, K)` (0 where the ideal is 0)."""
    ideal_dcg = dcg(ideal)
    return np.where(ideal_dcg > 0, dcg(gains) / np.where(ideal_dcg > 0, ideal_dcg, 1.0), 0.0)


def recall(gains: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    found = (np.asarray(gains) > 0).sum(axis=-1)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    return np.where(n_relevant > 0, found / np.maximum(n_relevant, 1.0), 0.0)


def hit(gains: np.ndarray) -> np.ndarray:
    return (np.asarray(gains) > 0).any(axis=-1).astype(np.float64)


def reciprocal_rank(gains: np.ndarray) -> np.ndarray:
    rel = np.asarray(gains) > 0
    first = rel.argmax(axis=-1)
    return np.where(rel.any(axis=-1), 1.0 / (first + 1.0), 0.0)


def average_precision(gains: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    rel = (np.asarray(gains) > 0).astype(np.float64)
    precision_at_r = np.cumsum(rel, axis=-1) / np.arange(1, rel.shape[-1] + 1)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    return np.where(
        n_relevant > 0, (precision_at_r * rel).sum(-1) / np.maximum(n_relevant, 1.0), 0.0
    )


def parse_metric(name: str) -> tuple[str, int | None]:
    """'ndcg@10' -> ('ndcg', 10); 'mrr' -> ('mrr', None). Also accepts 'map' for 'ap'."""
    m = re.fullmatch(r"([a-z]+)(?:@(\d+))?", name.strip().lower())
    if not m or m.group(1).replace("map", "ap") not in METRIC_NAMES:
        raise ValueError(
            f"unknown metric '{name}'; use one of {', '.join(METRIC_NAMES)} with an optional @k"
        )
    return m.group(1).replace("map", "ap"), int(m.group(2)) if m.group(2) else None


def metric_depth(names: Sequence[str], default: int) -> int:
    """The ranking depth needed to compute all of `names`."""
    return max((parse_metric(n)[1] or default) for n in names)


class Judgments:
    """Targets of T tasks in an integer product space, for vectorized gain lookups.

    `targets[t]` maps product id -> gain; `index` maps product id -> integer id (the retriever's
    catalog order). Targets missing from `index` still count in the ideal DCG and in recall's
    denominator: they just can never be retrieved. `binary=True` turns every positive gain into 1.
    """

    def __init__(
        self,
        targets: Sequence[Mapping[str, float]],
        index: Mapping[str, int],
        *,
        binary: bool = False,
        gain_map: Mapping[str, float] | None = None,
    ):
        self.n_tasks = len(targets)
        self.n_items = len(index)
        keys, vals, all_gains = [], [], []
        for t, tgt in enumerate(targets):
            gains = []
            for pid, g in tgt.items():
                g = map_gain(float(g), gain_map)
                g = float(g > 0) if binary else g
                gains.append(g)
                if g > 0 and pid in index:
                    keys.append(t * self.n_items + index[pid])
                    vals.append(g)
            all_gains.append(sorted((g for g in gains if g > 0), reverse=True))
        order = np.argsort(np.asarray(keys, dtype=np.int64), kind="stable")
        self._keys = np.asarray(keys, dtype=np.int64)[order]
        self._vals = np.asarray(vals, dtype=np.float64)[order]
        self._sorted_gains = all_gains
        self.n_relevant = np.array([len(g) for g in all_gains], dtype=np.float64)

    def ideal(self, k: int) -> np.ndarray:
        """(T, k) best possible gains in rank order."""
        out = np.zeros((self.n_tasks, k))
        for t, g in enumerate(self._sorted_gains):
            out[t, : min(k, len(g))] = g[:k]
        return out

    def gains(self, ranked: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """(B, K) gains of `ranked (B, K)` integer ids (-1 = padding); row b uses task `rows[b]`."""
        ranked = np.asarray(ranked, dtype=np.int64)
        rows = np.arange(ranked.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
        if self._keys.size == 0 or ranked.size == 0:
            return np.zeros(ranked.shape)
        query = rows[:, None] * self.n_items + ranked
        pos = np.minimum(np.searchsorted(self._keys, query), self._keys.size - 1)
        found = (self._keys[pos] == query) & (ranked >= 0)
        return np.where(found, self._vals[pos], 0.0)


def map_gain(gain: float, gain_map: Mapping[str, float] | None) -> float:
    """Remap a stored gain through `gain_map` (keys are the stored gains as strings, e.g. '3')."""
    if not gain_map:
        return gain
    for key in (repr(gain), str(gain), str(int(gain)) if float(gain).is_integer() else None):
        if key is not None and key in gain_map:
            return float(gain_map[key])
    return gain


def compute(
    names: Sequence[str],
    gains: np.ndarray,
    ideal: np.ndarray,
    n_relevant: np.ndarray,
    default_k: int = 10,
) -> dict[str, np.ndarray]:
    """Every metric in `names` from full-depth `gains (B, K)`, `ideal (B, >=K)` and `n_relevant (B,)`."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        metric, k = parse_metric(name)
        if metric in ("ndcg", "recall", "hit"):
            k = k or default_k
        g = gains[:, :k] if k else gains
        if k and g.shape[1] < k:  # a ranking shorter than k (small pool): pad with zeros
            g = np.pad(g, ((0, 0), (0, k - g.shape[1])))
        if metric == "ndcg":
            out[name] = ndcg(g, ideal[:, :k])
        elif metric == "recall":
            out[name] = recall(g, n_relevant)
        elif metric == "hit":
            out[name] = hit(g)
        elif metric == "mrr":
            out[name] = reciprocal_rank(g)
        else:
            out[name] = average_precision(g, n_relevant)
    return out


def gains_from_ids(
    ranked_ids: Sequence[Sequence[str]], targets: Sequence[Mapping[str, float]], k: int
) -> np.ndarray:
    """(B, k) gains of ranked product-id lists (shorter lists are zero-padded)."""
    out = np.zeros((len(ranked_ids), k))
    for b, (ids, tgt) in enumerate(zip(ranked_ids, targets, strict=True)):
        for r, pid in enumerate(list(ids)[:k]):
            out[b, r] = max(float(tgt.get(pid, 0.0)), 0.0)
    return out


def evaluate_ids(
    names: Sequence[str],
    ranked_ids: Sequence[Sequence[str]],
    targets: Sequence[Mapping[str, float]],
    *,
    binary: bool = False,
    default_k: int = 10,
) -> dict[str, np.ndarray]:
    """Metrics of ranked product-id lists against target dicts (product id -> gain)."""
    ids = sorted({pid for r in ranked_ids for pid in r} | {pid for t in targets for pid in t})
    index = {pid: i for i, pid in enumerate(ids)}
    judg = Judgments(targets, index, binary=binary)
    depth = max(metric_depth(names, default_k), max((len(r) for r in ranked_ids), default=1))
    ranked = np.full((len(ranked_ids), depth), -1, dtype=np.int64)
    for b, r in enumerate(ranked_ids):
        ranked[b, : len(r)] = [index[pid] for pid in r]
    return compute(names, judg.gains(ranked), judg.ideal(depth), judg.n_relevant, default_k)
