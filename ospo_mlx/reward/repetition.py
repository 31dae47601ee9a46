"""Repetition: collapse repeated words before retrieval, and measure how repetitive a text is.

A dense retriever rewards repeating the words that match (`water bottle water bottle ...`
scored 0.83-0.87 in the demo), so a policy can raise its reward without saying anything
new. Collapsing keeps the first occurrence of every word, so a repeat adds nothing to the
retrieval text; the trainer counts the completions it changed (`reward/collapsed_repeats`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\S+")
_EDGE = re.compile(r"^\W+|\W+$")
_SEPARATORS = re.compile(r"\s*([,;])(?:\s*[,;])*\s*")


def word_key(word: str) -> str:
    """A word compared without case and leading/trailing punctuation ('' for punctuation)."""
    return _EDGE.sub("", word).lower()


def collapse_repeats(text: str) -> tuple[str, int]:
    """(text with every repeated word after its first occurrence removed, words removed).

    Punctuation-only tokens stay; separators left doubled by a removal (`a, , b`) are merged
    and a text never starts or ends with one.
    """
    seen: set[str] = set()
    kept, removed = [], 0
    for word in _WORD.findall(text):
        key = word_key(word)
        if key and key in seen:
            removed += 1
            # keep punctuation that ended the dropped word ("mesh, mesh, foam" -> "mesh, foam")
            tail = word[len(word.rstrip(",;")) :]
            if tail and kept:
                kept.append(tail)
            continue
        seen.add(key)
        kept.append(word)
    if not removed:
        return text, 0
    out = _SEPARATORS.sub(lambda m: m.group(1) + " ", " ".join(kept))
    return out.strip(" ,;"), removed


@dataclass(frozen=True)
class Repetition:
    """How repetitive one text is (the learning bench's degeneracy measures)."""

    words: int  # words in the text
    distinct_ratio: float  # distinct words / words (1.0 for an empty text)
    repeated_rate: float  # share of words that repeat an earlier word (1 - distinct_ratio)


def repetition(text: str) -> Repetition:
    keys = [k for k in (word_key(w) for w in _WORD.findall(text)) if k]
    if not keys:
        return Repetition(0, 1.0, 0.0)
    distinct = len(set(keys)) / len(keys)
    return Repetition(len(keys), distinct, 1.0 - distinct)
