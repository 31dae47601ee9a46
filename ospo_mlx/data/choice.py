"""The controlled choice task: pick the right attribute phrases from a shuffled list.

Built on the synthetic catalog (synthetic.py), whose relevance is decided by a hidden
(use, material) pair. Each prompt lists a handful of candidate phrases: the task's hidden use
and material among distractor uses and materials of the same category, shuffled per task.
A good answer names the right phrases and none of the others. The reward is the retrieval
NDCG of query + answer, so every answer mixes helpful and harmful segments: the case where
per-segment credit should beat one advantage for every token.

Copying phrases from the prompt is easy for a 135M model, so sampled answers reach the reward
from the first step; which phrases to copy is what RL has to learn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ospo_mlx.data.report import ConversionReport
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.data.synthetic import CATEGORIES, SyntheticConfig, generate
from ospo_mlx.errors import ConfigError


@dataclass
class ChoiceConfig:
    """Options of the choice task (the catalog options are the synthetic generator's)."""

    synthetic: SyntheticConfig = field(
        default_factory=SyntheticConfig,
        metadata={"help": "Catalog, task counts and pools (see SyntheticConfig)."},
    )
    distractor_uses: int = field(
        default=2, metadata={"help": "Wrong 'use' phrases listed per prompt (at most 3)."}
    )
    distractor_materials: int = field(
        default=2, metadata={"help": "Wrong 'material' phrases listed per prompt (at most 3)."}
    )

    def validate(self) -> ChoiceConfig:
        most = min(len(c.intents) for c in CATEGORIES) - 1
        for name in ("distractor_uses", "distractor_materials"):
            value = getattr(self, name)
            if not 0 <= value <= most:
                raise ConfigError(f"choice.{name} must be in 0..{most}, got {value}")
        return self


def right_phrases(hidden: dict[str, str]) -> list[str]:
    """The phrases a perfect answer names: the hidden use and material."""
    return [hidden["use"], hidden["material"]]


def candidates_for(
    hidden: dict[str, str], cfg: ChoiceConfig, rng: np.random.Generator
) -> list[str]:
    """The task's right phrases plus distractors of the same category, in a random order."""
    category = next(c for c in CATEGORIES if c.name == hidden["category"])
    uses = [i.use for i in category.intents if i.use != hidden["use"]]
    materials = [i.material for i in category.intents if i.material != hidden["material"]]
    wrong = [uses[j] for j in rng.permutation(len(uses))[: cfg.distractor_uses]]
    wrong += [materials[j] for j in rng.permutation(len(materials))[: cfg.distractor_materials]]
    phrases = right_phrases(hidden) + wrong
    return [phrases[j] for j in rng.permutation(len(phrases))]


def generate_choice(
    cfg: ChoiceConfig | None = None,
) -> tuple[list[Product], list[Task], ConversionReport]:
    """Catalog, train+test tasks with candidates, and a report; identical for identical configs."""
    cfg = (cfg or ChoiceConfig()).validate()
    products, tasks, report = generate(cfg.synthetic)
    hidden = report.extra["hidden_intents"]
    # A generator of its own (seed + 1), so the catalog and queries match the synthetic data.
    rng = np.random.default_rng([cfg.synthetic.seed, 1])
    out = [replace(t, candidates=candidates_for(hidden[t.id], cfg, rng)) for t in tasks]
    report.kind = "choice"
    report.options = {
        **asdict(cfg.synthetic),
        **{k: v for k, v in asdict(cfg).items() if k != "synthetic"},
    }
    report.read("candidates per task", 2 + cfg.distractor_uses + cfg.distractor_materials)
    return products, out, report
