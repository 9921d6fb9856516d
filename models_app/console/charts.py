"""Charts drawn on the server as SVG: no JavaScript library, no CDN, works offline."""

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

# Colour-blind-safe (Okabe-Ito), in the order series are given; more series than colours repeat them.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 180, 48, 24, 8
PLOT_W, PLOT_H = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
_TEXT = '<text x="{}" y="{}" class="axis">{}</text>'


@dataclass(frozen=True)
class Chart:
    """One chart: its SVG and its legend."""

    title: str
    svg: SafeString
    legend: list[tuple[str, str]]  # (series name, colour)


# Draws the series into the plot: (x index, x label, left edge, slot width) -> SVG parts.
Painter = Callable[[int, str, float, float], list[str]]


def _chart(title: str, x_labels: Sequence[str], names: list[str], top: float, paint: Painter) -> Chart:
    """The frame every chart shares (scale, base line, x labels) around what `paint` draws per x label."""
    step = PLOT_W / max(1, len(x_labels))
    parts = [
        format_html(_TEXT, 2, TOP + 8, _short(top)),
        format_html(_TEXT, 2, TOP + PLOT_H, 0),
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" class="base"/>', LEFT, TOP + PLOT_H, WIDTH - 4, TOP + PLOT_H
        ),
    ]
    label_every = max(1, len(x_labels) // 8)
    for i, x in enumerate(x_labels):
        left = LEFT + i * step
        parts.extend(paint(i, x, left, step))
        if i % label_every == 0:
            parts.append(format_html(_TEXT, f"{left:.1f}", HEIGHT - 6, x))
    body = mark_safe(
        "".join(parts)
    )  # texts went through format_html or escape  # every part came from format_html, which escapes
    svg = format_html(
        '<svg viewBox="0 0 {} {}" role="img" aria-label="{}" class="chart">{}</svg>', WIDTH, HEIGHT, title, body
    )
    return Chart(title=title, svg=svg, legend=[(name, _colour(names, name)) for name in names])


def _colour(names: list[str], name: str) -> str:
    return PALETTE[names.index(name) % len(PALETTE)]


def stacked_bars(title: str, x_labels: Sequence[str], points: list[tuple[str, str, float]], unit: str) -> Chart:
    """A stacked bar chart of (x label, series, value) points; x labels not in `x_labels` are dropped."""
    names = sorted({name for _, name, _ in points})
    stacks: dict[str, dict[str, float]] = defaultdict(dict)
    for x, name, value in points:
        stacks[x][name] = stacks[x].get(name, 0) + value
    top = max((sum(stack.values()) for stack in stacks.values()), default=0) or 1

    # Thousands of bars on a month of many tokens: plain f-strings, with every text escaped once up front.
    safe, safe_unit = {name: escape(name) for name in names}, escape(unit)

    def paint(_i: int, x: str, left: float, step: float) -> list[str]:
        parts, y, label = [], TOP + PLOT_H, escape(x)
        for name in names:
            value = stacks.get(x, {}).get(name, 0)
            if value > 0:
                height = value / top * PLOT_H
                y -= height
                parts.append(
                    f'<rect x="{left + 1:.1f}" y="{y:.1f}" width="{max(1.0, step - 2):.1f}" height="{height:.1f}" '
                    f'fill="{_colour(names, name)}"><title>{label} {safe[name]}: {_short(value)} {safe_unit}</title>'
                    "</rect>"
                )
        return parts

    return _chart(title, x_labels, names, top, paint)


def lines(title: str, x_labels: Sequence[str], series: dict[str, list[float | None]], unit: str) -> Chart:
    """A line chart: one line per series, one value (or None: no point) per x label."""
    names = sorted(series)
    top = max((v for values in series.values() for v in values if v is not None), default=0) or 1
    step = PLOT_W / max(1, len(x_labels))

    def at(i: int, value: float) -> tuple[str, str]:
        return f"{LEFT + (i + 0.5) * step:.1f}", f"{TOP + PLOT_H - value / top * PLOT_H:.1f}"

    def paint(i: int, x: str, _left: float, _step: float) -> list[str]:
        parts = []
        for name in names:
            values = series[name]
            value = values[i] if i < len(values) else None
            if value is None:
                continue
            if i > 0 and i - 1 < len(values) and values[i - 1] is not None:  # a segment from the previous point
                (x1, y1), (x2, y2) = at(i - 1, values[i - 1]), at(i, value)
                parts.append(format_html('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="{}"/>', x1, y1, x2, y2,
                                         _colour(names, name)))  # fmt: skip
            cx, cy = at(i, value)
            parts.append(
                f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{_colour(names, name)}"><title>{escape(x)} '
                f"{escape(name)}: {_short(value)} {escape(unit)}</title></circle>"
            )
        return parts

    return _chart(title, x_labels, names, top, paint)


def _short(value: float) -> str:
    """1234 -> 1.2k, 2500000 -> 2.5M: axis labels that fit."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.1f}{suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def legend_html(chart: Chart) -> SafeString:
    items = "".join(
        str(format_html('<span class="key"><i style="background:{}"></i>{}</span>', colour, name))
        for name, colour in chart.legend
    )
    return mark_safe(items)  # built from format_html
