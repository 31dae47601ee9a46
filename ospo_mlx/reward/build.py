"""Build the reward a config asks for: the retrieval reward and/or function rewards, summed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from ospo_mlx.data.schema import Product, Task
from ospo_mlx.reward.base import CombinedReward, Reward
from ospo_mlx.reward.config import RewardConfig
from ospo_mlx.reward.functions import FunctionReward, load_function


def build_rewards(
    config: RewardConfig,
    catalog: Mapping[str, Product],
    *,
    prompt_of: Callable[[Task], str] | None = None,
    cache_dir: Path | None = None,
) -> CombinedReward:
    """sum of retrieval_weight x RetrievalReward (unless 0) and weights[k] x functions[k].

    Loading `config.functions` imports and runs their modules (the user's explicit choice).
    """
    config.validate()
    parts: list[Reward] = []
    weights: list[float] = []
    for spec, weight in zip(
        config.functions, config.weights or [1.0] * len(config.functions), strict=True
    ):
        parts.append(FunctionReward(load_function(spec), config, prompt_of=prompt_of))
        weights.append(weight)
    if config.retrieval_weight > 0:  # the encoder loads only when the retrieval reward is on
        from ospo_mlx.reward.retrieval import build_reward

        retrieval = build_reward(
            dict(catalog), config, encoder_dir=config.encoder, index_dir=config.index,
            cache_dir=cache_dir if config.cache_embeddings else None,
        )  # fmt: skip
        parts.insert(0, retrieval)
        weights.insert(0, config.retrieval_weight)
    return CombinedReward(parts, weights)
