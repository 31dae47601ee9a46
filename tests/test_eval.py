"""`ospo eval`: bootstrap math, metric scoring against a brute-force reference, and an
end-to-end run on a tiny random llama with a tiny catalog."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export import make_adapters, make_tiny_llama

import ospo_mlx  # noqa: F401  (BLAS before mlx)
from ospo_mlx.data.schema import Product, Task
from ospo_mlx.errors import OspoError
from ospo_mlx.eval import EvalArgs, evaluate, paired_bootstrap, score_texts

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "keyword_reward.py"

PRODUCTS = [
    ("p1", "red running shoes for women"),
    ("p2", "blue running shoes for men"),
    ("p3", "wireless noise cancelling headphones"),
    ("p4", "wired earbuds with microphone"),
    ("p5", "stainless steel water bottle"),
    ("p6", "insulated coffee mug with lid"),
]
TASKS = [
    ("t1", "womens running shoes", {"p1": 3.0, "p2": 1.0}),
    ("t2", "headphones noise cancelling", {"p3": 3.0}),
    ("t3", "bottle for water", {"p5": 2.0, "p6": 1.0}),
    ("t4", "mug", {"p6": 3.0}),
]


def write_data(root: Path) -> tuple[Path, Path]:
    catalog = root / "catalog.jsonl"
    catalog.write_text(
        "".join(json.dumps({"product_id": p, "title": t}) + "\n" for p, t in PRODUCTS)
    )
    tasks = root / "test.jsonl"
    tasks.write_text(
        "".join(
            json.dumps({"id": i, "kind": "query_expansion", "query": q, "targets": tg}) + "\n"
            for i, q, tg in TASKS
        )
    )
    return catalog, tasks


def reference_metrics(ranked_ids: list[str], targets: dict[str, float]) -> dict[str, float]:
    """Textbook definitions, one ranking at a time."""
    dcg = sum(targets.get(p, 0.0) / math.log2(r + 2) for r, p in enumerate(ranked_ids[:10]))
    ideal = sorted(targets.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    relevant = {p for p, g in targets.items() if g > 0}
    first = next((r + 1 for r, p in enumerate(ranked_ids) if p in relevant), None)
    return {
        "ndcg@10": dcg / idcg,
        "recall@10": len(relevant & set(ranked_ids[:10])) / len(relevant),
        "recall@100": len(relevant & set(ranked_ids[:100])) / len(relevant),
        "mrr": 1.0 / first if first else 0.0,
        "hit@10": float(bool(relevant & set(ranked_ids[:10]))),
    }


class FixedRetriever:
    """Ranks by a fixed per-text list of product ids (test double with the Retriever protocol)."""

    name = "fixed"

    def __init__(self, product_ids, rankings):
        self.product_ids = product_ids
        self.rankings = rankings

    def rank(self, texts, k, pools=None):
        index = {p: i for i, p in enumerate(self.product_ids)}
        out = np.full((len(texts), k), -1, dtype=np.int64)
        for b, text in enumerate(texts):
            ids = [index[p] for p in self.rankings[text]][:k]
            out[b, : len(ids)] = ids
        return out


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_score_texts_matches_reference(data):
    ids = [p for p, _ in PRODUCTS]
    tasks, rankings, texts = [], {}, []
    for b in range(data.draw(st.integers(1, 4))):
        targets = data.draw(
            st.dictionaries(st.sampled_from(ids), st.sampled_from([1.0, 2.0, 3.0]), min_size=1)
        )
        ranking = data.draw(st.permutations(ids).map(lambda p: list(p)))[
            : data.draw(st.integers(0, 6))
        ]
        tasks.append(Task(id=f"t{b}", kind="query_expansion", targets=targets, query="q"))
        rankings[f"text{b}"] = ranking
        texts.append(f"text{b}")
    got = score_texts(FixedRetriever(ids, rankings), texts, tasks)
    for b, task in enumerate(tasks):
        for name, value in reference_metrics(rankings[texts[b]], task.targets).items():
            assert got[name][b] == pytest.approx(value, abs=1e-12), name


def bootstrap_reference(a, b, n, seed, confidence=0.95):
    rng = np.random.default_rng(seed)
    diff = np.asarray(a) - np.asarray(b)
    idx = rng.integers(0, diff.size, size=(n, diff.size))
    means = [diff[row].mean() for row in idx]
    tail = (1 - confidence) / 2
    return diff.mean(), np.quantile(means, tail), np.quantile(means, 1 - tail)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=30),
    st.integers(0, 10**6),
)
def test_paired_bootstrap_properties(pairs, seed):
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    mean, low, high = paired_bootstrap(a, b, 200, seed)
    assert np.allclose((mean, low, high), bootstrap_reference(a, b, 200, seed))
    assert low - 1e-12 <= high and min(a - b) - 1e-12 <= low and high <= max(a - b) + 1e-12
    assert paired_bootstrap(a, b, 200, seed) == (mean, low, high)  # seeded


def test_paired_bootstrap_constant_and_clear_gain():
    assert paired_bootstrap(np.full(7, 0.5), np.full(7, 0.25)) == (0.25, 0.25, 0.25)
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.5, 200)
    _, low, _ = paired_bootstrap(base + 0.1 + rng.normal(0, 0.05, 200), base)
    assert low > 0.05
    with pytest.raises(ValueError):
        paired_bootstrap(np.array([]), np.array([]))


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    base = make_tiny_llama(root / "base", seed=11)
    adapters = make_adapters(base, root / "ad", num_layers=4, keys=None)
    catalog, tasks = write_data(root)
    return {"root": root, "base": base, "adapters": adapters, "catalog": catalog, "tasks": tasks}


def test_eval_end_to_end_tiny_model(tiny_eval, tmp_path):
    from ospo_mlx.reward.bm25 import BM25Retriever

    out = tmp_path / "eval.json"
    args = EvalArgs(
        tasks=tiny_eval["tasks"], catalog=tiny_eval["catalog"], adapters=tiny_eval["adapters"],
        model=str(tiny_eval["base"]), retrievers=["bm25"], max_new_tokens=8, bootstrap=200, out=out,
    )  # fmt: skip
    report, path = evaluate(args)
    assert path == out and json.loads(out.read_text())["results"] == report["results"]
    rows = {(r["system"], r["retriever"]): r for r in report["results"]}
    assert set(rows) == {("raw", "bm25"), ("base", "bm25"), ("adapters", "bm25")}
    # the raw row is the queries themselves, scored by BM25: check against the reference
    catalog = {p: Product(product_id=p, title=t) for p, t in PRODUCTS}
    bm25 = BM25Retriever(catalog)
    expected = []
    for _, query, targets in TASKS:
        ranked = [bm25.product_ids[i] for i in bm25.rank([query], 100)[0] if i >= 0]
        expected.append(reference_metrics(ranked, targets)["ndcg@10"])
    assert rows["raw", "bm25"]["ndcg@10"] == pytest.approx(np.mean(expected))
    assert rows["raw", "bm25"]["ndcg@10"] > 0.5  # the queries are on topic
    for system in ("base", "adapters"):
        row = rows[system, "bm25"]
        assert 0 < row["mean_length"] <= 8 and 0 <= row["answer_format_rate"] <= 1
        assert all(
            0 <= row[m] <= 1 for m in ("ndcg@10", "recall@10", "recall@100", "mrr", "hit@10")
        )
    samples = report["samples"]
    assert [s["task_id"] for s in samples] == ["t1", "t2", "t3", "t4"]
    assert any(s["base"] != s["adapters"] for s in samples)  # the adapters change the responses
    comps = {(c["a"], c["b"]): c for c in report["comparisons"]}
    assert set(comps) == {("adapters", "base"), ("adapters", "raw"), ("base", "raw")}
    for c in comps.values():
        assert c["ci_low"] <= c["mean_diff"] <= c["ci_high"] and c["n_tasks"] == 4
    assert comps["adapters", "raw"]["mean_diff"] == pytest.approx(
        rows["adapters", "bm25"]["ndcg@10"] - rows["raw", "bm25"]["ndcg@10"]
    )


def test_eval_sampled_and_run_dir(tiny_eval, tmp_path):
    run = tmp_path / "run"
    (run / "adapters").mkdir(parents=True)
    for name in ("adapters.safetensors", "adapter_config.json"):
        (run / "adapters" / name).write_bytes((tiny_eval["adapters"] / name).read_bytes())
    (run / "config.yaml").write_text(
        f"model:\n  name: {tiny_eval['base']}\ndata:\n  catalog: {tiny_eval['catalog']}\n"
        f"reward:\n  functions: ['{EXAMPLE}:keyword_coverage']\n"
        "warmup:\n  steps: 0\n"  # a run written before `warmup` became `sft` still loads
    )
    args = EvalArgs(
        tasks=tiny_eval["tasks"], run=run, retrievers=["train", "bm25"], num_samples=2, temperature=1.0,
        max_new_tokens=4, bootstrap=50, max_tasks=2,
    )  # fmt: skip
    report, path = evaluate(args)
    assert path == run / "eval.json" and report["config"]["n_tasks"] == 2
    names = {r["retriever"] for r in report["results"]}
    assert "bm25" in names and any(n.startswith("dense:") for n in names) and len(names) == 2
    # the run's function reward is scored per generating system, through the same reward object
    kw = {r["system"]: r for r in report["function_rewards"]}
    assert set(kw) == {"base", "adapters"} and all(r["reward"] == "keyword_coverage" for r in kw.values())
    assert all(0 <= r["mean"] <= 1 and r["not_applicable"] == 0 for r in kw.values())


def test_eval_user_errors(tiny_eval):
    with pytest.raises(OspoError, match="--tasks"):
        evaluate(
            EvalArgs(
                adapters=tiny_eval["adapters"],
                model=str(tiny_eval["base"]),
                catalog=tiny_eval["catalog"],
            )
        )
    with pytest.raises(OspoError, match="temperature"):
        evaluate(EvalArgs(tasks=tiny_eval["tasks"], num_samples=3))
    with pytest.raises(OspoError, match="not train, bm25"):
        evaluate(
            EvalArgs(
                tasks=tiny_eval["tasks"],
                catalog=tiny_eval["catalog"],
                adapters=tiny_eval["adapters"],
                model=str(tiny_eval["base"]),
                retrievers=["nope"],
            )
        )


def test_cli_eval(tiny_eval, tmp_path):
    import typer
    from typer.testing import CliRunner

    from cli import evaluate as cli_evaluate

    app = typer.Typer()
    cli_evaluate.register(app)
    app.command("noop")(lambda: None)
    args = [
        "eval", "--tasks", str(tiny_eval["tasks"]), "--catalog", str(tiny_eval["catalog"]),
        "--adapters", str(tiny_eval["adapters"]), "--model", str(tiny_eval["base"]),
        "--retriever", "bm25", "--max-new-tokens", "4", "--bootstrap", "50", "--out", str(tmp_path / "e.json"),
    ]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "adapters - base" in res.output and (tmp_path / "e.json").is_file()


def test_run_config_feeds_eval_through_config_from_dict():
    from ospo_mlx.config import config_from_run
    from ospo_mlx.errors import ConfigError

    config = config_from_run(
        {"prompt": {"answer_tags": ["<a>", "</a>"]}, "reward": {"prepend_query": False,
         "answer_tags": ["<a>", "</a>"], "gain_map": {"3": 1.0}},
         "model": {"adapters": "/moved/away"}}
    )  # fmt: skip
    assert config.prompt.answer_tags == ("<a>", "</a>") and config.reward.prepend_query is False
    assert config.reward.gain_map == {"3": 1.0} and config.model.adapters is None
    assert config_from_run({}).reward.mode == "pool"  # adapters without a run: the defaults
    with pytest.raises(ConfigError, match=r"run's config.yaml: unknown config key 'reward\.retriever'"):
        config_from_run({"reward": {"retriever": "bm25"}})


def test_format_rule_of_the_run_decides_eval_answers():
    """eval scores answers by the run's reward.missing_tags / unclosed_answer, as training did."""
    from ospo_mlx.eval import _system_from_responses, retrieval_reward
    from ospo_mlx.reward import RewardConfig

    texts = ["<answer>red shoes</answer>", "<answer>red shoes", "red shoes"]
    tasks = [Task(id="t", kind="shopper_profile", targets={"p1": 1.0})] * 3
    retriever = FixedRetriever([p for p, _ in PRODUCTS], {})
    lenient = _system_from_responses(
        "a", texts, [3, 3, 3], tasks, retrieval_reward(retriever, tasks, RewardConfig())
    )
    assert lenient.answers == ["red shoes", "red shoes", "red shoes"]
    assert lenient.formatted == [True, False, False]
    strict_config = RewardConfig(missing_tags="zero", unclosed_answer="zero")
    strict = _system_from_responses(
        "a", texts, [3, 3, 3], tasks, retrieval_reward(retriever, tasks, strict_config)
    )
    assert strict.answers == ["red shoes", None, None]
    # query expansion: the query is prepended, as the training reward does
    qe = [Task(id="q", kind="query_expansion", targets={"p1": 1.0}, query="shoes")]
    got = _system_from_responses("a", texts[:1], [3], qe, retrieval_reward(retriever, qe))
    assert got.answers == ["shoes red shoes"]


def test_eval_scores_with_the_runs_gain_map():
    """reward.gain_map reaches eval's metrics (score_texts once ignored it)."""
    from ospo_mlx.reward import RewardConfig

    ids = [p for p, _ in PRODUCTS]
    task = Task(id="t", kind="query_expansion", targets={"p1": 3.0, "p2": 1.0}, query="q")
    retriever = FixedRetriever(ids, {"x": ["p2", "p1"]})
    graded = score_texts(retriever, ["x"], [task])["ndcg@10"][0]
    remapped = score_texts(
        retriever, ["x"], [task], config=RewardConfig(gain_map={"3": 1.0, "1": 1.0})
    )["ndcg@10"][0]
    assert remapped == pytest.approx(1.0) and graded < 1.0  # equal gains: either order is ideal


def test_none_answers_score_zero_and_leave_the_others_unchanged():
    ids = [p for p, _ in PRODUCTS]
    tasks = [Task(id=t, kind="query_expansion", targets=tg, query=q) for t, q, tg in TASKS[:3]]
    rankings = {"a": ["p1", "p2"], "b": ["p3"], "c": ["p5", "p6"]}
    full = score_texts(FixedRetriever(ids, rankings), ["a", "b", "c"], tasks)
    some = score_texts(FixedRetriever(ids, rankings), ["a", None, "c"], tasks)
    assert all(full[k][1] > 0 and some[k][1] == 0.0 for k in full)
    for k in full:
        np.testing.assert_allclose(some[k][[0, 2]], full[k][[0, 2]])
    none = score_texts(FixedRetriever(ids, rankings), [None], tasks[:1])
    assert all(v.tolist() == [0.0] for v in none.values())
