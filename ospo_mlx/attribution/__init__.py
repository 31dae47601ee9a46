"""Segment-level credit: segments, Shapley/Owen values, token weights and token advantages.

The NumPy reference lives in `segment`, `reference` and `credit`; `mlx_ops` is its batched MLX
twin (import it explicitly: it loads mlx).
"""

from ospo_mlx.attribution.credit import (
    CreditConfig,
    grpo_advantages,
    normalize_values,
    ospo_token_advantages,
    token_weights,
)
from ospo_mlx.attribution.reference import (
    CoalitionConfig,
    coalition_values,
    contiguous_coalitions,
    game_from_function,
    owen_contiguous,
    owen_exact,
    shapley_exact,
)
from ospo_mlx.attribution.segment import (
    SegmenterConfig,
    answer_span,
    attributable_regions,
    group_spans,
    scored_answer,
    segment,
    segment_texts,
    think_regions,
)

__all__ = [
    "CoalitionConfig",
    "CreditConfig",
    "SegmenterConfig",
    "answer_span",
    "attributable_regions",
    "coalition_values",
    "contiguous_coalitions",
    "game_from_function",
    "group_spans",
    "grpo_advantages",
    "normalize_values",
    "ospo_token_advantages",
    "owen_contiguous",
    "owen_exact",
    "scored_answer",
    "segment",
    "segment_texts",
    "shapley_exact",
    "think_regions",
    "token_weights",
]
