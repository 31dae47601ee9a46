"""Credit fidelity: does the trainer's segment credit match exact Shapley values of the real reward?

For responses of n <= 10 segments every one of the 2^n coalitions is scored with the real
reward (MiniLM retrieval NDCG@10, the query prepended), so exact Shapley values are known. The
trainer's estimator (`attribution.estimator` at the default `max_coalitions`) then sees only
the coalitions it would sample, and its values are compared with the exact ones:

- estimator_spearman / estimator_top1: rank correlation with exact Shapley, and how often the
  top segment is exact Shapley's top segment (ESCI sample in ../shared/data and data/demo);
- planted_top1: synthetic tasks whose relevance is decided by hidden attributes; the response
  is one phrase naming a hidden attribute among distractors, shuffled: how often it is on top;
- query_bias: on segments meant to have no effect (stop words, the query again), the largest
  |phi - exact phi|: credit not explained by the segment's own effect. The dense retriever
  does react to such text, so their exact values are reported too (no_effect_exact_*).

The same games are also measured under the old defaults (`before`: the contiguous estimator,
16 coalitions, v(empty) = 0 while the query is prepended) and at other budgets, with and
without the stand-in game (`attribution.surrogate`), with the encoder tokens each budget
costs per answer (what a training step pays for credit).

    python bench/fidelity.py [--json] [--quick] [--estimator E] [--max-coalitions N]
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# isort: off
import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
import numpy as np

from bench.common import REPO_ROOT, bench_parser, emit
from ospo_mlx.attribution import segment
from ospo_mlx.attribution.config import AttributionConfig
from ospo_mlx.attribution.credit import normalize_values, signed_values
from ospo_mlx.attribution.estimators import estimate, sample_coalitions
from ospo_mlx.attribution.reference import coalition_values, shapley_exact
from ospo_mlx.attribution.surrogate import SurrogateGame
from ospo_mlx.data.schema import Product, Task, load_catalog, load_tasks
from ospo_mlx.reward.repetition import collapse_repeats
from ospo_mlx.reward.retrieval import RewardConfig, build_reward, coalition_text, query_prefixed
# isort: on

SHARED_ESCI = REPO_ROOT.parent / "shared" / "data" / "esci-sample"
FILLERS = (
    "great price",
    "fast delivery",
    "highly rated",
    "in stock now",
    "good quality",
    "best seller",
    "gift idea",
    "popular choice",
)
STOP_WORDS = "the of a the"
MAX_PLAYERS = 10


def all_masks(n: int) -> np.ndarray:
    keys = np.arange(1 << n)
    return ((keys[:, None] >> np.arange(n)) & 1).astype(bool)


def average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.sort(x)
    return (np.searchsorted(order, x, "left") + np.searchsorted(order, x, "right") + 1) / 2.0


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Rank correlation with ties averaged; None when either side is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def answer(phrases: list[str]) -> str:
    return "<answer>" + ", ".join(phrases) + "</answer>"


def exact_games(reward, responses: list[str], tasks: list[Task]) -> list[dict]:
    """Every coalition of every response scored in one batched pass; games with n <= 10."""
    spans = [segment(r, "phrase") for r in responses]
    keep = [i for i, s in enumerate(spans) if 2 <= len(s) <= MAX_PLAYERS]
    masks = [all_masks(len(spans[i])) for i in keep]
    batch = (
        [responses[i] for i in keep], [spans[i] for i in keep], masks, [tasks[i] for i in keep]
    )  # fmt: skip
    values = reward.coalition_values(*batch)
    # The stand-in game on every coalition, as the trainer builds it (n <= 10: all 2^n).
    stand_in = reward.surrogate_values(*batch)
    return [
        {"response": responses[i], "spans": spans[i], "v": v, "v_sur": sur, "task": tasks[i]}
        for i, v, sur in zip(keep, values, stand_in, strict=True)
    ]


def estimated(game_of: dict, config: AttributionConfig, rng, empty_zero: bool) -> np.ndarray:
    """The trainer's values for a game: its coalitions looked up in the exact table (and the
    stand-in game, evaluated on every coalition, under `surrogate: pooled`)."""
    n = len(game_of["spans"])
    v = game_of["v"].copy()
    if empty_zero:
        v[0] = 0.0  # the old default: v(empty) = 0 although the query is prepended
    masks = sample_coalitions(n, config, rng)
    game = None
    if config.surrogate == "pooled" and game_of.get("v_sur") is not None:
        sur = game_of["v_sur"].copy()
        if empty_zero:
            sur[0] = 0.0
        game = SurrogateGame(all_masks(n), sur)
    return estimate(masks, coalition_values(v, masks), config, game).phi


def tokens_per_answer(games: dict, config: AttributionConfig, draws: int) -> float:
    """Mean encoder tokens of the coalition texts a step scores per answer (the sources'
    games): the sampled coalitions other than the empty and the full answer, which the
    reward scores anyway; the stand-in game encodes nothing more."""
    from ospo_mlx.reward.encoder import load_encoder

    tokenizer = load_encoder().tokenizer
    cost: dict[str, int] = {}
    totals = []
    for source in games["sources"].values():
        for game in source:
            n = len(game["spans"])
            for d in range(draws):
                masks = sample_coalitions(n, config, np.random.default_rng([d, 1]))
                texts = [
                    query_prefixed(
                        collapse_repeats(coalition_text(game["response"], game["spans"], m))[0],
                        game["task"],
                        None,
                    )
                    for m in masks
                    if 0 < m.sum() < n
                ]
                for t in texts:
                    if t not in cost:
                        cost[t] = len(tokenizer.encode(t).ids)
                totals.append(sum(cost[t] for t in texts))
    return float(np.mean(totals)) if totals else 0.0


def is_top(phi: np.ndarray, truth: np.ndarray, tol: float = 1e-9) -> bool:
    return bool(truth[int(np.argmax(phi))] >= truth.max() - tol)


def phrase_responses(tasks, catalog, rng, count: int) -> tuple[list[str], list[Task]]:
    """Answers mixing phrases of a relevant product's title, other titles and fillers."""
    ids = list(catalog)
    responses, used = [], []
    for task in tasks:
        if len(responses) >= count:
            break
        best = max(task.targets, key=task.targets.get)
        if best not in catalog:
            continue
        good = [p for p in segment(catalog[best].title, "phrase", answer_tags=None)]
        good = [catalog[best].title[s:e] for s, e in good][:3]
        others = [catalog[ids[int(j)]].title for j in rng.choice(len(ids), 2, replace=False)]
        others = [t[: t.find(",")] if "," in t else t for t in others]
        fill = list(rng.choice(FILLERS, int(rng.integers(1, 4)), replace=False))
        phrases = [*good, *[" ".join(o.split()[:4]) for o in others], *fill]
        rng.shuffle(phrases)
        responses.append(answer(phrases))
        used.append(task)
    return responses, used


def esci_source():
    """The ESCI sample converted to tasks and a catalog (None when ../shared is absent)."""
    if not SHARED_ESCI.is_dir():
        return None
    from ospo_mlx.data.esci import EsciConfig, convert_esci

    catalog, tasks, _ = convert_esci(SHARED_ESCI, EsciConfig(pool_size=50))
    return dict(catalog), [t for t in tasks if t.query and t.pool]


def planted_tasks(count: int, rng) -> tuple[dict[str, Product], list[Task], list[str], list[str]]:
    """Synthetic tasks with their hidden attribute phrase planted among distractors."""
    from ospo_mlx.data.synthetic import CATEGORIES, SyntheticConfig, generate

    products, tasks, report = generate(SyntheticConfig(n_train=count, n_test=0, seed=7))
    intents = report.extra["hidden_intents"]
    responses, planted = [], []
    for task in tasks:
        hidden = intents[task.id]
        clue = hidden["material"] if rng.random() < 0.5 else hidden["use"]
        other = [
            a
            for c in CATEGORIES
            if c.name != hidden["category"]
            for i in c.intents
            for a in (i.use, i.material)
        ]
        distract = [*rng.choice(other, 2, replace=False), *rng.choice(FILLERS, 2, replace=False)]
        phrases = [clue, *distract]
        rng.shuffle(phrases)
        responses.append(answer(phrases))
        planted.append(clue)
    return {p.product_id: p for p in products}, tasks, responses, planted


def collect_games(count: int, rng) -> dict:
    """Every exact game the bench scores: per source, the planted ones and the noisy ones."""
    sources = {}
    demo_catalog = load_catalog(REPO_ROOT / "data" / "demo" / "catalog.jsonl")
    demo_tasks = load_tasks(REPO_ROOT / "data" / "demo" / "train.jsonl", demo_catalog)
    sources["demo"] = (demo_catalog, demo_tasks)
    esci = esci_source()
    if esci is not None:
        sources["esci"] = esci
    out: dict = {"sources": {}}
    for name, (catalog, tasks) in sources.items():
        reward = build_reward(catalog, RewardConfig())
        responses, used = phrase_responses(tasks, catalog, rng, count)
        out["sources"][name] = exact_games(reward, responses, used)
    catalog, tasks, responses, planted = planted_tasks(count, rng)
    reward = build_reward(catalog, RewardConfig())
    out["planted"] = list(zip(exact_games(reward, responses, tasks), planted, strict=True))
    # Segments meant to have no effect (stop words, the query again) inside planted answers.
    noisy = [
        answer([*r[len("<answer>") : -len("</answer>")].split(", "), t.query or "", STOP_WORDS])
        for t, r in zip(tasks, responses, strict=True)
    ]
    out["noisy"] = exact_games(reward, noisy, tasks)
    return out


def measure(games: dict, config: AttributionConfig, draws: int, empty_zero: bool) -> dict:
    """The fidelity figures of one credit configuration on the collected games."""
    spear: dict[str, list[float]] = {}
    top1: dict[str, list[bool]] = {}
    for name, source in games["sources"].items():
        for game in source:
            truth = shapley_exact(game["v"])
            for d in range(draws):
                phi = estimated(game, config, np.random.default_rng([d, 1]), empty_zero)
                rho = spearman(phi, truth)
                if rho is not None:
                    spear.setdefault(name, []).append(rho)
                if np.ptp(truth) > 0:
                    top1.setdefault(name, []).append(is_top(phi, truth))
    hits = []
    options: dict[str, dict[str, list[float]]] = {}
    for game, clue in games["planted"]:
        phi = estimated(game, config, np.random.default_rng(3), empty_zero)
        texts = [game["response"][s:e] for s, e in game["spans"]]
        hits.append(texts[int(np.argmax(phi))] == clue)
        if clue not in texts:
            continue
        j = texts.index(clue)
        # Where a +1 / -1 advantage goes under each weight option (one token per segment).
        for normalize in ("zero", "minmax", "softmax"):
            for rule in ("mirror", "paper"):
                row = options.setdefault(f"{normalize}/{rule}", {"pos": [], "neg": []})
                for adv, key in ((1.0, "pos"), (-1.0, "neg")):
                    w = normalize_values(signed_values(phi, adv, rule), normalize, 0.05)
                    share = w / w.sum() if w.sum() > 0 else np.full(len(w), 1 / len(w))
                    row[key].append(float(share[j]))
    bias, raw, real = [], [], []
    for game in games["noisy"]:
        phi = estimated(game, config, np.random.default_rng(4), empty_zero)
        truth = shapley_exact(game["v"])
        query = game["task"].query or ""
        start = game["response"].find(query, len("<answer>"))
        for j, (s0, e0) in enumerate(game["spans"]):
            text = game["response"][s0:e0]
            if text == STOP_WORDS or start <= s0 < e0 <= start + len(query):
                bias.append(abs(phi[j] - truth[j]))
                raw.append(abs(phi[j]))
                real.append(abs(truth[j]))
    all_spear = [r for rs in spear.values() for r in rs]
    all_top = [t for ts in top1.values() for t in ts]
    return {
        "config": {
            "estimator": config.estimator,
            "max_coalitions": config.max_coalitions,
            "surrogate": config.surrogate if config.estimator == "shapley" else "none",
            "empty_value": "zero (old)" if empty_zero else "auto",
        },
        "estimator_spearman": float(np.mean(all_spear)) if all_spear else None,
        "estimator_top1": float(np.mean(all_top)) if all_top else None,
        "planted_top1": float(np.mean(hits)) if hits else None,
        # Credit beyond the segment's own effect (the v(empty) defect shows up here).
        "query_bias": float(max(bias)) if bias else None,
        # The literal |phi| and the exact effect the retriever gives these segments.
        "no_effect_abs_phi_max": float(max(raw)) if raw else None,
        "no_effect_exact_abs_max": float(max(real)) if real else None,
        "no_effect_exact_abs_mean": float(np.mean(real)) if real else None,
        "by_source": {
            k: {
                "games": len(v),
                "spearman": float(np.mean(spear.get(k, [np.nan]))),
                "top1": float(np.mean(top1.get(k, [np.nan]))),
            }
            for k, v in games["sources"].items()
        },
        "planted_games": len(hits),
        # Share of a +1 / -1 advantage that lands on the planted (helpful) segment.
        "weight_options": {
            k: {
                "planted_share_positive_A": float(np.mean(v["pos"])),
                "planted_share_negative_A": float(np.mean(v["neg"])),
            }
            for k, v in options.items()
        },
    }


def lines_of(result: dict) -> list[str]:
    return [
        f"config: {result['config']}",
        f"  estimator_spearman {result['estimator_spearman']:.3f}  (target >= 0.9)",
        f"  estimator_top1     {result['estimator_top1']:.3f}  (target >= 0.8)",
        f"  planted_top1       {result['planted_top1']:.3f}  (target >= 0.9)",
        f"  query_bias         {result['query_bias']:.4f} (target <= 0.01; |phi - exact phi|)",
        f"  no-effect segments: max |phi| {result['no_effect_abs_phi_max']:.4f}, exact Shapley "
        f"max {result['no_effect_exact_abs_max']:.4f}, mean {result['no_effect_exact_abs_mean']:.4f}",
        f"  by source: {result['by_source']}",
        *(
            f"  {k}: planted share of +A {v['planted_share_positive_A']:.2f}, of -A "
            f"{v['planted_share_negative_A']:.2f}"
            for k, v in result["weight_options"].items()
        ),
    ]


def main() -> None:
    parser = bench_parser(__doc__, "fewer responses (for smoke tests)")
    parser.add_argument("--estimator", choices=("shapley", "contiguous"), default=None)
    parser.add_argument("--max-coalitions", type=int, default=None)
    parser.add_argument("--draws", type=int, default=5, help="coalition draws per response")
    parser.add_argument(
        "--budgets",
        default="8,16,32,64,128",
        help="also measure the default estimator at these budgets, with and without the stand-in",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="keep the scored games in this pickle file"
    )
    args = parser.parse_args()
    config = AttributionConfig()
    if args.estimator:
        config.estimator = args.estimator
    if args.max_coalitions:
        config.max_coalitions = args.max_coalitions
    config.validate()
    count = 6 if args.quick else 40
    draws = 2 if args.quick else args.draws
    if args.cache is not None and args.cache.is_file():
        with args.cache.open("rb") as fh:  # our own file from an earlier run
            games = pickle.load(fh)
    else:
        games = collect_games(count, np.random.default_rng(0))
        if args.cache is not None:
            with args.cache.open("wb") as fh:
                pickle.dump(games, fh)
    result = measure(games, config, draws, empty_zero=False)
    # The old defaults on the same games: contiguous windows, 16 coalitions, v(empty) = 0.
    old = AttributionConfig(estimator="contiguous", max_coalitions=16, surrogate="none")
    result["before"] = measure(games, old, draws, empty_zero=True)
    budgets = [] if args.quick else [int(b) for b in args.budgets.split(",") if b]
    # Every budget with and without the stand-in game, and the encoder tokens each costs.
    result["budgets"] = {}
    for b in sorted({*budgets, config.max_coalitions}) if budgets else []:
        for surrogate in ("pooled", "none"):
            cfg = AttributionConfig(
                estimator=config.estimator, max_coalitions=b, surrogate=surrogate
            )
            row = measure(games, cfg, draws, empty_zero=False)
            row["encoder_tokens_per_answer"] = tokens_per_answer(games, cfg, draws)
            result["budgets"][f"{b}/{surrogate}"] = row
    lines = [*lines_of(result), "before (the old defaults):", *lines_of(result["before"])]
    for key, r in result["budgets"].items():
        lines.append(
            f"budget {key}: spearman {r['estimator_spearman']:.3f} top1 {r['estimator_top1']:.3f} "
            f"planted {r['planted_top1']:.3f} query_bias {r['query_bias']:.4f} "
            f"encoder tokens/answer {r['encoder_tokens_per_answer']:.0f}"
        )
    emit("fidelity", result, args.json, lines)


if __name__ == "__main__":
    main()
