"""Rewards: the `Reward` interface, the retrieval reward (MLX sentence encoder, catalog index,
ranking metrics, coalition values), TRL-style function rewards and their weighted sum.

`SentenceEncoder` and `load_encoder` load mlx, so they are imported lazily.
"""

from ospo_mlx.reward.base import CombinedReward, Reward, part_metrics
from ospo_mlx.reward.bm25 import BM25Retriever
from ospo_mlx.reward.build import build_rewards
from ospo_mlx.reward.config import EVAL_METRICS, RewardConfig
from ospo_mlx.reward.functions import FunctionReward, load_function
from ospo_mlx.reward.index import CatalogIndex, catalog_hash, top_k
from ospo_mlx.reward.metrics import ESCI_GAINS, Judgments, evaluate_ids
from ospo_mlx.reward.retrieval import (
    RetrievalReward,
    build_reward,
    coalition_text,
)
from ospo_mlx.reward.retrievers import DenseRetriever, Retriever, encoder_retriever

__all__ = [
    "ESCI_GAINS",
    "EVAL_METRICS",
    "BM25Retriever",
    "CatalogIndex",
    "CombinedReward",
    "DenseRetriever",
    "FunctionReward",
    "Judgments",
    "RetrievalReward",
    "Retriever",
    "Reward",
    "RewardConfig",
    "SentenceEncoder",
    "build_reward",
    "build_rewards",
    "catalog_hash",
    "coalition_text",
    "encoder_retriever",
    "evaluate_ids",
    "load_encoder",
    "load_function",
    "part_metrics",
    "top_k",
]


def __getattr__(name: str):
    if name in ("SentenceEncoder", "load_encoder"):
        from ospo_mlx.reward import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'ospo_mlx.reward' has no attribute {name!r}")
