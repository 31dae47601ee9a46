"""Supervised warm-up: targets that never leak hidden attributes, the loss against a NumPy
reference, a real (tiny-model) training run that learns, and adapters that round-trip."""

from __future__ import annotations

import json
from collections import Counter

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

import ospo_mlx  # noqa: F401  (optimized BLAS before mlx)
from ospo_mlx.config import LoraConfig, load_config
from ospo_mlx.data.prompts import PromptConfig, encode_prompt
from ospo_mlx.data.schema import HistoryItem, Product, Task
from ospo_mlx.data.synthetic import SyntheticConfig, generate
from ospo_mlx.errors import ConfigError, OspoError
from ospo_mlx.train.policy import apply_lora
from ospo_mlx.train.sft import (
    SFTConfig,
    build_examples,
    example_order,
    load_adapter_weights,
    pack_examples,
    run_sft,
    sft_loss,
    train_sft,
    warmup_answer,
    warmup_completion,
)


@pytest.fixture(scope="module")
def synthetic():
    products, tasks, report = generate(
        SyntheticConfig(n_products=128, n_train=60, n_test=0, categories=8, pool_size=20)
    )
    return {p.product_id: p for p in products}, tasks, report.extra["hidden_intents"]


@pytest.fixture(scope="module")
def tiny():
    from ospo_mlx.models.load import load_model

    return load_model("tiny")


def fresh_tiny(rank: int = 4, seed: int = 0):
    from ospo_mlx.models.load import load_model

    model, tokenizer = load_model("tiny")
    apply_lora(model, LoraConfig(rank=rank, scale=20.0), seed=seed)
    return model, tokenizer


# ----------------------------------------------------------------------------- targets


def test_warmup_answer_names_the_category_but_never_the_hidden_attributes(synthetic):
    catalog, tasks, intents = synthetic
    for task in tasks:
        answer = warmup_answer(task, catalog)
        hidden = intents[task.id]
        assert answer.startswith(task.query)
        assert hidden["category"] in answer
        extra = answer[len(task.query) :]
        # Whatever the query does not already say about the intent, the answer must not add.
        for key in ("use", "material"):
            assert hidden[key] not in extra, (task.query, answer)


def test_warmup_answer_does_not_repeat_a_category_the_query_states():
    catalog = {"p1": Product(product_id="p1", title="Trail shoe", category="running shoes")}
    task = Task(id="t", kind="query_expansion", targets={"p1": 3.0}, query="running shoes for mud")
    assert warmup_answer(task, catalog) == "running shoes for mud"


def test_warmup_answer_uses_the_best_target_category():
    catalog = {
        "a": Product(product_id="a", title="A", category="tents"),
        "b": Product(product_id="b", title="B", category="backpack"),
    }
    task = Task(
        id="t", kind="query_expansion", targets={"a": 1.0, "b": 3.0}, query="gear for trips"
    )
    assert warmup_answer(task, catalog) == "gear for trips backpack"


def test_warmup_answer_for_shopper_profiles_reads_only_the_history():
    catalog = {
        "h1": Product(product_id="h1", title="Blue jeans", category="Trousers"),
        "h2": Product(product_id="h2", title="Slim chinos", category="Trousers"),
        "h3": Product(product_id="h3", title="Red top", category="Top"),
        "target": Product(product_id="target", title="Secret dress", category="Dress"),
    }
    history = [
        HistoryItem(product_id=p, date="2020-01-0" + str(i))
        for i, p in enumerate(["h1", "h2", "h3"], 1)
    ]
    task = Task(id="t", kind="shopper_profile", targets={"target": 1.0}, history=history)
    answer = warmup_answer(task, catalog)
    assert answer == "Trousers like Red top"
    assert "Dress" not in answer and "Secret" not in answer


def test_warmup_completion_uses_the_configured_tags(synthetic):
    catalog, tasks, _ = synthetic
    text = warmup_completion(tasks[0], catalog, PromptConfig(answer_tags=("[a]", "[/a]")))
    assert text == f"[a]{warmup_answer(tasks[0], catalog)}[/a]"


def test_build_examples_end_with_eos_and_decode_back(synthetic, tiny):
    catalog, tasks, _ = synthetic
    _, tokenizer = tiny
    examples = build_examples(tokenizer, tasks[:5], catalog)
    for task, ex in zip(tasks[:5], examples, strict=True):
        assert ex.task_id == task.id
        assert ex.prompt == encode_prompt(tokenizer, task, catalog)
        assert ex.target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ex.target[:-1]) == ex.text
        assert ex.text.startswith("<answer>") and ex.text.endswith("</answer>")


# ----------------------------------------------------------------------------- order and config


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(1, 30),
    steps=st.integers(1, 20),
    batch=st.integers(1, 9),
    seed=st.integers(0, 2**31),
)
def test_example_order_covers_every_example_evenly(count, steps, batch, seed):
    order = example_order(count, steps, batch, seed)
    assert len(order) == steps and all(len(b) == batch for b in order)
    flat = [i for b in order for i in b]
    assert all(0 <= i < count for i in flat)
    # Each full epoch is a permutation, so counts differ by at most one.
    counts = Counter(flat)
    seen = [counts.get(i, 0) for i in range(count)]
    assert max(seen) - min(seen) <= 1
    assert order == example_order(count, steps, batch, seed)


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": 0}, {"batch_size": 0}, {"learning_rate": 0.0}, {"max_tasks": 0}],
)
def test_sft_config_rejects_bad_values(kwargs):
    with pytest.raises(ConfigError):
        SFTConfig(**kwargs).validate()


# ----------------------------------------------------------------------------- loss and training


def test_sft_loss_matches_a_numpy_cross_entropy(synthetic):
    catalog, tasks, _ = synthetic
    model, tokenizer = fresh_tiny()
    examples = build_examples(tokenizer, tasks[:3], catalog)
    batch = pack_examples(examples, pad_id=tokenizer.eos_token_id)
    loss, ntokens = sft_loss(model, batch.tokens, batch.prompt_lens, batch.mask)

    logits = np.array(model(batch.tokens).astype(mx.float32), dtype=np.float64)
    total, count = 0.0, 0
    for i, ex in enumerate(examples):
        p = len(ex.prompt)
        for t, token in enumerate(ex.target):
            row = logits[i, p - 1 + t]
            logz = np.log(np.exp(row - row.max()).sum()) + row.max()
            total -= row[token] - logz
            count += 1
    assert int(ntokens.item()) == count
    assert loss.item() == pytest.approx(total / count, rel=1e-4)


def test_train_sft_lowers_the_loss_and_changes_only_the_adapters(synthetic):
    catalog, tasks, _ = synthetic
    model, tokenizer = fresh_tiny()
    frozen = {k: np.array(v) for k, v in tree_flatten(model.parameters()) if "lora" not in k}
    examples = build_examples(tokenizer, tasks[:2], catalog)
    rows = train_sft(
        model, examples, SFTConfig(steps=25, batch_size=2, learning_rate=3e-2), pad_id=0
    )
    assert len(rows) == 25 and rows[0]["step"] == 1
    assert rows[-1]["loss"] < 0.93 * rows[0]["loss"]  # the tiny model plateaus near 9.6
    assert all(r["tokens"] == sum(len(e.target) for e in examples) for r in rows)
    after = dict(tree_flatten(model.parameters()))
    for key, value in frozen.items():
        np.testing.assert_array_equal(np.array(after[key]), value, err_msg=key)


def test_train_sft_refuses_a_model_without_adapters(synthetic, tiny):
    catalog, tasks, _ = synthetic
    from ospo_mlx.models.load import load_model

    model, tokenizer = load_model("tiny")
    model.freeze()
    examples = build_examples(tokenizer, tasks[:2], catalog)
    with pytest.raises(OspoError, match="no trainable parameters"):
        train_sft(model, examples, SFTConfig(steps=1))
    with pytest.raises(OspoError, match="no examples"):
        train_sft(model, [], SFTConfig(steps=1))


def test_run_sft_saves_adapters_that_load_back(tmp_path, repo_root):
    config = load_config(
        repo_root / "configs" / "tiny.yaml",
        **{
            "data.catalog": str(repo_root / "data/demo/catalog.jsonl"),
            "data.train": str(repo_root / "data/demo/train.jsonl"),
        },
    )
    result = run_sft(config, SFTConfig(steps=3, batch_size=2, max_tasks=6), tmp_path / "sft")
    assert result.examples == 6 and len(result.metrics) == 3
    assert (tmp_path / "sft" / "adapters.safetensors").is_file()
    rows = [
        json.loads(x) for x in (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == [1, 2, 3]
    saved = mx.load(str(tmp_path / "sft" / "adapters.safetensors"))

    model, _ = fresh_tiny(rank=config.lora.rank, seed=123)
    assert load_adapter_weights(model, tmp_path / "sft") == len(saved)
    loaded = dict(tree_flatten(model.trainable_parameters()))
    for key, value in saved.items():
        np.testing.assert_array_equal(np.array(loaded[key]), np.array(value))

    # mlx-lm reads the same directory (adapter_config.json + adapters.safetensors).
    from mlx_lm.tuner.utils import load_adapters

    from ospo_mlx.models.load import load_model

    base, _ = load_model("tiny")
    via_mlx_lm = dict(tree_flatten(load_adapters(base, str(tmp_path / "sft")).parameters()))
    for key, value in saved.items():
        np.testing.assert_array_equal(np.array(via_mlx_lm[key]), np.array(value))

    wrong, _ = fresh_tiny(rank=config.lora.rank + 2)
    with pytest.raises(OspoError, match="shape"):
        load_adapter_weights(wrong, tmp_path / "sft")
    with pytest.raises(OspoError, match="not found"):
        load_adapter_weights(model, tmp_path / "missing")


def test_rl_continues_from_the_warm_up_adapters(tmp_path, repo_root):
    """The compiled RL update reads the loaded warm-up weights, not the LoRA init it was built on."""
    from ospo_mlx.train.trainer import Trainer

    paths = {
        "data.catalog": str(repo_root / "data/demo/catalog.jsonl"),
        "data.train": str(repo_root / "data/demo/train.jsonl"),
    }
    config = load_config(
        repo_root / "configs" / "tiny.yaml",
        **paths,
        **{"optim.steps": 1, "optim.learning_rate": 1e-4, "run.out": str(tmp_path / "rl")},
    )
    run_sft(
        config, SFTConfig(steps=3, batch_size=2, max_tasks=4, learning_rate=5e-2), tmp_path / "sft"
    )
    warm = {
        k: np.array(v) for k, v in mx.load(str(tmp_path / "sft" / "adapters.safetensors")).items()
    }
    trainer = Trainer.from_config(config)
    init = {k: np.array(v) for k, v in tree_flatten(trainer.model.trainable_parameters())}
    load_adapter_weights(trainer.model, tmp_path / "sft")
    trainer.run()
    after = {k: np.array(v) for k, v in tree_flatten(trainer.model.trainable_parameters())}
    for key, value in warm.items():
        moved = np.abs(value - init[key]).max()
        assert moved > 1e-2, key  # the warm-up really changed this tensor
        assert np.abs(after[key] - value).max() < 0.1 * moved, key  # one small RL step from it
