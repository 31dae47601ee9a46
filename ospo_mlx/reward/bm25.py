"""BM25 over the catalog's product texts (bm25s), a lexical out-of-distribution retriever.

Products with no query term in common score 0 and are never ranked (the ranking is -1 padded),
so an empty or off-topic text earns no reward by catalog order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ospo_mlx.data.schema import Product, product_text
from ospo_mlx.reward.index import top_k
from ospo_mlx.reward.retrievers import rank_pools


class BM25Retriever:
    """Okapi BM25 (bm25s, Lucene variant) with English stopwords and no stemming."""

    def __init__(self, catalog: dict[str, Product], k1: float = 1.5, b: float = 0.75):
        import bm25s

        self._bm25s = bm25s
        self.product_ids = list(catalog)
        self.name = "bm25"
        corpus = [product_text(p) for p in catalog.values()]
        self.model = bm25s.BM25(k1=k1, b=b)
        self.model.index(
            bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False
        )

    def _tokens(self, text: str) -> list[str]:
        return self._bm25s.tokenize([text], stopwords="en", return_ids=False, show_progress=False)[
            0
        ]

    def _score_rows(self, texts: Sequence[str]) -> np.ndarray:
        """(B, N) scores against the whole catalog; each distinct text is scored once."""
        cache: dict[str, np.ndarray] = {}
        out = np.zeros((len(texts), len(self.product_ids)), dtype=np.float64)
        for b, text in enumerate(texts):
            if text not in cache:
                tokens = self._tokens(text)
                cache[text] = (
                    self.model.get_scores(tokens) if tokens else np.zeros(len(self.product_ids))
                )
            out[b] = cache[text]
        return out

    def scores(self, texts: Sequence[str], rows: np.ndarray) -> np.ndarray:
        return self._score_rows(texts)[:, np.asarray(rows, dtype=np.int64)]

    def rank(
        self, texts: Sequence[str], k: int, pools: Sequence[np.ndarray | None] | None = None
    ) -> np.ndarray:
        full = self._score_rows(texts)
        masked = np.where(full > 0, full, -np.inf)
        if pools is None or all(p is None for p in pools):
            cols, scores = top_k(masked, k)
            ranked = np.where(np.isfinite(scores), cols, -1)
            return np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)

        def score_fn(idx, pool):
            return masked[np.asarray(idx)][:, pool]

        ranked = rank_pools(score_fn, len(texts), k, pools)
        rows = np.arange(len(texts))[:, None]
        hit = np.where(ranked >= 0, masked[rows, np.maximum(ranked, 0)], -np.inf)
        return np.where(np.isfinite(hit), ranked, -1)
