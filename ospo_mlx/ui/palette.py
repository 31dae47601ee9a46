"""Diverging colour scale for token advantages, centred on zero.

Colours are backgrounds with a foreground picked for contrast, so the same scale reads on
dark and light terminals (a coloured foreground alone vanishes on one of them). Levels are
quantised: four per sign, plus a neutral band near zero that keeps the terminal's colours.
The hues follow ColorBrewer's PRGn/RdBu ends: green = credit, red = blame.
"""

from __future__ import annotations

import math

from rich.style import Style
from rich.text import Text

# (background, foreground) per level, weakest first.
POSITIVE = (
    ("#d9f0d3", "#000000"),
    ("#a6dba0", "#000000"),
    ("#5aae61", "#000000"),
    ("#1b7837", "#ffffff"),
)
NEGATIVE = (
    ("#fddbc7", "#000000"),
    ("#f4a582", "#000000"),
    ("#d6604d", "#000000"),
    ("#b2182b", "#ffffff"),
)
NEUTRAL_BAND = 0.08  # |value| / scale below this is drawn without colour

SEGMENT_MARK = "¦"  # drawn between segments; dim so it does not compete with the colours
SEGMENT_MARK_STYLE = Style(color="bright_black", bold=True)
OUTSIDE_STYLE = Style(dim=True, italic=True)  # text outside every segment (tags, reasoning)


def level(value: float, scale: float) -> int:
    """Signed level in -4..4 of `value` on a symmetric scale [-scale, scale] (0 = neutral)."""
    if not math.isfinite(value) or scale <= 0 or not math.isfinite(scale):
        return 0
    t = min(abs(value) / scale, 1.0)
    if t < NEUTRAL_BAND:
        return 0
    # spread the remaining range evenly over the 4 levels
    idx = min(int((t - NEUTRAL_BAND) / (1.0 - NEUTRAL_BAND) * len(POSITIVE)), len(POSITIVE) - 1) + 1
    return idx if value > 0 else -idx


def advantage_style(value: float, scale: float) -> Style:
    """Rich style of one token with advantage `value` when the colour scale spans ±`scale`."""
    lv = level(value, scale)
    if lv == 0:
        return Style()
    bg, fg = (POSITIVE if lv > 0 else NEGATIVE)[abs(lv) - 1]
    return Style(bgcolor=bg, color=fg)


def symmetric_scale(*series: list[float] | tuple[float, ...], floor: float = 1e-9) -> float:
    """max |x| over all values of all series: one scale shared by views that are compared."""
    m = max((abs(x) for s in series for x in s if math.isfinite(x)), default=0.0)
    return max(m, floor)


def legend(scale: float) -> Text:
    """A one-line key: the colour blocks from most negative to most positive, with the range."""
    text = Text(f"-{scale:.3g} ", style="dim")
    for bg, _ in reversed(NEGATIVE):
        text.append("  ", style=Style(bgcolor=bg))
    text.append(" 0 ", style="dim")
    for bg, _ in POSITIVE:
        text.append("  ", style=Style(bgcolor=bg))
    text.append(f" +{scale:.3g}", style="dim")
    return text
