"""Side by side: ospo (GRPO and OSPO), mlx-lm-lora and TRL's GRPOTrainer on one GRPO workload.

The common workload: SmolLM2-135M-Instruct float32, LoRA r=16 alpha 32 dropout 0 on q/k/v/o of
all 30 blocks, 4 prompts x 8 completions, at most 64 new tokens stopping only at EOS,
temperature 1, top_p 1, top_k 0, beta 0, AdamW lr 1e-5, one optimizer step per batch. All
trainers read the same 16 prompts (the same token ids; each harness asserts it).

The trainers run alternately, R rounds, each process fresh, S steps per process; the first
step of every process (compilation, warm-up) is dropped. Per trainer: median step, generation
and update seconds, generated tokens/s, MLX peak memory (MLX trainers) and peak RSS (all,
from the kernel's accounting of each process). The peers run from their own virtual
environments with the harness scripts of ../shared/peers (see its README for the setup:
OpenBLAS for mlx-lm-lora, torch CPU for TRL, the float32 model copy); a peer that is not
installed is reported as missing and the bench runs the others.

    python bench/peers.py --json                      # 3 rounds x 3 steps, all four trainers
    python bench/peers.py --rounds 1 --steps 2        # shorter
    python bench/peers.py --trainers ospo-grpo,mlx-lm-lora
    python bench/peers.py --quick --json              # tiny model, ospo only, seconds
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, bench_parser, emit

TRAINERS = ("ospo-grpo", "ospo-ospo", "mlx-lm-lora", "trl")
HARNESS = REPO_ROOT.parent / "shared" / "peers"
WORK = Path("/tmp/peers")
ANCHOR_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ANCHOR_INSTRUCTION = (
    "Rewrite the shopping query '{query}' into a detailed product search query with brand, "
    "material and use case. Put it inside {open}{close}."
)


@dataclass
class Workload:
    """The common workload (README of the peers harness)."""

    prompts_per_step: int = field(default=4, metadata={"help": "Prompts per optimizer step."})
    num_generations: int = field(default=8, metadata={"help": "Completions per prompt."})
    max_new_tokens: int = field(default=64, metadata={"help": "Stop at EOS or this many tokens."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha (scale alpha/rank)."})
    num_prompts: int = field(default=16, metadata={"help": "Prompts in the shared file."})


QUICK = Workload(prompts_per_step=2, num_generations=2, max_new_tokens=8, lora_rank=4,
                 lora_alpha=8.0, num_prompts=4)  # fmt: skip


# ----------------------------------------------------------------------------- shared prompts


def write_prompts(path: Path, model: str | None, count: int) -> list[list[int]]:
    """The shared prompts (the TRL anchor's wording over the demo queries), as the peers read
    them: one JSON row per prompt with its chat messages and token ids."""
    import ospo_mlx  # noqa: F401  (BLAS before mlx)

    # isort: split
    from mlx_lm.utils import load_tokenizer

    from ospo_mlx.data.prompts import PromptConfig, build_messages, encode_prompt
    from ospo_mlx.data.schema import load_catalog, load_tasks
    from ospo_mlx.models.load import resolve_model

    tokenizer = load_tokenizer(Path(resolve_model(model)))
    cfg = PromptConfig(system_prompt=ANCHOR_SYSTEM, instruction=ANCHOR_INSTRUCTION)
    catalog = load_catalog(REPO_ROOT / "data/demo/catalog.jsonl")
    tasks = load_tasks(REPO_ROOT / "data/demo/train.jsonl", catalog)[:count]
    rows, ids = [], []
    for task in tasks:
        messages = build_messages(task, catalog, cfg)
        prompt = [int(i) for i in encode_prompt(tokenizer, task, catalog, cfg)]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        rows.append({
            "id": task.id, "query": task.query, "system": system,
            "prompt": messages[-1]["content"], "answer": "", "messages": messages,
            "prompt_tokens": len(prompt), "prompt_ids": prompt,
        })  # fmt: skip
        ids.append(prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    (path.parent / "prompts.style").write_text("anchor\n")
    overrides = [
        f"prompt.system_prompt={json.dumps(ANCHOR_SYSTEM)}",
        f"prompt.instruction={json.dumps(ANCHOR_INSTRUCTION)}",
    ]
    (path.parent / "prompts.ospo_overrides.txt").write_text("\n".join(overrides) + "\n")
    return ids


# ----------------------------------------------------------------------------- ospo worker


def ospo_overrides(w: Workload, algorithm: str, seed: int, quick: bool) -> list[str]:
    from ospo_mlx.attribution.config import AttributionConfig

    keys = "[" + ",".join(f"self_attn.{k}" for k in ("q_proj", "k_proj", "v_proj", "o_proj")) + "]"
    return [
        f"algorithm={algorithm}",
        f"data.max_tasks={w.num_prompts}",
        f"lora.rank={w.lora_rank}", f"lora.alpha={w.lora_alpha}", "lora.dropout=0.0",
        "lora.num_layers=-1", f"lora.keys={keys}",
        f"sampling.max_new_tokens={w.max_new_tokens}", "sampling.temperature=1.0",
        "sampling.top_p=1.0", "sampling.top_k=0", "sampling.min_p=0.0",
        f"optim.batch_size={w.prompts_per_step}", f"optim.num_generations={w.num_generations}",
        "optim.num_iterations=1", "optim.gradient_accumulation_steps=1",
        f"optim.learning_rate={w.learning_rate}", "optim.warmup_steps=0", "optim.beta=0.0",
        "optim.loss_type=dapo", "optim.epsilon=0.2", "optim.epsilon_high=0.2",
        "optim.max_grad_norm=1.0", "sft.steps=0", "run.log_attributions=false",
        "run.log_rollouts=false", "run.save_every=100000", f"run.seed={seed}",
        # OSPO at the library's credit defaults (demo.yaml keeps 64 for its short answers).
        f"attribution.max_coalitions={AttributionConfig().max_coalitions}",
        f"prompt.system_prompt={json.dumps(ANCHOR_SYSTEM)}",
        f"prompt.instruction={json.dumps(ANCHOR_INSTRUCTION)}",
        *(["model.name=tiny"] if quick else []),
    ]  # fmt: skip


def ospo_worker(args: Any) -> None:
    """Run `args.steps` ospo steps in this process; one `STEP {json}` line per step."""
    import ospo_mlx  # noqa: F401  (BLAS before mlx)

    # isort: split
    import mlx.core as mx

    from ospo_mlx.config import load_config
    from ospo_mlx.train.trainer import Trainer

    w = QUICK if args.quick else Workload()
    algorithm = args.worker.split("-", 1)[1]
    expected = [
        json.loads(line)["prompt_ids"]
        for line in Path(args.prompts).read_text("utf-8").splitlines()
        if line.strip()
    ]
    with tempfile.TemporaryDirectory() as out:
        sets = ospo_overrides(w, algorithm, args.seed, args.quick) + list(args.set)
        cfg = load_config(REPO_ROOT / "configs/demo.yaml", sets,
                          **{"run.out": out, "optim.steps": args.steps})  # fmt: skip
        trainer = Trainer.from_config(cfg)
        mine = [[int(t) for t in p] for p in trainer.prompts]
        if mine != expected:
            raise SystemExit("ospo's prompt token ids differ from the shared prompts file")
        for i in range(args.steps):
            tic = time.perf_counter()
            m = trainer.train_step().metrics
            wall = time.perf_counter() - tic
            tokens = m["completions/mean_length"] * w.prompts_per_step * w.num_generations
            record = {
                "trainer": args.worker, "step": i + 1, "first_in_process": i == 0,
                "step_s": wall, "generate_s": m["time/sample"], "reward_s": m["time/reward"],
                "other_s": m["time/attribution"], "update_s": m["time/update"],
                "completion_tokens": round(tokens), "peak_mem_gb": m["peak_memory_gb"],
                "micro_batch_rows": trainer.update.last_micro_rows,
                "versions": {"mlx": mx.__version__},
            }  # fmt: skip
            print("STEP " + json.dumps(record), flush=True)
        if trainer.log is not None:
            trainer.log.close()


# ----------------------------------------------------------------------------- processes


@dataclass
class Peer:
    """How to start one trainer's process, or why it cannot run here."""

    name: str
    command: list[str]
    missing: str | None = None


def peers(args: Any, prompts: Path) -> dict[str, Peer]:
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--steps", str(args.steps), "--max-new-tokens", str(args.max_new_tokens)]
    ospo = [*me, "--prompts", str(prompts), "--steps", str(args.steps)]
    ospo += ["--quick"] if args.quick else []
    for s in args.set:
        ospo += ["--set", s]
    out = {
        "ospo-grpo": Peer("ospo-grpo", [*ospo, "--worker", "ospo-grpo"]),
        "ospo-ospo": Peer("ospo-ospo", [*ospo, "--worker", "ospo-ospo"]),
        "mlx-lm-lora": Peer(
            "mlx-lm-lora", [args.mlxlora_python, str(args.harness / "mlxlora_steps.py"), *common]
        ),
        "trl": Peer(
            "trl",
            [
                args.trl_python,
                str(args.harness / "trl_steps.py"),
                "--gc",
                str(args.trl_gc),
                *common,
            ],
        ),
    }
    checks = {
        "mlx-lm-lora": (args.mlxlora_python, "mlx_lm_lora", args.harness / "mlxlora_steps.py"),
        "trl": (args.trl_python, "trl", args.harness / "trl_steps.py"),
    }
    for name, (python, module, script) in checks.items():
        if args.quick:
            out[name].missing = "skipped by --quick"
        elif not Path(python).is_file():
            out[name].missing = f"{python} not found (see {args.harness / 'README.md'})"
        elif not script.is_file():
            out[name].missing = f"{script} not found"
        elif subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode:
            out[name].missing = f"{python} cannot import {module}"
    model = Path(os.environ.get("PEERS_MODEL", args.work / "smollm2-135m-instruct-f32"))
    if out["mlx-lm-lora"].missing is None and not (model / "model.safetensors").is_file():
        out[
            "mlx-lm-lora"
        ].missing = (
            f"{model} not found: `mlx_lm convert -d --dtype float32` of ospo's model directory"
        )
    return out


def run_process(peer: Peer, env: dict[str, str], log: Path, seed: int) -> dict[str, Any]:
    """Run one fresh process; its STEP records, exit code and peak RSS (kernel's max RSS)."""
    command = [*peer.command, "--seed", str(seed)]
    with log.open("w") as f:
        proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "steps": read_steps(log),
        "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9,
    }


def read_steps(log: Path) -> list[dict[str, Any]]:
    """The `STEP {json}` records of a log; a progress bar may share the line (mlx-lm-lora's)."""
    out = []
    for line in log.read_text("utf-8", errors="replace").splitlines():
        at = line.find("STEP {")
        if at >= 0:
            out.append(json.loads(line[at + 5 :]))
    return out


def median(values: list[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over every process's steps after its first; peaks are maxima over processes."""
    steps = [s for r in runs for s in r["steps"] if not s.get("first_in_process")]
    mem = [s.get("peak_mem_gb") for r in runs for s in r["steps"]]
    gen_rate = [
        s["completion_tokens"] / s["generate_s"] for s in steps if s.get("generate_s")
    ]  # fmt: skip
    return {
        "processes": len(runs),
        "failed_processes": sum(1 for r in runs if r["rc"] != 0),
        "steps": len(steps),
        "step_s": median([s["step_s"] for s in steps]),
        "generate_s": median([s["generate_s"] for s in steps]),
        "update_s": median([s["update_s"] for s in steps]),
        "generate_tokens_per_s": median(gen_rate),
        "completion_tokens": median([s["completion_tokens"] for s in steps]),
        "step_s_per_1k_tokens": median(
            [1000 * s["step_s"] / s["completion_tokens"] for s in steps if s["completion_tokens"]]
        ),
        "peak_mem_gb": max((m for m in mem if m is not None), default=None),
        "peak_rss_gb": max((r["peak_rss_gb"] for r in runs), default=None),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(s: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    def get(trainer: str, key: str) -> float | None:
        return s.get(trainer, {}).get(key)

    return {
        "ospo_vs_mlxlmlora_step": ratio(get("ospo-grpo", "step_s"), get("mlx-lm-lora", "step_s")),
        "ospo_vs_mlxlmlora_update": ratio(
            get("ospo-grpo", "update_s"), get("mlx-lm-lora", "update_s")
        ),
        "ospo_vs_mlxlmlora_generate_tokens_per_s": ratio(
            get("ospo-grpo", "generate_tokens_per_s"), get("mlx-lm-lora", "generate_tokens_per_s")
        ),
        "ospo_vs_mlxlmlora_memory": ratio(
            get("ospo-grpo", "peak_mem_gb"), get("mlx-lm-lora", "peak_mem_gb")
        ),
        "ospo_vs_mlxlmlora_rss": ratio(
            get("ospo-grpo", "peak_rss_gb"), get("mlx-lm-lora", "peak_rss_gb")
        ),
        "ospo_vs_trl_step": ratio(get("ospo-grpo", "step_s"), get("trl", "step_s")),
        "ospo_vs_trl_rss": ratio(get("ospo-grpo", "peak_rss_gb"), get("trl", "peak_rss_gb")),
        "ospo_ospo_vs_grpo_step": ratio(get("ospo-ospo", "step_s"), get("ospo-grpo", "step_s")),
    }


def main() -> None:
    parser = bench_parser(__doc__, "tiny model, ospo only, 1 round x 2 steps (seconds)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all trainers")
    parser.add_argument("--steps", type=int, default=3, help="steps per process (first dropped)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens at most")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated")
    parser.add_argument("--seed", type=int, default=0, help="round r uses seed + r")
    parser.add_argument("--harness", type=Path, default=HARNESS, help="peer step scripts")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch: prompts, logs, model")
    parser.add_argument(
        "--mlxlora-python", default=str(WORK / "mlxlora-venv/bin/python"),
        help="python of the mlx-lm-lora venv",
    )  # fmt: skip
    parser.add_argument(
        "--trl-python", default="/tmp/trl-anchor/venv/bin/python", help="python of the TRL venv"
    )
    parser.add_argument("--trl-gc", type=int, default=1, help="TRL gradient checkpointing")
    parser.add_argument("--set", action="append", default=[], help="extra ospo override")
    parser.add_argument("--worker", default=None, help=argparse_hidden())
    parser.add_argument("--prompts", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.worker:
        return ospo_worker(args)
    if args.quick:
        args.rounds, args.steps, args.max_new_tokens = 1, 2, QUICK.max_new_tokens
    work = Path(tempfile.mkdtemp(prefix="ospo-peers-")) if args.quick else args.work
    prompts = work / "data" / "prompts.jsonl"
    write_prompts(
        prompts, "tiny" if args.quick else None, (QUICK if args.quick else Workload()).num_prompts
    )
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PEERS_PROMPTS": str(prompts),
        "PEERS_MODEL": os.environ.get("PEERS_MODEL", str(work / "smollm2-135m-instruct-f32")),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
    }  # fmt: skip
    table = peers(args, prompts)
    wanted = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in table]
    if unknown:
        raise SystemExit(f"--trainers: unknown {unknown}; choose from {list(TRAINERS)}")
    missing = {t: table[t].missing for t in wanted if table[t].missing}
    running = [t for t in wanted if t not in missing]
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    load = {"before": os.getloadavg()}
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in running}
    for r in range(args.rounds):
        for name in running:
            log = logs / f"{name}-round{r + 1}.log"
            result = run_process(table[name], env, log, args.seed + r + 1)
            result["log"] = str(log)
            runs[name].append(result)
            partial = {n: summarize(rs) for n, rs in runs.items() if rs}
            (work / "peers-partial.json").write_text(  # survives an interrupted run
                json.dumps({"trainers": partial, **ratios(partial)}, indent=1)
            )
            if not args.json:
                print(f"round {r + 1} {name}: rc {result['rc']}, {len(result['steps'])} steps, "
                      f"peak RSS {result['peak_rss_gb']:.2f} GB ({log})", flush=True)  # fmt: skip
    load["after"] = os.getloadavg()
    summary = {name: summarize(rs) for name, rs in runs.items()}
    failed = {n: [r["log"] for r in rs if r["rc"] != 0] for n, rs in runs.items()}
    result = {
        "workload": asdict(QUICK if args.quick else Workload()),
        "model": "tiny" if args.quick else "SmolLM2-135M-Instruct float32",
        "rounds": args.rounds,
        "steps_per_process": args.steps,
        "trainers": summary,
        "missing": missing,
        "failed_logs": {n: v for n, v in failed.items() if v},
        **ratios(summary),
        "load_avg_1m": {k: v[0] for k, v in load.items()},
    }
    lines = [f"{args.rounds} round(s) x {args.steps} steps, first step of each process dropped"]
    for name, s in summary.items():
        lines.append(
            f"  {name:12s} step {fmt(s['step_s'])} s  generate {fmt(s['generate_s'])} s "
            f"({fmt(s['generate_tokens_per_s'])} tok/s)  update {fmt(s['update_s'])} s  "
            f"MLX peak {fmt(s['peak_mem_gb'])} GB  RSS {fmt(s['peak_rss_gb'])} GB"
        )
    lines += [f"  missing {k}: {v}" for k, v in missing.items()]
    lines += [f"  {k}: {fmt(v)}" for k, v in ratios(summary).items()]
    emit("peers", result, args.json, lines)
    if any(failed.values()):
        sys.exit(1)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
