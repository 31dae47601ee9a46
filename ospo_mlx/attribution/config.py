"""The one configuration of segment credit: segmentation, coalitions, estimator, token weights.

The `attribution:` section of a training config. Each field documents itself; docs/credit.md
explains every option with its measured effect (bench/fidelity.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ospo_mlx.errors import ConfigError

ESTIMATORS = ("shapley", "contiguous")
NORMALIZATIONS = ("zero", "minmax", "softmax")
NEGATIVE_RULES = ("mirror", "paper")
ADVANTAGE_MODES = ("prop", "rank", "hybrid", "uniform")


@dataclass
class AttributionConfig:
    segmenter: str = field(
        default="phrase", metadata={"help": "How answers are split: phrase, sentence, word, regex."}
    )
    max_segments: int | None = field(
        default=None, metadata={"help": "Merge adjacent segments down to this many; null = no cap."}
    )
    estimator: Literal["shapley", "contiguous"] = field(
        default="shapley",
        metadata={
            "help": "shapley: exact Shapley values when 2^n coalitions fit the budget, else a "
            "kernel (weighted least squares) estimate from anchors, singletons, leave-one-outs "
            "and paired samples; contiguous: the paper's mean marginal gain over contiguous windows."
        },
    )
    max_coalitions: int = field(
        default=16,
        metadata={
            "help": "Coalitions evaluated per completion, the empty and full answer included; "
            "raised to n + 2 when a completion has n segments, so every segment is paired. "
            "Encoding them is the cost of credit; docs/credit.md has fidelity per budget."
        },
    )
    surrogate: Literal["pooled", "none"] = field(
        default="pooled",
        metadata={
            "help": "shapley estimator: pooled adds a stand-in game built from the pooled encoder "
            "states of the empty and single-segment coalitions (no extra encoding) and estimates "
            "only the difference from it (a control variate; dense retrievers in pool mode, "
            "plain estimate elsewhere); none: the kernel estimate of v alone."
        },
    )
    surrogate_coalitions: int = field(
        default=1024,
        metadata={
            "help": "Stand-in coalitions per completion: all 2^n while they fit (exact Shapley of "
            "the stand-in game), else a kernel sample of this many."
        },
    )
    max_width: int | None = field(
        default=None,
        metadata={"help": "contiguous estimator: widest window of segments; null = any width."},
    )
    advantage_mode: Literal["prop", "rank", "hybrid", "uniform"] = field(
        default="prop",
        metadata={"help": "How segment weights share the advantage: prop, rank, hybrid, uniform."},
    )
    alpha: float = field(default=0.5, metadata={"help": "Mixing weight of the hybrid mode."})
    normalize: Literal["zero", "minmax", "softmax"] = field(
        default="zero",
        metadata={
            "help": "Segment values -> weights in [0, 1]. zero: phi+ / max(phi+), anchored at "
            "'no effect' (a segment that did not help gets 0, the rest in proportion); minmax: "
            "the paper's (the least-credited segment always gets 0); softmax: exp(phi / "
            "temperature), scaled so the best is 1."
        },
    )
    temperature: float = field(
        default=0.05,
        metadata={"help": "softmax normalization: temperature in reward units (NDCG)."},
    )
    negative_advantage: Literal["mirror", "paper"] = field(
        default="mirror",
        metadata={
            "help": "When the advantage is negative: mirror takes weights from the negated values "
            "(the segment that hurt the reward takes the most blame); paper keeps the positive "
            "values (the segment that helped is pushed down most)."
        },
    )
    clip: float | None = field(
        default=2.0,
        metadata={
            "help": "Clip token advantages to +/- clip x the std of the batch's sequence "
            "advantages (the authors use 2); null = off."
        },
    )
    floor: float = field(
        default=0.0, metadata={"help": "Weight of tokens outside every segment (0..1)."}
    )
    format_tokens: Literal["sequence", "floor"] = field(
        default="sequence",
        metadata={
            "help": "Tokens outside every segment (answer tags, reasoning, EOS): sequence keeps "
            "their GRPO advantage A; floor gives them the `floor` weight in the split (the "
            "paper's form: with floor 0 closing the answer is never reinforced)."
        },
    )

    def validate(self) -> AttributionConfig:
        """Raise a one-line ConfigError naming the bad key."""
        choices = {
            "estimator": ESTIMATORS,
            "normalize": NORMALIZATIONS,
            "negative_advantage": NEGATIVE_RULES,
            "advantage_mode": ADVANTAGE_MODES,
            "surrogate": ("pooled", "none"),
            "format_tokens": ("sequence", "floor"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"attribution.{name} = '{getattr(self, name)}' is not one of {list(allowed)}"
                )
        if self.max_coalitions < 2:
            raise ConfigError(
                "attribution.max_coalitions: must be at least 2 (the empty and the full answer), "
                f"got {self.max_coalitions}"
            )
        if self.surrogate_coalitions < 2:
            raise ConfigError(
                "attribution.surrogate_coalitions: must be at least 2, "
                f"got {self.surrogate_coalitions}"
            )
        if self.max_width is not None and self.max_width < 1:
            raise ConfigError(
                f"attribution.max_width: must be at least 1 or null, got {self.max_width}"
            )
        if self.max_segments is not None and self.max_segments < 1:
            raise ConfigError(
                f"attribution.max_segments: must be at least 1 or null, got {self.max_segments}"
            )
        if not 0 <= self.floor <= 1 or not 0 <= self.alpha <= 1:
            raise ConfigError("attribution.floor and attribution.alpha: must be in [0, 1]")
        if self.clip is not None and self.clip <= 0:
            raise ConfigError(f"attribution.clip: must be > 0 or null, got {self.clip}")
        if self.temperature <= 0:
            raise ConfigError(f"attribution.temperature: must be > 0, got {self.temperature}")
        return self


# The paper's settings (Nath et al., 2026), for comparisons: `AttributionConfig(**PAPER)`.
PAPER = {
    "estimator": "contiguous",
    "normalize": "minmax",
    "negative_advantage": "paper",
    "format_tokens": "floor",
}
