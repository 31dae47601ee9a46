"""RetrievalReward: the retrieval quality of a response, and of coalitions of its segments.

The response (a query expansion or a shopper profile) becomes a retrieval text, a Retriever
ranks products with it, and the reward is a ranking metric (NDCG@10 by default) against the
task's targets. `coalition_values` evaluates v(S) for every coalition of every completion of a
batch in one pass: all coalition texts are deduplicated, encoded in one batched call, ranked in
one batched search, and scored with one vectorized metric computation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from ospo_mlx.attribution.segment import scored_answer
from ospo_mlx.attribution.surrogate import interpolated_embeddings
from ospo_mlx.data.schema import Task
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.reward import metrics as M
from ospo_mlx.reward.base import CoalitionBatch, Reward
from ospo_mlx.reward.config import RewardConfig
from ospo_mlx.reward.repetition import collapse_repeats
from ospo_mlx.reward.retrievers import Retriever


def coalition_text(
    text: str, spans: Sequence[tuple[int, int]], mask: np.ndarray, strategy: str = "drop"
) -> str:
    """The text of the coalition `mask` over `spans` (char spans into `text`).

    drop: the member segments in order, joined with one space (the authors' construction).
    keep-gaps: `text` from the first to the last member with the non-member segments cut out,
    so the words and punctuation between segments stay; whitespace is collapsed.
    """
    members = [spans[j] for j in np.flatnonzero(np.asarray(mask, dtype=bool))]
    if not members:
        return ""
    if strategy == "drop":
        return " ".join(text[s:e] for s, e in members)
    if strategy != "keep-gaps":
        raise ConfigError(f"coalition_text '{strategy}' is not one of ['drop', 'keep-gaps']")
    first, last = members[0][0], members[-1][1]
    pieces, pos = [], first
    for j, (s, e) in enumerate(spans):
        if first <= s and e <= last and not mask[j]:
            pieces.append(text[pos:s])
            pos = e
    pieces.append(text[pos:last])
    return " ".join("".join(pieces).split())


def query_prefixed(text: str, task: Task, prepend_query: bool | None) -> str:
    """The retrieval text of an answer: the task's query first when `prepend_query` says so.

    None means: for query_expansion tasks (the expansion adds to the query, as in the paper).
    Training and `ospo eval` both go through here so they score the same text.
    """
    prepend = (task.kind == "query_expansion") if prepend_query is None else bool(prepend_query)
    if prepend and task.query:
        return f"{task.query} {text}".strip()
    return text


class RetrievalReward(Reward):
    """Retrieval-quality reward over a Retriever (dense MiniLM by default; see `build_reward`)."""

    name = "retrieval"

    def __init__(self, retriever: Retriever, config: RewardConfig | None = None):
        self.retriever = retriever
        self.config = (config or RewardConfig()).validate()
        self.row_of = {pid: i for i, pid in enumerate(retriever.product_ids)}
        self.stats: Counter[str] = Counter()  # missing_tags, texts_unique, texts_total, ...

    # -- texts ---------------------------------------------------------------------------
    def with_query(self, text: str, task: Task) -> str:
        """The retrieval text for a response text: the query first when configured."""
        return query_prefixed(text, task, self.config.prepend_query)

    def response_text(self, response: str) -> str | None:
        """The scored text of `response` (None when the format rule gives it reward 0)."""
        text, status = self.scored(response)
        if status != "ok":
            self.stats[status] += 1
        return text

    def scored(self, response: str) -> tuple[str | None, str]:
        """(scored text or None, format status: ok, missing_tags or unclosed); see `scored_answer`.

        With `repeats: collapse` the scored text has its repeated words removed."""
        c = self.config
        text, status = scored_answer(response, c.answer_tags, c.missing_tags, c.unclosed_answer)
        return (self.collapse(text) if text is not None else None), status

    def collapse(self, text: str) -> str:
        """`text` with repeated words removed when `repeats: collapse`, else unchanged."""
        return collapse_repeats(text)[0] if self.config.repeats == "collapse" else text

    def repeats_removed(self, response: str) -> int:
        """Words the repeat rule drops from `response`'s scored text (0 with `repeats: keep`)."""
        c = self.config
        text, _ = scored_answer(response, c.answer_tags, c.missing_tags, c.unclosed_answer)
        if text is None or c.repeats != "collapse":
            return 0
        return collapse_repeats(text)[1]

    def format_zeroed(self, response: str) -> bool:
        """True when the format rule (not the content) gives `response` reward 0."""
        return self.scored(response)[0] is None

    def empty_text(self, task: Task) -> str | None:
        """Retrieval text of the empty coalition: the query when it is prepended (None: 0).

        The same rule as every other coalition (`with_query` of no answer), so v(empty) is
        the baseline the segments add to and a segment without effect gets no credit.
        """
        return self.with_query("", task) or None

    # -- evaluation ----------------------------------------------------------------------
    def _pool_rows(self, task: Task) -> np.ndarray | None:
        if self.config.mode == "catalog":
            return None
        if task.pool is None:
            raise OspoError(
                f"task '{task.id}' has no candidate pool; use reward mode 'catalog' or add pools"
            )
        try:
            return np.array([self.row_of[p] for p in task.pool], dtype=np.int64)
        except KeyError as exc:
            raise OspoError(f"task '{task.id}': pool product {exc} is not in the catalog") from None

    def _judgments(self, tasks: Sequence[Task]) -> M.Judgments:
        return M.Judgments(
            [t.targets for t in tasks],
            self.row_of,
            binary=self.config.gains == "binary",
            gain_map=self.config.gain_map,
        )

    def _evaluate(
        self,
        texts: Sequence[str | None],
        task_rows: np.ndarray,
        tasks: Sequence[Task],
        names: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Metrics of each (text, task) pair in one batched ranking; None texts score 0."""
        depth = min(M.metric_depth(names, self.config.k), max(len(self.row_of), 1))
        task_rows = np.asarray(task_rows, dtype=np.int64)
        pools = [self._pool_rows(t) for t in tasks]
        keep = np.array([t is not None for t in texts], dtype=bool)
        # Identical (text, pool) pairs are ranked once; the encoder dedupes texts across pools too.
        unique: dict[tuple[str, int], int] = {}
        pool_ids: dict[bytes, int] = {}
        pool_key = [
            pool_ids.setdefault(b"" if p is None else p.tobytes(), len(pool_ids)) for p in pools
        ]
        inverse = np.full(len(texts), -1, dtype=np.int64)
        first_task: list[int] = []
        for b in np.flatnonzero(keep):
            key = (texts[b], pool_key[task_rows[b]])
            if key not in unique:
                unique[key] = len(unique)
                first_task.append(int(task_rows[b]))
            inverse[b] = unique[key]
        self.stats["texts_total"] += int(keep.sum())
        self.stats["texts_unique"] += len(unique)
        ranked = np.full((len(texts), depth), -1, dtype=np.int64)
        if unique:
            unique_pools = None if self.config.mode == "catalog" else [pools[t] for t in first_task]
            ranked_unique = self.retriever.rank([t for t, _ in unique], depth, unique_pools)
            ranked[keep] = ranked_unique[inverse[keep]]
        out = self._metrics_of(ranked, task_rows, tasks, names)
        return {name: np.where(keep, v, 0.0) for name, v in out.items()}

    def _metrics_of(
        self, ranked: np.ndarray, task_rows: np.ndarray, tasks: Sequence[Task], names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Metrics of rankings `ranked (B, depth)`; row b is judged against tasks[task_rows[b]]."""
        judg = self._judgments(tasks)
        gains = judg.gains(ranked, task_rows)
        ideal = judg.ideal(ranked.shape[1])[task_rows]
        return M.compute(names, gains, ideal, judg.n_relevant[task_rows], self.config.k)

    @property
    def reward_metric(self) -> str:
        return f"{self.config.metric}@{self.config.k}"

    def _full_texts(self, responses: Sequence[str], tasks: Sequence[Task]) -> list[str | None]:
        if len(responses) != len(tasks):
            raise ValueError(f"{len(responses)} responses but {len(tasks)} tasks")
        texts = []
        for response, task in zip(responses, tasks, strict=True):
            body = self.response_text(response)
            texts.append(None if body is None else self.with_query(body, task))
        return texts

    def evaluate_texts(
        self, texts: Sequence[str | None], tasks: Sequence[Task], names: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Metrics (B,) of ready retrieval texts (answer rule and query prefix already applied;
        None scores 0): what `ospo eval` scores, with the same gains as training."""
        if len(texts) != len(tasks):
            raise ValueError(f"{len(texts)} texts but {len(tasks)} tasks")
        return self._evaluate(list(texts), np.arange(len(tasks)), tasks, list(names))

    def score(self, responses: Sequence[str], tasks: Sequence[Task]) -> np.ndarray:
        """Reward (B,) of full responses (their answer region when tagged)."""
        texts = self._full_texts(responses, tasks)
        return self._evaluate(texts, np.arange(len(tasks)), tasks, [self.reward_metric])[
            self.reward_metric
        ]

    def metrics(self, responses: Sequence[str], tasks: Sequence[Task]) -> dict[str, np.ndarray]:
        """Evaluation metrics (B,) per name in `config.eval_metrics` (ndcg@10, recall@10, ...)."""
        texts = self._full_texts(responses, tasks)
        return self._evaluate(texts, np.arange(len(tasks)), tasks, list(self.config.eval_metrics))

    # -- coalitions ----------------------------------------------------------------------
    def coalition_texts(
        self, response: str, spans: Sequence[tuple[int, int]], masks: np.ndarray, task: Task
    ) -> list[str | None]:
        """Retrieval text of each coalition row of `masks (C, n)`; None where v is 0 by definition."""
        masks = np.asarray(masks, dtype=bool).reshape(-1, len(spans))
        out: list[str | None] = []
        for mask in masks:
            if not mask.any():
                out.append(self.empty_text(task))
            else:
                text = coalition_text(response, spans, mask, self.config.coalition_text)
                out.append(self.with_query(self.collapse(text), task))
        return out

    def _coalition_scores(self, batch: CoalitionBatch) -> np.ndarray:
        """All coalition texts of the batch: deduplicated, encoded, ranked and scored at once."""
        name = self.reward_metric
        return self._evaluate(batch.texts, batch.rows, batch.tasks, [name])[name]

    def surrogate_values(
        self,
        responses: Sequence[str],
        segments: Sequence[Sequence[tuple[int, int]]],
        coalition_masks: Sequence[np.ndarray],
        tasks: Sequence[Task],
    ) -> list[np.ndarray | None]:
        """Stand-in values v~(S) (K_i,) on each `coalition_masks[i] (K_i, n_i)`, or None per
        response where the retriever has no pooled states (BM25) or ranks the whole catalog.

        Built from the pooled sums of the empty and single-segment coalition texts (see
        attribution/surrogate.py); those texts were just scored, so nothing is encoded again.
        """
        out: list[np.ndarray | None] = [None] * len(responses)
        pooled_sums = getattr(self.retriever, "pooled_sums", None)
        if pooled_sums is None or self.config.mode == "catalog":
            return out
        name = self.reward_metric
        depth = min(M.metric_depth([name], self.config.k), max(len(self.row_of), 1))
        for i, (resp, spans, masks, task) in enumerate(
            zip(responses, segments, coalition_masks, tasks, strict=True)
        ):
            n = len(spans)
            anchors = np.vstack([np.zeros((1, n), bool), np.eye(n, dtype=bool)])
            texts = self.coalition_texts(resp, spans, anchors, task)
            known = [t for t in texts if t is not None]
            sums = pooled_sums(known)
            empty = sums[0] if texts[0] is not None else np.zeros(sums.shape[1], np.float32)
            singles = sums[len(known) - n :]
            embeddings = interpolated_embeddings(empty, singles, masks)
            pool = self._pool_rows(task)
            ranked = self.retriever.rank_embedded(embeddings, depth, [pool] * len(masks))
            rows = np.zeros(len(masks), dtype=np.int64)
            values = self._metrics_of(ranked, rows, [task], [name])[name]
            if texts[0] is None:  # v(empty) is 0 by definition, as in the real game
                values = np.where(np.asarray(masks).any(1), values, 0.0)
            out[i] = values
        return out

    def coalition_values_sequential(
        self,
        responses: Sequence[str],
        segments: Sequence[Sequence[tuple[int, int]]],
        coalition_masks: Sequence[np.ndarray],
        tasks: Sequence[Task],
    ) -> list[np.ndarray]:
        """Reference: one encode, one search and one metric call per coalition (the authors' loop)."""
        name = self.reward_metric
        depth = min(self.config.k, max(len(self.row_of), 1))
        out = []
        for resp, spans, masks, task in zip(
            responses, segments, coalition_masks, tasks, strict=True
        ):
            judg = self._judgments([task])
            pool = self._pool_rows(task)
            vals = []
            for text in self.coalition_texts(resp, spans, masks, task):
                if text is None:
                    vals.append(0.0)
                    continue
                ranked = self.retriever.rank([text], depth, None if pool is None else [pool])
                gains = judg.gains(ranked)
                vals.append(
                    float(
                        M.compute([name], gains, judg.ideal(depth), judg.n_relevant, self.config.k)[
                            name
                        ][0]
                    )
                )
            out.append(np.array(vals))
        return out


def build_reward(
    catalog,
    config: RewardConfig | None = None,
    encoder_dir=None,
    index_dir=None,
    cache_dir=None,
) -> RetrievalReward:
    """A RetrievalReward over a catalog (path to catalog.jsonl or a product_id -> Product dict),
    with the dense encoder in `encoder_dir` (default: embedded MiniLM) and an optional index."""
    from ospo_mlx.data.schema import load_catalog
    from ospo_mlx.reward.retrievers import encoder_retriever

    if not isinstance(catalog, dict):
        catalog = load_catalog(catalog)
    return RetrievalReward(encoder_retriever(catalog, encoder_dir, index_dir, cache_dir), config)
