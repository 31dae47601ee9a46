"""Rich views of OSPO attributions, shared by `ospo inspect` (Textual and --static) and `ospo attribute`.

Everything here is a pure function from plain values (texts, spans, floats) or a rollout
record to a rich renderable: no I/O, no state, so views are testable by rendering to a
recording Console.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ospo_mlx.ui import palette
from ospo_mlx.ui.runreader import RolloutRecord, RunReader

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SEGMENT_SORTS = ("position", "owen", "share", "tokens", "text")


def sparkline(values: Sequence[float], width: int = 20) -> str:
    """Unicode block sparkline of at most `width` chars (bucket means when there are more values).

    Non-finite values draw as a space; a constant series draws at mid height.
    """
    vals = [float(v) for v in values]
    if width <= 0 or not vals:
        return ""
    if len(vals) > width:  # bucket means keep the whole history's shape, not just its tail
        edges = [round(i * len(vals) / width) for i in range(width + 1)]
        buckets = [[v for v in vals[a:b] if math.isfinite(v)] for a, b in itertools.pairwise(edges)]
        vals = [sum(b) / len(b) if b else math.nan for b in buckets]
    finite = [v for v in vals if math.isfinite(v)]
    if not finite:
        return " " * len(vals)
    lo, hi = min(finite), max(finite)
    top = len(SPARK_BLOCKS) - 1
    out = []
    for v in vals:
        if not math.isfinite(v):
            out.append(" ")
        elif hi == lo:
            out.append(SPARK_BLOCKS[top // 2])
        else:
            out.append(SPARK_BLOCKS[round((v - lo) / (hi - lo) * top)])
    return "".join(out)


def credit_text(
    text: str,
    token_offsets: Sequence[Sequence[int]],
    token_advantages: Sequence[float],
    segments: Sequence[Sequence[int]] = (),
    *,
    scale: float | None = None,
    marks: bool = True,
    highlight: str | None = None,
) -> Text:
    """`text` with each token's background coloured by its advantage (diverging, centred on 0).

    Segment boundaries are drawn as a dim mark (`palette.SEGMENT_MARK`) when `marks` is on;
    characters outside every segment are dimmed. `scale` fixes the colour range (default:
    max |advantage|) so two views can share it. Occurrences of `highlight` are underlined.
    """
    n = len(text)
    advs = [float(a) for a in token_advantages]
    if scale is None:
        scale = palette.symmetric_scale(advs)
    tok_of = [-1] * n  # char -> token index (tokens tile the completion; gaps stay -1)
    for t, (a, b) in enumerate(token_offsets):
        for c in range(max(a, 0), min(b, n)):
            tok_of[c] = t
    in_seg = [False] * n
    cuts = {0, n}
    for a, b in segments:
        a, b = max(a, 0), min(b, n)
        for c in range(a, b):
            in_seg[c] = True
        cuts.update((a, b))
    # a mark before each segment; the dimmed text between segments shows where each one ends
    mark_at = {max(a, 0) for a, _ in segments} if marks else set()
    hl = [False] * n
    if highlight:
        low, needle = text.lower(), highlight.lower()
        i = low.find(needle)
        while i >= 0:
            for c in range(i, i + len(needle)):
                hl[c] = True
            i = low.find(needle, i + 1)
    out = Text()
    start = 0
    for c in range(1, n + 1):
        if (
            c < n
            and c not in cuts
            and (tok_of[c], in_seg[c], hl[c])
            == (
                tok_of[start],
                in_seg[start],
                hl[start],
            )
        ):
            continue
        if start in mark_at:
            out.append(palette.SEGMENT_MARK, style=palette.SEGMENT_MARK_STYLE)
        t = tok_of[start]
        style = palette.advantage_style(advs[t], scale) if 0 <= t < len(advs) else palette.Style()
        if not in_seg[start] and segments:
            style = palette.OUTSIDE_STYLE + style
        if hl[start]:
            style += palette.Style(underline=True, bold=True)
        out.append(text[start:c], style=style)
        start = c
    return out


def credit_shares(owen: Sequence[float]) -> list[float]:
    """Each segment's signed share of the total absolute credit: phi_j / sum_k |phi_k|."""
    total = sum(abs(float(v)) for v in owen)
    return [float(v) / total if total > 0 else 0.0 for v in owen]


def sort_segments(
    segment_texts: Sequence[str],
    owen: Sequence[float],
    token_counts: Sequence[int],
    sort_by: str = "position",
) -> list[int]:
    """Segment indices in display order: position ascending, text A-Z, numbers descending."""
    if sort_by not in SEGMENT_SORTS:
        raise ValueError(f"sort_by must be one of {', '.join(SEGMENT_SORTS)}, not {sort_by!r}")
    idx = list(range(len(segment_texts)))
    if sort_by == "owen" or sort_by == "share":
        return sorted(idx, key=lambda j: -float(owen[j]))
    if sort_by == "tokens":
        return sorted(idx, key=lambda j: (-int(token_counts[j]), j))
    if sort_by == "text":
        return sorted(idx, key=lambda j: segment_texts[j].strip().lower())
    return idx


def _bar(fraction: float, width: int = 8) -> str:
    eighths = round(max(0.0, min(1.0, abs(fraction))) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")).ljust(width)


def segment_table(
    segment_texts: Sequence[str],
    owen: Sequence[float],
    token_counts: Sequence[int],
    sort_by: str = "position",
    *,
    title: str | None = "segments",
) -> Table:
    """Segments with their Owen value, share of the credit (signed, of sum |phi|) and token count."""
    shares = credit_shares(owen)
    scale = palette.symmetric_scale(list(owen))
    table = Table(title=title, expand=False, title_justify="left", header_style="bold")
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("segment", ratio=1, overflow="fold")
    table.add_column("Owen φ", justify="right", no_wrap=True)
    table.add_column("share", justify="left", no_wrap=True)
    table.add_column("tok", justify="right", no_wrap=True)
    for j in sort_segments(segment_texts, owen, token_counts, sort_by):
        phi = float(owen[j])
        share = Text(f"{shares[j]:+6.1%} ")
        share.append(_bar(shares[j], 6), style="green" if shares[j] >= 0 else "red")
        table.add_row(
            str(j),
            segment_texts[j].strip() or repr(segment_texts[j]),
            Text(f"{phi:+.4f}", style=palette.advantage_style(phi, scale)),
            share,
            str(token_counts[j]),
        )
    return table


def credit_check(
    owen: Sequence[float], coalitions: Sequence[Sequence[int]], values: Sequence[float]
) -> Text:
    """One line that makes a wrong credit visible: the baseline v(empty), v(full), whether the
    values add up to v(full) - v(empty) (Shapley's efficiency), and what looks wrong."""
    n = len(owen)
    by_size = {len(m): float(v) for m, v in zip(coalitions, values, strict=False)}
    singles = [float(v) for m, v in zip(coalitions, values, strict=False) if len(m) == 1]
    text = Text()
    if 0 not in by_size or n not in by_size:
        return text
    base, full, total = by_size[0], by_size[n], float(sum(owen))
    gap = total - (full - base)
    text.append("v(∅) ", style="dim")
    text.append(f"{base:.4f}")
    text.append("  v(all) ", style="dim")
    text.append(f"{full:.4f}")
    text.append("  Σφ ", style="dim")
    text.append(f"{total:+.4f}")
    text.append("  gap ", style="dim")
    text.append(f"{gap:+.4f}", style="bold red" if abs(gap) > 0.05 else "green")
    if base == 0.0 and singles and min(singles) > 0.05:
        text.append(
            "  ⚠ v(∅) = 0 but every single segment scores > 0: the baseline misses the "
            "prepended query, so credit follows sampling counts",
            style="bold red",
        )
    elif abs(gap) > 0.05:
        text.append("  ⚠ the values do not add up to v(all) - v(∅)", style="bold yellow")
    return text


def format_members(members: Sequence[int]) -> str:
    """Sorted member indices as a set literal, contiguous runs compressed: {0-2,5}."""
    ms = sorted(int(m) for m in members)
    parts: list[str] = []
    i = 0
    while i < len(ms):
        j = i
        while j + 1 < len(ms) and ms[j + 1] == ms[j] + 1:
            j += 1
        parts.append(str(ms[i]) if j == i else f"{ms[i]}-{ms[j]}")
        i = j + 1
    return "{" + ",".join(parts) + "}"


def coalition_table(
    coalitions: Sequence[Sequence[int]],
    coalition_texts: Sequence[str],
    values: Sequence[float],
    *,
    title: str | None = "coalitions",
    max_rows: int | None = None,
) -> Table:
    """Each evaluated coalition S: its member segments, the restricted response's text and v(S)."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("members", no_wrap=True)
    table.add_column("coalition text", ratio=1, overflow="fold")
    table.add_column("v(S)", justify="right", no_wrap=True)
    shown = len(coalitions) if max_rows is None else min(max_rows, len(coalitions))
    for i in range(shown):
        table.add_row(
            str(i), format_members(coalitions[i]), coalition_texts[i], f"{float(values[i]):.4f}"
        )
    if shown < len(coalitions):
        table.add_row("…", "", Text(f"{len(coalitions) - shown} more", style="dim"), "")
    return table


def _as_record(record: RolloutRecord | Mapping[str, Any]) -> RolloutRecord:
    return record if isinstance(record, RolloutRecord) else RolloutRecord.from_dict(dict(record))


def record_title(rec: RolloutRecord) -> str:
    return f"step {rec.step} · group {rec.group} · member {rec.member}"


def record_stats(rec: RolloutRecord) -> Text:
    text = Text()
    text.append("R ", style="dim")
    text.append(f"{rec.reward:.4f}")
    text.append("  A ", style="dim")
    text.append(f"{rec.advantage:+.4f}", style="green" if rec.advantage >= 0 else "red")
    text.append("  len ", style="dim")
    text.append(f"{rec.length}")
    text.append("  seg ", style="dim")
    text.append(f"{len(rec.segments)}")
    return text


def grpo_advantages(rec: RolloutRecord) -> list[float]:
    """GRPO's view: every token gets the sequence advantage."""
    return [rec.advantage] * len(rec.token_offsets)


def comparison_scale(rec: RolloutRecord) -> float:
    """One colour scale for the OSPO and GRPO views of a completion, so they compare."""
    return palette.symmetric_scale(rec.token_advantages, [rec.advantage])


def completion_panel(
    record: RolloutRecord | Mapping[str, Any], *, highlight: str | None = None
) -> RenderableType:
    """A completion coloured by its token advantages, with its reward, advantage and length."""
    rec = _as_record(record)
    scale = comparison_scale(rec)
    body = credit_text(
        rec.completion,
        rec.token_offsets,
        rec.token_advantages,
        rec.segments,
        scale=scale,
        highlight=highlight,
    )
    return Panel(
        Group(body, Text(), palette.legend(scale)),
        title=f"{record_title(rec)} ({rec.algorithm})",
        title_align="left",
        subtitle=record_stats(rec),
        subtitle_align="left",
    )


def comparison(
    record: RolloutRecord | Mapping[str, Any],
    *,
    highlight: str | None = None,
    stacked: bool = False,
) -> Table:
    """OSPO's token advantages beside (or, `stacked`, above) GRPO's flat one, on one colour scale."""
    rec = _as_record(record)
    scale = comparison_scale(rec)
    kw = {"scale": scale, "highlight": highlight}
    ospo = credit_text(rec.completion, rec.token_offsets, rec.token_advantages, rec.segments, **kw)
    grpo = credit_text(rec.completion, rec.token_offsets, grpo_advantages(rec), rec.segments, **kw)
    ospo_title = Text("OSPO: token advantages", style="bold")
    grpo_title = Text(f"GRPO: flat A = {rec.advantage:+.3f}", style="bold")
    grid = Table.grid(expand=True, padding=(0, 2))
    if stacked:
        grid.add_column(ratio=1)
        for row in (ospo_title, ospo, Text(), grpo_title, grpo, Text(), palette.legend(scale)):
            grid.add_row(row)
        return grid
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(ospo_title, grpo_title)
    grid.add_row(ospo, grpo)
    grid.add_row(Text(), Text())
    grid.add_row(palette.legend(scale), Text())
    return grid


def group_table(records: Sequence[RolloutRecord], selected: int | None = None) -> Table:
    """The G completions of one prompt: reward, sequence advantage, length and a preview."""
    # expand=True: otherwise rich squeezes the short columns to nothing to fit a long preview.
    table = Table(title="completions", title_justify="left", header_style="bold", expand=True)
    for name, width in (("m", 2), ("reward", 6), ("adv", 6), ("len", 3)):
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    table.add_column("completion", no_wrap=True, overflow="ellipsis", ratio=1)
    for rec in records:
        style = "reverse" if rec.member == selected else None
        table.add_row(
            str(rec.member),
            f"{rec.reward:.4f}",
            Text(f"{rec.advantage:+.3f}", style="green" if rec.advantage >= 0 else "red"),
            str(rec.length),
            " ".join(rec.completion.split()),
            style=style,
        )
    return table


def run_header(reader: RunReader, width: int = 24) -> Text:
    """Run name, algorithm, model, last step, reward and NDCG@10 sparklines, skipped-line count."""
    text = Text()
    text.append(reader.name, style="bold")
    text.append(f"  {reader.algorithm}", style="cyan")
    text.append(f"  {reader.model}", style="dim")
    if reader.warmup_steps:
        text.append(f" +{reader.warmup_steps}-step SFT warm-up", style="dim")
    step = reader.last_step
    text.append(f"  step {step if step is not None else '-'}")
    for key, label in (("reward", "reward"), ("ndcg@10", "ndcg@10")):
        series = reader.metric_series(key)
        if series:
            text.append(f"  {label} ", style="dim")
            text.append(sparkline(series, width), style="magenta")
            text.append(f" {series[-1]:.3f}")
    if reader.skipped_lines:
        text.append(f"  ⚠ {reader.skipped_lines} bad line(s) skipped", style="bold yellow")
    return text


def record_views(rec: RolloutRecord, *, highlight: str | None = None) -> list[RenderableType]:
    """Everything about one completion: prompt, OSPO vs GRPO, segments and coalitions."""
    views: list[RenderableType] = [
        Text.assemble(("prompt ", "dim"), rec.prompt or "(not logged)"),
        Panel(
            comparison(rec, highlight=highlight),
            title=f"{record_title(rec)} ({rec.algorithm})",
            title_align="left",
            subtitle=record_stats(rec),
            subtitle_align="left",
        ),
    ]
    if rec.segments:
        views.append(
            segment_table(
                rec.segment_texts,
                rec.owen or [0.0] * len(rec.segments),
                rec.segment_token_counts(),
                sort_by="owen",
            )
        )
    if rec.coalitions:
        views.append(credit_check(rec.owen, rec.coalitions, rec.coalition_values))
        views.append(coalition_table(rec.coalitions, rec.coalition_texts(), rec.coalition_values))
    return views


def static_views(
    reader: RunReader, step: int | None = None, group: int | None = None, member: int | None = None
) -> list[RenderableType]:
    """`ospo inspect --static`: the header, one group's completions and one completion in full.

    Defaults: the last step with rollouts, its first group, the group's highest-reward member.
    """
    from ospo_mlx.errors import DataError

    views: list[RenderableType] = [run_header(reader)]
    views += [Text(f"warning: {w}", style="yellow") for w in reader.warnings]
    steps = reader.step_ids()
    if not steps:
        views.append(
            Text("no rollouts logged yet (rollouts.jsonl is empty or missing)", style="yellow")
        )
        return views
    step = steps[-1] if step is None else step
    if step not in reader.steps:
        raise DataError(
            f"step {step} has no rollouts in {reader.run_dir}; use one of the logged steps"
        )
    groups = reader.group_ids(step)
    group = groups[0] if group is None else group
    if group not in groups:
        raise DataError(
            f"step {step} has no group {group}; groups logged: {groups[0]}..{groups[-1]}"
        )
    members = reader.members(step, group)
    if member is None:
        member = max(members, key=lambda r: r.reward).member
    rec = reader.record(step, group, member)
    views.append(group_table(members, selected=member))
    views += record_views(rec)
    return views
