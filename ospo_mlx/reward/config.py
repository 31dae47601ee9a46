"""The one configuration of the reward: retrieval options, encoder/index, function rewards."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ospo_mlx.attribution.segment import MISSING_TAGS, UNCLOSED_ANSWER
from ospo_mlx.errors import ConfigError
from ospo_mlx.reward import metrics as M

EVAL_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr", "hit@10")


@dataclass
class RewardConfig:
    """The `reward` section: the retrieval reward's options, its encoder, and function rewards.

    One dataclass for the whole section; `RetrievalReward` reads the retrieval fields and
    `build_rewards` the rest.
    """

    metric: str = field(
        default="ndcg", metadata={"help": "Reward metric: ndcg, recall, hit, mrr or ap (cut at k)."}
    )
    k: int = field(default=10, metadata={"help": "Cutoff of the reward metric."})
    mode: str = field(
        default="pool",
        metadata={
            "help": "pool: rank each task's candidate pool exactly; catalog: top-k over the whole catalog."
        },
    )
    coalition_text: str = field(
        default="drop",
        metadata={
            "help": "drop: member segments joined with a space; keep-gaps: the text with non-members removed."
        },
    )
    empty_value: str = field(
        default="auto",
        metadata={
            "help": "v(empty), the baseline every segment's credit is measured from: auto = the "
            "score of the retrieval text with no answer (the query alone when it is prepended, "
            "else 0). zero and query are accepted only where they agree with auto."
        },
    )
    prepend_query: bool | None = field(
        default=None,
        metadata={
            "help": "Retrieve with 'query + response'; None: true for query_expansion, false otherwise."
        },
    )
    answer_tags: tuple[str, str] | None = field(
        default=("<answer>", "</answer>"),
        metadata={"help": "Tags around the answer region (None: whole text)."},
    )
    missing_tags: str = field(
        default="whole",
        metadata={
            "help": "Response without answer tags: whole (use the whole text) or zero (reward 0); counted."
        },
    )
    unclosed_answer: str = field(
        default="keep",
        metadata={
            "help": "Answer without its closing tag (often cut at max_new_tokens): keep (score it "
            "to the end of the text) or zero (reward 0, so run-on answers are not rewarded); counted."
        },
    )
    repeats: str = field(
        default="collapse",
        metadata={
            "help": "collapse: drop every repeated word of the answer before retrieval (a "
            "repeat earns nothing; counted in reward/collapsed_repeats), or keep."
        },
    )
    gains: str = field(
        default="graded",
        metadata={"help": "graded: targets' gains (ESCI E=3,S=2,C=1); binary: 1 if > 0."},
    )
    gain_map: dict[str, float] | None = field(
        default=None,
        metadata={"help": "Remap stored gains, e.g. {'3': 1, '2': 0.1, '1': 0.01} (KDD Cup ESCI)."},
    )
    eval_metrics: tuple[str, ...] = field(
        default=EVAL_METRICS, metadata={"help": "Metrics reported by `metrics()`."}
    )

    encoder: str | None = field(
        default=None,
        metadata={"help": "Sentence-embedding model directory; null = embedded all-MiniLM-L6-v2."},
    )
    index: str | None = field(
        default=None,
        metadata={"help": "Catalog index directory built by `ospo index`; null = embed now."},
    )
    cache_embeddings: bool = field(
        default=True,
        metadata={"help": "Reuse catalog embeddings across runs ($OSPO_CACHE/embeddings)."},
    )
    retrieval_weight: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the retrieval reward in the sum; 0 = off (only reward.functions, "
            "no encoder is loaded)."
        },
    )
    functions: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Python reward functions 'pkg.module:fn' or 'path/file.py:fn', called TRL-style "
            "fn(prompts, completions, **task_fields) -> list[float | None]; loading one runs its code."
        },
    )
    weights: list[float] | None = field(
        default=None,
        metadata={"help": "Weight of each of reward.functions (same order); null = 1.0 each."},
    )

    def validate(self) -> RewardConfig:
        choices = {
            "metric": M.METRIC_NAMES,
            "mode": ("pool", "catalog"),
            "coalition_text": ("drop", "keep-gaps"),
            "empty_value": ("auto", "zero", "query"),
            "missing_tags": MISSING_TAGS,
            "unclosed_answer": UNCLOSED_ANSWER,
            "repeats": ("keep", "collapse"),
            "gains": ("graded", "binary"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"reward.{name} = '{getattr(self, name)}' is not one of {list(allowed)}"
                )
        if self.k < 1:
            raise ConfigError(f"reward.k must be >= 1, got {self.k}")
        _check_empty_value(self.empty_value, self.prepend_query)
        try:
            for name in self.eval_metrics:
                M.parse_metric(name)
        except ValueError as exc:
            raise ConfigError(f"reward.eval_metrics: {exc}") from None
        if self.weights is not None and len(self.weights) != len(self.functions):
            raise ConfigError(
                f"reward.weights: {len(self.weights)} weight(s) for {len(self.functions)} "
                "reward.functions; give one weight per function (or null for 1.0 each)"
            )
        for spec in self.functions:
            if ":" not in spec or not spec.rsplit(":", 1)[1].isidentifier():
                raise ConfigError(
                    f"reward.functions: {spec!r} is not 'pkg.module:fn' or 'path/file.py:fn'"
                )
        if self.retrieval_weight < 0:
            raise ConfigError(f"reward.retrieval_weight: must be >= 0, got {self.retrieval_weight}")
        if self.retrieval_weight == 0 and not self.functions:
            raise ConfigError(
                "reward.retrieval_weight is 0 and reward.functions is empty: nothing to reward; "
                "list a function in reward.functions or set retrieval_weight > 0"
            )
        return self

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


def _check_empty_value(empty_value: str, prepend_query: bool | None) -> None:
    """Refuse a v(empty) that disagrees with the text every other coalition is scored with.

    With the query prepended, v({j}) scores 'query + segment j'; a v(empty) of 0 would hand
    every segment the query's own score, split by how often it was sampled.
    """
    if empty_value == "zero" and prepend_query is not False:
        raise ConfigError(
            "reward.empty_value: zero scores the empty answer 0 while the query is prepended to "
            "every other coalition (query-expansion tasks), so credit would follow sampling "
            "counts; use auto (the default), or set reward.prepend_query: false"
        )
    if empty_value == "query" and prepend_query is False:
        raise ConfigError(
            "reward.empty_value: query scores the empty answer by the query, but "
            "reward.prepend_query is false, so no other coalition contains it; use auto"
        )


def legacy_empty_value(data: dict) -> dict:
    """A run config written before v(empty) followed the retrieval text: map it to `auto`.

    Old runs stored `empty_value: zero` (the inconsistent old default); reading them for eval,
    export or the inspector must not fail on it.
    """
    reward = data.get("reward")
    if isinstance(reward, dict) and reward.get("empty_value") in ("zero", "query"):
        try:
            _check_empty_value(reward["empty_value"], reward.get("prepend_query"))
        except ConfigError:
            data = {**data, "reward": {**reward, "empty_value": "auto"}}
    return data
