"""Prompts: messages per task kind, chat-template encoding with a real (tiny) HF tokenizer, answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ospo_mlx.data.prompts import (
    PromptConfig,
    build_messages,
    encode_prompt,
    prompt_preview,
)
from ospo_mlx.data.schema import HistoryItem, Product, Task
from ospo_mlx.errors import ConfigError, DataError, OspoError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = [
    "the",
    "a",
    "of",
    "rewrite",
    "query",
    "shopper",
    "bought",
    "items",
    "running",
    "shoes",
    "answer",
    "describe",
]


def _tiny_tokenizer_dir(tmp: Path, chat_template: str | None) -> Path:
    """A word-level tokenizer.json (+ config with an optional chat template) on disk."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    tok.save(str(tmp / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "eos_token": "<|im_end|>",
        "bos_token": None,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (tmp / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp


@pytest.fixture()
def catalog() -> dict[str, Product]:
    return {
        "p1": Product(
            "p1", "Trail running shoes", brand="Stridex", color="olive", category="shoes"
        ),
        "p2": Product("p2", "Rain jacket " + "very long description " * 20),
        "p3": Product("p3", "Wool socks"),
    }


def qe_task() -> Task:
    return Task(id="q1", kind="query_expansion", targets={"p1": 3.0}, query="running shoes for mud")


def profile_task(n: int = 3) -> Task:
    ids = ["p1", "p2", "p3"]
    history = [HistoryItem(ids[i % 3], f"2020-01-{i + 1:02d}") for i in range(n)]
    return Task(id="s1", kind="shopper_profile", targets={"p3": 1.0}, history=history)


def test_query_expansion_messages(catalog):
    msgs = build_messages(qe_task(), catalog)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "running shoes for mud" in msgs[1]["content"]
    assert "<answer>...</answer>" in msgs[1]["content"]
    assert build_messages(qe_task(), catalog, PromptConfig(system_prompt=""))[0]["role"] == "user"


def test_shopper_profile_lists_recent_history_capped(catalog):
    cfg = PromptConfig(max_history_items=2, max_item_chars=40)
    text = prompt_preview(profile_task(5), catalog, cfg)
    lines = [ln for ln in text.splitlines() if ln[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 2  # only the 2 most recent items: p1 (index 3) and p2 (index 4)
    assert lines[0].startswith("1. Trail running shoes") and lines[1].startswith("2. Rain jacket")
    assert all(len(ln) <= 3 + 40 for ln in lines)


def test_unknown_history_product_is_a_data_error(catalog):
    task = profile_task(1)
    task.history.append(HistoryItem("nope"))
    with pytest.raises(DataError, match="nope"):
        build_messages(task, catalog)


def test_instruction_override_and_bad_placeholder(catalog):
    cfg = PromptConfig(instruction="Expand: {query} -> {open}{close}", answer_tags=("[a]", "[/a]"))
    assert prompt_preview(qe_task(), catalog, cfg) == "Expand: running shoes for mud -> [a][/a]"
    with pytest.raises(ConfigError, match="placeholder"):
        prompt_preview(qe_task(), catalog, PromptConfig(instruction="{nope}"))


def test_encode_prompt_with_chat_template(tmp_path, catalog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_tiny_tokenizer_dir(tmp_path, CHATML)))
    ids = encode_prompt(tok, qe_task(), catalog)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert (
        ids.count(start) == 3 and ids.count(end) == 2
    )  # system, user, then the open assistant turn
    assert ids[-1] == tok.convert_tokens_to_ids("assistant") or ids[-2] == start
    text = tok.apply_chat_template(
        build_messages(qe_task(), catalog), tokenize=False, add_generation_prompt=True
    )
    assert ids == tok.encode(text, add_special_tokens=False)


def test_encode_prompt_through_mlx_lm_wrapper(tmp_path, catalog):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    wrapper = load_tokenizer(_tiny_tokenizer_dir(tmp_path, CHATML))
    ids = encode_prompt(wrapper, profile_task(), catalog)
    assert ids.count(wrapper.convert_tokens_to_ids("<|im_start|>")) == 3


def test_missing_chat_template_error_and_fallback(tmp_path, catalog):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_tiny_tokenizer_dir(tmp_path, None)))
    with pytest.raises(OspoError, match="no chat template"):
        encode_prompt(tok, qe_task(), catalog)
    cfg = PromptConfig(plain_text_template="{system}\n\n{user}\n\nAnswer:")
    ids = encode_prompt(tok, qe_task(), catalog, cfg)
    assert ids and tok.convert_tokens_to_ids("<|im_start|>") not in ids


def test_config_validation():
    with pytest.raises(ConfigError):
        PromptConfig(answer_tags=("<a>", ""))


def test_real_smollm2_template_on_demo_and_hm_prompts(tmp_path, repo_root):
    """The default model's own chat template (from its GGUF) encodes short demo prompts."""
    try:
        from ospo_mlx.models import gguf
        from ospo_mlx.models.assets import smollm2_gguf_path

        path = smollm2_gguf_path()
    except Exception as exc:  # the GGUF importer or the embedded model is not available
        pytest.skip(f"SmolLM2 GGUF tokenizer unavailable: {exc}")
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from ospo_mlx.data.schema import load_catalog, load_tasks

    _, meta = gguf.read_gguf(path)
    gguf.build_tokenizer(meta).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(gguf.build_tokenizer_config(meta)))
    tok = load_tokenizer(tmp_path)
    demo = repo_root / "data" / "demo"
    catalog = load_catalog(demo / "catalog.jsonl")
    task = load_tasks(demo / "test.jsonl", catalog)[0]
    ids = encode_prompt(tok, task, catalog)
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system") and text.rstrip().endswith("<|im_start|>assistant")
    assert task.query in text and len(ids) < 128  # short prompts for a small model
    history = [HistoryItem(pid) for pid in list(catalog)[:20]]
    profile = Task(id="s", kind="shopper_profile", targets={"syn-00000": 1.0}, history=history)
    assert len(encode_prompt(tok, profile, catalog)) < 512  # 8 items x <= 100 chars
