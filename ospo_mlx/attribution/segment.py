"""Split a response into segments: ordered, non-overlapping character spans `[start, end)`.

Segments are the players of the attribution game. Only the answer is attributed: the content
inside the answer tags when they are present (else the whole text), never a `<think>` or
`<thinking>` block. All segmenters are rule based (no model downloads) and work on any Unicode.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace

from ospo_mlx.errors import ConfigError

Span = tuple[int, int]

METHODS = ("phrase", "sentence", "word", "regex")
DEFAULT_ANSWER_TAGS = ("<answer>", "</answer>")
DEFAULT_THINK_TAGS = (("<think>", "</think>"), ("<thinking>", "</thinking>"))

# Words that open a new phrase ("red shoes | with white soles | for running"). "of" and "to"
# are left out on purpose: they bind tightly ("pair of socks", "easy to clean").
PHRASE_WORDS = (
    "and",
    "or",
    "but",
    "nor",
    "plus",
    "with",
    "without",
    "for",
    "under",
    "over",
    "above",
    "below",
    "from",
    "in",
    "on",
    "at",
    "by",
    "near",
    "between",
    "featuring",
    "including",
    "that",
    "which",
    "while",
    "because",
)

# Sentence ends: terminal punctuation followed by whitespace or the end, CJK full stops, line breaks.
_SENTENCE_END = re.compile(r"[.!?…]+(?=\s|$)|[。！？]+|\s*\n\s*")
# Clause punctuation inside a sentence.
_CLAUSE_PUNCT = re.compile(r"\s*[,;:()\[\]{}，；：、|/]+\s*|\s+[-–—]+\s+")
# Separator characters trimmed from both ends of a segment (whitespace is trimmed too).
_EDGE_PUNCT = frozenset(".,;:!?…。，；：！？、-–—|/")


@dataclass(frozen=True)
class SegmenterConfig:
    """How a response is split into segments (the players of the attribution game)."""

    method: str = field(
        default="phrase",
        metadata={"help": "phrase (clauses, conjunctions, prepositions), sentence, word or regex"},
    )
    answer_tags: tuple[str, str] | None = field(
        default=DEFAULT_ANSWER_TAGS,
        metadata={"help": "only the text inside these tags is attributed when present; None: all"},
    )
    think_tags: tuple[tuple[str, str], ...] = field(
        default=DEFAULT_THINK_TAGS,
        metadata={"help": "reasoning blocks that are never attributed"},
    )
    pattern: str | None = field(
        default=None, metadata={"help": "regular expression of the `regex` method"}
    )
    pattern_mode: str = field(
        default="split",
        metadata={
            "help": "regex method: `split` (pattern matches separators) or `match` (segments)"
        },
    )
    min_chars: int = field(
        default=3,
        metadata={"help": "phrase method: shorter fragments are merged into a neighbour"},
    )
    max_chars: int = field(
        default=80,
        metadata={"help": "phrase method: longer phrases are cut at word boundaries (0: no cap)"},
    )
    max_segments: int | None = field(
        default=None,
        metadata={
            "help": "merge the shortest adjacent pair until at most this many (None: no cap); "
            "text on the two sides of a reasoning block is never merged"
        },
    )

    def validate(self) -> SegmenterConfig:
        """Raise ConfigError on an unknown method, a bad pattern or a bad limit."""
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown segmentation method {self.method!r}; use one of {', '.join(METHODS)}"
            )
        if self.method == "regex":
            if not self.pattern:
                raise ConfigError("segmentation method `regex` needs a pattern (set `pattern`)")
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(f"invalid segmentation pattern {self.pattern!r}: {exc}") from exc
        if self.pattern_mode not in ("split", "match"):
            raise ConfigError(f"pattern_mode must be `split` or `match`, got {self.pattern_mode!r}")
        if self.answer_tags is not None and (
            len(self.answer_tags) != 2 or not all(self.answer_tags)
        ):
            raise ConfigError("answer_tags must be two non-empty strings (open, close) or None")
        if self.min_chars < 0 or self.max_chars < 0:
            raise ConfigError("min_chars and max_chars must be >= 0")
        if self.max_segments is not None and self.max_segments < 1:
            raise ConfigError("max_segments must be >= 1 (or None for no cap)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _find_tag(text: str, tag: str, start: int = 0) -> re.Match | None:
    # Case-insensitive regex search keeps character indices (str.lower() can change lengths).
    return re.compile(re.escape(tag), re.IGNORECASE).search(text, start)


def think_regions(
    text: str, think_tags: Sequence[tuple[str, str]] = DEFAULT_THINK_TAGS
) -> list[Span]:
    """Spans of reasoning blocks, tags included; an unclosed block runs to the end of the text.

    A closing tag with no opening one (the chat template opened the block in the prompt)
    makes everything before it a reasoning block.
    """
    regions: list[Span] = []
    for open_tag, close_tag in think_tags:
        pos = 0
        m_open, m_close = _find_tag(text, open_tag), _find_tag(text, close_tag)
        if m_close is not None and (m_open is None or m_close.start() < m_open.start()):
            regions.append((0, m_close.end()))
            pos = m_close.end()
        while (m_open := _find_tag(text, open_tag, pos)) is not None:
            m_close = _find_tag(text, close_tag, m_open.end())
            if m_close is None:
                regions.append((m_open.start(), len(text)))
                break
            regions.append((m_open.start(), m_close.end()))
            pos = m_close.end()
    return _merge_regions(regions)


def _merge_regions(regions: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for s, e in sorted(regions):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _subtract(region: Span, holes: list[Span]) -> list[Span]:
    out, (s, e) = [], region
    for hs, he in holes:
        if he <= s or hs >= e:
            continue
        if hs > s:
            out.append((s, hs))
        s = max(s, he)
    if s < e:
        out.append((s, e))
    return out


def _answer_match(
    text: str, tags: tuple[str, str], think_tags: Sequence[tuple[str, str]]
) -> tuple[int, int, bool] | None:
    """(start, end, closed) of the first answer outside reasoning blocks; None without one."""
    open_tag, close_tag = tags
    holes = think_regions(text, think_tags)
    pos = 0
    while True:
        m_open = _find_tag(text, open_tag, pos)
        if m_open is None:
            return None
        if not any(hs <= m_open.start() < he for hs, he in holes):
            break
        pos = m_open.end()
    m_close = _find_tag(text, close_tag, m_open.end())
    if m_close is None:
        return (m_open.end(), len(text), False)
    return (m_open.end(), m_close.start(), True)


def answer_span(
    text: str,
    tags: tuple[str, str] | None = DEFAULT_ANSWER_TAGS,
    think_tags: Sequence[tuple[str, str]] = DEFAULT_THINK_TAGS,
) -> Span | None:
    """The content span inside the first answer tags outside reasoning blocks; None without tags.

    An opening tag with no closing tag (a truncated generation) runs to the end of the text.
    """
    if tags is None:
        return None
    match = _answer_match(text, tags, think_tags)
    return None if match is None else match[:2]


MISSING_TAGS = ("whole", "zero")
UNCLOSED_ANSWER = ("keep", "zero")


def scored_answer(
    text: str,
    tags: tuple[str, str] | None = DEFAULT_ANSWER_TAGS,
    missing_tags: str = "whole",
    unclosed_answer: str = "keep",
    think_tags: Sequence[tuple[str, str]] = DEFAULT_THINK_TAGS,
) -> tuple[str | None, str]:
    """(text a response is scored by, format status); the text is None when the rule scores 0.

    The one answer rule for training rewards and `ospo eval`. Status is "ok", "missing_tags"
    (no opening tag) or "unclosed" (no closing tag, often a generation cut at max_new_tokens).
    Without an answer, the scored text is the whole response minus reasoning blocks.
    """
    if missing_tags not in MISSING_TAGS or unclosed_answer not in UNCLOSED_ANSWER:
        raise ConfigError(
            f"missing_tags must be one of {list(MISSING_TAGS)} and unclosed_answer one of "
            f"{list(UNCLOSED_ANSWER)}, got {missing_tags!r} and {unclosed_answer!r}"
        )
    match = _answer_match(text, tags, think_tags) if tags is not None else None
    if match is None:
        status = "missing_tags" if tags is not None else "ok"
        if status == "missing_tags" and missing_tags == "zero":
            return None, status
        regions = _subtract((0, len(text)), think_regions(text, think_tags))
        return " ".join(text[s:e].strip() for s, e in regions).strip(), status
    start, end, closed = match
    status = "ok" if closed else "unclosed"
    if not closed and unclosed_answer == "zero":
        return None, status
    return text[start:end].strip(), status


def after_answer(
    text: str,
    tags: tuple[str, str] = DEFAULT_ANSWER_TAGS,
    think_tags: Sequence[tuple[str, str]] = DEFAULT_THINK_TAGS,
) -> bool:
    """True when non-blank text follows the closing tag of `text`'s answer (a run-on reply)."""
    match = _answer_match(text, tags, think_tags)
    if match is None or not match[2]:
        return False
    close = _find_tag(text, tags[1], match[1])
    return close is not None and bool(text[close.end() :].strip())


def attributable_regions(
    text: str,
    answer_tags: tuple[str, str] | None = DEFAULT_ANSWER_TAGS,
    think_tags: Sequence[tuple[str, str]] = DEFAULT_THINK_TAGS,
) -> list[Span]:
    """The parts of `text` that may hold segments: the answer (or all text) minus reasoning."""
    span = answer_span(text, answer_tags, think_tags)
    region = span if span is not None else (0, len(text))
    return _subtract(region, think_regions(text, think_tags))


def _is_filler(ch: str) -> bool:
    return ch.isspace() or ch in _EDGE_PUNCT or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _trim(text: str, s: int, e: int) -> Span | None:
    """Strip whitespace and separators from both ends; None for punctuation-only fragments."""
    while s < e and _is_filler(text[s]):
        s += 1
    while e > s and _is_filler(text[e - 1]):
        e -= 1
    if s == e or all(_is_filler(c) or unicodedata.category(c).startswith("P") for c in text[s:e]):
        return None
    return (s, e)


def _split(text: str, region: Span, delim: re.Pattern) -> list[Span]:
    """Pieces of `region` between matches of `delim` (delimiters excluded), trimmed."""
    s0, e0 = region
    out, pos = [], s0
    for m in delim.finditer(text, s0, e0):
        if m.end() == m.start() == pos:  # a zero-width match at a piece start splits nothing
            continue
        piece = _trim(text, pos, m.start())
        if piece:
            out.append(piece)
        pos = m.end()
    piece = _trim(text, pos, e0)
    if piece:
        out.append(piece)
    return out


_PHRASE_SPLIT = re.compile(r"\s+(?=(?:" + "|".join(PHRASE_WORDS) + r")\b)", re.IGNORECASE)


def _cap(text: str, span: Span, max_chars: int) -> list[Span]:
    """Cut a span longer than max_chars at whitespace (hard cut when a single word is longer)."""
    s, e = span
    out: list[Span] = []
    while e - s > max_chars:
        cut = s + max_chars
        ws = max((i for i in range(s + 1, cut + 1) if text[i].isspace()), default=None)
        cut = ws if ws is not None else cut
        piece = _trim(text, s, cut)
        if piece:
            out.append(piece)
        s = cut
        rest = _trim(text, s, e)
        if rest is None:
            return out
        s = rest[0]
    piece = _trim(text, s, e)
    if piece:
        out.append(piece)
    return out


def _merge_short(spans: list[Span], min_chars: int) -> list[Span]:
    """Merge fragments shorter than min_chars into the previous span (the next one if first)."""
    out: list[Span] = []
    for s, e in spans:
        if out and (e - s < min_chars or out[-1][1] - out[-1][0] < min_chars):
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def _phrases(text: str, region: Span, cfg: SegmenterConfig) -> list[Span]:
    out: list[Span] = []
    for sentence in _split(text, region, _SENTENCE_END):
        pieces = []
        for clause in _split(text, sentence, _CLAUSE_PUNCT):
            pieces.extend(_split(text, clause, _PHRASE_SPLIT))
        for phrase in _merge_short(pieces, cfg.min_chars):
            out.extend(_cap(text, phrase, cfg.max_chars) if cfg.max_chars else [phrase])
    return out


def _cap_count(spans: list[Span], max_segments: int, regions: list[Span]) -> list[Span]:
    """Merge the adjacent pair with the shortest combined extent until few enough remain.

    Only spans of the same attributable region merge (a merged span must not cover a reasoning
    block between regions), so one segment per region is the floor.
    """
    spans = list(spans)
    region = [next(r for r, (a, b) in enumerate(regions) if a <= s < b) for s, _ in spans]
    while len(spans) > max_segments:
        pairs = [k for k in range(len(spans) - 1) if region[k] == region[k + 1]]
        if not pairs:
            break
        i = min(pairs, key=lambda k: spans[k + 1][1] - spans[k][0])
        spans[i : i + 2] = [(spans[i][0], spans[i + 1][1])]
        del region[i + 1]
    return spans


def _segment_region(text: str, region: Span, cfg: SegmenterConfig) -> list[Span]:
    if cfg.method == "phrase":
        return _phrases(text, region, cfg)
    if cfg.method == "sentence":
        return _split(text, region, _SENTENCE_END)
    if cfg.method == "word":
        return _split(text, region, re.compile(r"\s+"))
    pattern = re.compile(cfg.pattern or "")
    if cfg.pattern_mode == "split":
        return _split(text, region, pattern)
    found = (_trim(text, m.start(), m.end()) for m in pattern.finditer(text, *region))
    return [span for span in found if span]


def segment(
    text: str, method: str | None = None, *, config: SegmenterConfig | None = None, **options
) -> list[Span]:
    """Split `text` into ordered, non-overlapping segment spans `[start, end)`.

    `method` and keyword `options` (any SegmenterConfig field) override `config`. Spans lie in
    the answer region, never in reasoning blocks, and exclude surrounding whitespace and
    punctuation-only fragments. Empty text gives no spans.
    """
    cfg = config or SegmenterConfig()
    known = {f.name for f in fields(SegmenterConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"unknown segmenter option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if method is not None:
        options["method"] = method
    if "answer_tags" in options and options["answer_tags"] is not None:
        options["answer_tags"] = tuple(options["answer_tags"])
    cfg = replace(cfg, **options).validate()
    spans: list[Span] = []
    regions = attributable_regions(text, cfg.answer_tags, cfg.think_tags)
    for region in regions:
        spans.extend(_segment_region(text, region, cfg))
    if cfg.max_segments is not None:
        spans = _cap_count(spans, cfg.max_segments, regions)
    return spans


def segment_texts(text: str, spans: Sequence[Span]) -> list[str]:
    """The text of each span."""
    return [text[s:e] for s, e in spans]


def group_spans(inner: Sequence[Span], outer: Sequence[Span]) -> list[list[int]]:
    """Partition the indices of `inner` spans by the `outer` span they start in.

    Gives Owen a-priori unions, e.g. phrases grouped by sentence:
    `group_spans(segment(t, "phrase"), segment(t, "sentence"))`. Inner spans outside every
    outer span form their own singleton unions.
    """
    groups: dict[int, list[int]] = {}
    for i, (s, _) in enumerate(inner):
        key = next((k for k, (os_, oe) in enumerate(outer) if os_ <= s < oe), -1 - i)
        groups.setdefault(key, []).append(i)
    return [groups[k] for k in sorted(groups, key=lambda k: groups[k][0])]
