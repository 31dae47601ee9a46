"""Segment-level credit: segments, Shapley/Owen values, token weights and token advantages.

The NumPy reference lives in `segment`, `reference` and `credit`; `mlx_ops` is its batched MLX
twin (import it explicitly: it loads mlx).
"""

from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.credit import (
    grpo_advantages,
    normalize_values,
    ospo_token_advantages,
    signed_values,
    token_weights,
)
from ospo_mlx.attribution.estimators import estimate, kernel_shapley, sample_coalitions
from ospo_mlx.attribution.reference import (
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
    "AttributionConfig",
    "SegmenterConfig",
    "answer_span",
    "attributable_regions",
    "coalition_values",
    "contiguous_coalitions",
    "estimate",
    "game_from_function",
    "group_spans",
    "grpo_advantages",
    "kernel_shapley",
    "normalize_values",
    "ospo_token_advantages",
    "owen_contiguous",
    "owen_exact",
    "sample_coalitions",
    "scored_answer",
    "segment",
    "segment_texts",
    "shapley_exact",
    "signed_values",
    "think_regions",
    "token_weights",
]
