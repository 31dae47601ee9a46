"""Retrievers behind the reward: dense (MLX sentence encoder) and BM25, behind one protocol.

A retriever knows the catalog's product ids (`product_ids`, in catalog order) and ranks texts
either against the whole catalog or against each text's own candidate pool (integer rows into
`product_ids`). Rankings are integer rows, -1 padded, so metrics stay vectorized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ospo_mlx.reward.index import CatalogIndex, top_k


@runtime_checkable
class Retriever(Protocol):
    """What RetrievalReward needs from a retriever."""

    name: str
    product_ids: list[str]

    def rank(
        self, texts: Sequence[str], k: int, pools: Sequence[np.ndarray | None] | None = None
    ) -> np.ndarray:
        """(B, k) int64 catalog rows, best first, -1 padded; `pools[b]` restricts text b's candidates."""
        ...

    def scores(self, texts: Sequence[str], rows: np.ndarray) -> np.ndarray:
        """(B, len(rows)) relevance scores of each text against the catalog rows `rows`."""
        ...


def rank_pools(score_fn, n_texts: int, k: int, pools: Sequence[np.ndarray]) -> np.ndarray:
    """Rank each text against its own pool; texts sharing a pool are scored in one call.

    `score_fn(text_indices, pool_rows) -> (len(text_indices), len(pool_rows))`.
    """
    out = np.full((n_texts, k), -1, dtype=np.int64)
    groups: dict[bytes, list[int]] = {}
    for b, pool in enumerate(pools):
        groups.setdefault(np.asarray(pool, dtype=np.int64).tobytes(), []).append(b)
    for members in groups.values():
        pool = np.asarray(pools[members[0]], dtype=np.int64)
        if pool.size == 0:
            continue
        cols, _ = top_k(score_fn(members, pool), k)
        out[np.asarray(members)[:, None], np.arange(cols.shape[1])[None, :]] = pool[cols]
    return out


class DenseRetriever:
    """Cosine similarity between MLX sentence embeddings of texts and of products.

    Identical texts within a call are encoded once (`texts_encoded` on the encoder counts).
    """

    def __init__(self, encoder, catalog_index: CatalogIndex, exact: bool = False):
        self.encoder = encoder
        self.catalog_index = catalog_index
        self.product_ids = catalog_index.product_ids
        self.exact = exact
        self.name = f"dense:{encoder.identity['name']}"
        self._recent: dict[str, np.ndarray] = {}  # pooled sums of the last `embed` call

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(B, dim) embeddings; each distinct text is encoded once."""
        unique: dict[str, int] = {}
        inverse = np.array([unique.setdefault(t, len(unique)) for t in texts], dtype=np.int64)
        pooled, weights = self.encoder.encode_pooled(list(unique))
        # The last call's pooled sums, for `pooled_sums` (the stand-in game of segment credit
        # reads those of the coalitions just scored); bounded: one call's texts.
        self._recent = dict(zip(unique, pooled * weights[:, None], strict=True))
        vectors = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return vectors[inverse] if len(texts) else vectors

    def pooled_sums(self, texts: Sequence[str]) -> np.ndarray:
        """(B, dim) pooled sums before normalization (token sums for mean pooling); texts of
        the last `embed` call are not encoded again."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._recent))
        fresh: dict[str, np.ndarray] = {}
        if missing:
            pooled, weights = self.encoder.encode_pooled(missing)
            fresh = dict(zip(missing, pooled * weights[:, None], strict=True))
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        return np.stack([self._recent[t] if t in self._recent else fresh[t] for t in texts])

    def rank_embedded(
        self, queries: np.ndarray, k: int, pools: Sequence[np.ndarray | None] | None = None
    ) -> np.ndarray:
        """`rank` for already-embedded queries (B, dim)."""
        if pools is None or all(p is None for p in pools):
            rows, _ = self.catalog_index.search(queries, k, exact=self.exact)
            return _pad(rows, k)
        if any(p is None for p in pools):
            raise ValueError("either every text has a pool or none has")
        vectors = self.catalog_index.vectors
        return rank_pools(
            lambda idx, pool: queries[idx] @ np.asarray(vectors[pool]).T, len(queries), k, pools
        )

    def rank(self, texts, k, pools=None):
        return self.rank_embedded(self.embed(texts), k, pools)

    def scores(self, texts, rows):
        return self.embed(texts) @ np.asarray(self.catalog_index.vectors[np.asarray(rows)]).T


def _pad(rows: np.ndarray, k: int) -> np.ndarray:
    if rows.shape[1] >= k:
        return rows[:, :k]
    return np.pad(rows, ((0, 0), (0, k - rows.shape[1])), constant_values=-1)


def encoder_retriever(
    catalog: dict, encoder_dir=None, index_dir=None, cache_dir=None, exact: bool = False
) -> DenseRetriever:
    """A dense retriever over `catalog` with the encoder in `encoder_dir` (default MiniLM)."""
    from ospo_mlx.reward.encoder import load_encoder

    encoder = load_encoder(encoder_dir)
    if index_dir is not None:
        cat = CatalogIndex.open(index_dir, encoder, catalog)
    else:
        cat = CatalogIndex.in_memory(catalog, encoder, cache_dir=cache_dir)
    return DenseRetriever(encoder, cat, exact=exact)
