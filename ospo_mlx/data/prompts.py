"""Prompts for each task kind: chat messages, token ids, and the answer-tag convention.

Prompts stay short on purpose: the default policy is a 135M-parameter model with a small
context, so the instruction is two sentences and shopper histories are capped in count and
length. The answer goes inside answer tags so reasoning before it is never scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ospo_mlx.data.schema import Product, Task, product_text
from ospo_mlx.errors import ConfigError, DataError, OspoError

DEFAULT_SYSTEM_PROMPT = "You are a helpful shopping search assistant."

QUERY_EXPANSION_INSTRUCTION = (
    "Rewrite this shopping query into a richer search query that names the product and the "
    "attributes the shopper most likely wants (use, material, style). You may think briefly "
    "first, then give only the rewritten query inside {open}...{close}.\n\nQuery: {query}"
)

# The controlled choice task (data/choice.py): the answer copies phrases from the list.
CHOICE_INSTRUCTION = (
    "Query: {query}\nOptions: {candidates}\nName only the options this shopper wants, "
    "comma separated, inside {open}...{close}."
)

SHOPPER_PROFILE_INSTRUCTION = (
    "A shopper bought these items, oldest first:\n{history}\n\nDescribe the item they most "
    "likely want next (type, colour, style) in one or two sentences inside {open}...{close}."
)

# Used only when the tokenizer has no chat template and the user asked for plain text.
PLAIN_TEXT_TEMPLATE = "{system}\n\n{user}\n\nAnswer:"


@dataclass
class PromptConfig:
    """How prompts are written and how answers are read back."""

    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message; None uses the default, '' sends no system message."},
    )
    instruction: str | None = field(
        default=None,
        metadata={
            "help": "Instruction override with {query} or {history} plus {open}/{close} "
            "placeholders for the answer tags; None uses the built-in one for the task kind."
        },
    )
    max_history_items: int = field(
        default=8, metadata={"help": "Most recent history items listed in a shopper prompt."}
    )
    max_item_chars: int = field(
        default=100, metadata={"help": "Each history item's product text is cut to this length."}
    )
    answer_tags: tuple[str, str] = field(
        default=("<answer>", "</answer>"),
        metadata={
            "help": "Opening and closing tags around the scored answer (how answers without "
            "them are scored: reward.missing_tags and reward.unclosed_answer)."
        },
    )
    plain_text_template: str | None = field(
        default=None,
        metadata={
            "help": "Fallback for tokenizers without a chat template, with {system} and {user} "
            f"placeholders (e.g. {PLAIN_TEXT_TEMPLATE!r}); None makes a missing template an error."
        },
    )

    def __post_init__(self) -> None:
        if len(self.answer_tags) != 2 or not all(self.answer_tags):
            raise ConfigError(
                "answer_tags must be two non-empty strings, e.g. ['<answer>', '</answer>']"
            )
        self.answer_tags = (str(self.answer_tags[0]), str(self.answer_tags[1]))
        if self.max_history_items < 1 or self.max_item_chars < 8:
            raise ConfigError("max_history_items must be >= 1 and max_item_chars >= 8")


def _history_lines(task: Task, catalog: Mapping[str, Product], config: PromptConfig) -> str:
    items = task.history[-config.max_history_items :]
    lines = []
    for i, item in enumerate(items, start=1):
        product = catalog.get(item.product_id)
        if product is None:
            raise DataError(
                f"task '{task.id}': history product '{item.product_id}' is not in the catalog; "
                "rebuild the tasks and catalog together with `ospo data`"
            )
        text = product_text(product, max_chars=config.max_item_chars)
        lines.append(f"{i}. {text}")
    return "\n".join(lines)


def user_text(
    task: Task, catalog: Mapping[str, Product], config: PromptConfig | None = None
) -> str:
    """The user message for a task (the instruction with the query or history filled in)."""
    config = config or PromptConfig()
    open_tag, close_tag = config.answer_tags
    if task.kind == "query_expansion":
        if not task.query:
            raise DataError(f"task '{task.id}': a query_expansion task needs a query")
        template = config.instruction or (
            CHOICE_INSTRUCTION if task.candidates else QUERY_EXPANSION_INSTRUCTION
        )
        fields = {"query": task.query.strip(), "candidates": ", ".join(task.candidates or [])}
    elif task.kind == "shopper_profile":
        if not task.history:
            raise DataError(f"task '{task.id}': a shopper_profile task needs a history")
        template = config.instruction or SHOPPER_PROFILE_INSTRUCTION
        fields = {"history": _history_lines(task, catalog, config)}
    else:
        raise DataError(f"task '{task.id}': unknown kind '{task.kind}'")
    try:
        return template.format(open=open_tag, close=close_tag, **fields)
    except (KeyError, IndexError) as exc:
        raise ConfigError(
            f"prompt instruction has an unknown placeholder {exc}; use {{query}} (and "
            "{candidates}) or {history}, {open} and {close}"
        ) from None


def build_messages(
    task: Task, catalog: Mapping[str, Product], config: PromptConfig | None = None
) -> list[dict[str, str]]:
    """Chat messages (system, user) for a task."""
    config = config or PromptConfig()
    system = DEFAULT_SYSTEM_PROMPT if config.system_prompt is None else config.system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_text(task, catalog, config)})
    return messages


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer (HF or mlx-lm's TokenizerWrapper) carries a chat template."""
    flag = getattr(tokenizer, "has_chat_template", None)
    if isinstance(flag, bool):
        return flag
    return bool(getattr(tokenizer, "chat_template", None))


def _as_ids(out: Any) -> list[int]:
    # transformers >= 5 returns a BatchEncoding by default; older versions a list of ints.
    if isinstance(out, Mapping):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(t) for t in out]


def encode_prompt(
    tokenizer: Any,
    task: Task,
    catalog: Mapping[str, Product],
    config: PromptConfig | None = None,
) -> list[int]:
    """Token ids of the task's prompt, ending where the assistant's reply begins.

    Uses the tokenizer's chat template; without one, uses `config.plain_text_template` or
    raises an OspoError saying how to proceed.
    """
    config = config or PromptConfig()
    messages = build_messages(task, catalog, config)
    if not has_chat_template(tokenizer):
        if config.plain_text_template is None:
            raise OspoError(
                "the tokenizer has no chat template; use an instruct model or set "
                "prompt.plain_text_template (e.g. '{system}\\n\\n{user}\\n\\nAnswer:')"
            )
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        text = config.plain_text_template.format(system=system, user=messages[-1]["content"])
        return _as_ids(tokenizer.encode(text.lstrip()))
    try:
        out = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except TypeError:  # tokenizers that do not know return_dict
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return _as_ids(out)


def prompt_preview(
    task: Task, catalog: Mapping[str, Product], config: PromptConfig | None = None
) -> str:
    """The user text of a task's prompt, for logs and the inspector."""
    return user_text(task, catalog, config)
