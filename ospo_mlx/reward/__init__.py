"""Retrieval reward: MLX sentence encoder, catalog index, ranking metrics, coalition values.

`SentenceEncoder` and `load_encoder` load mlx, so they are imported lazily.
"""

from ospo_mlx.reward.bm25 import BM25Retriever
from ospo_mlx.reward.index import CatalogIndex, catalog_hash, top_k
from ospo_mlx.reward.metrics import ESCI_GAINS, Judgments, evaluate_ids
from ospo_mlx.reward.retrieval import (
    EVAL_METRICS,
    RetrievalReward,
    RewardConfig,
    build_reward,
    coalition_text,
)
from ospo_mlx.reward.retrievers import DenseRetriever, Retriever, encoder_retriever

__all__ = [
    "ESCI_GAINS",
    "EVAL_METRICS",
    "BM25Retriever",
    "CatalogIndex",
    "DenseRetriever",
    "Judgments",
    "RetrievalReward",
    "Retriever",
    "RewardConfig",
    "SentenceEncoder",
    "build_reward",
    "catalog_hash",
    "coalition_text",
    "encoder_retriever",
    "evaluate_ids",
    "load_encoder",
    "top_k",
]


def __getattr__(name: str):
    if name in ("SentenceEncoder", "load_encoder"):
        from ospo_mlx.reward import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'ospo_mlx.reward' has no attribute {name!r}")
