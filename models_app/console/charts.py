"""Bar charts drawn on the server as SVG: no JavaScript library, no CDN, works offline."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

# Colour-blind-safe (Okabe-Ito), in the order series are given; more series than colours repeat them.
_BAR = '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} {}: {} {}</title></rect>'
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 180, 48, 24, 8


@dataclass(frozen=True)
class Chart:
    """One stacked bar chart: a bar per x label, a stack per series, and its legend."""

    title: str
    svg: SafeString
    legend: list[tuple[str, str]]  # (series name, colour)


def stacked_bars(title: str, x_labels: Sequence[str], points: list[tuple[str, str, float]], unit: str) -> Chart:
    """A stacked bar chart of (x label, series, value) points; x labels not in `x_labels` are dropped."""
    series = sorted({name for _, name, _ in points})
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(series)}
    stacks: dict[str, dict[str, float]] = defaultdict(dict)
    for x, name, value in points:
        stacks[x][name] = stacks[x].get(name, 0) + value
    top = max((sum(stack.values()) for stack in stacks.values()), default=0) or 1
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(x_labels))
    parts = [
        format_html('<text x="{}" y="{}" class="axis">{}</text>', 2, TOP + 8, _short(top)),
        format_html('<text x="{}" y="{}" class="axis">0</text>', 2, TOP + plot_h),
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" class="base"/>', LEFT, TOP + plot_h, WIDTH - 4, TOP + plot_h
        ),
    ]
    label_every = max(1, len(x_labels) // 8)
    for i, x in enumerate(x_labels):
        left, y = LEFT + i * step, TOP + plot_h
        for name in series:
            value = stacks.get(x, {}).get(name, 0)
            if value <= 0:
                continue
            height = value / top * plot_h
            y -= height
            box = (f"{left + 1:.1f}", f"{y:.1f}", f"{max(1.0, step - 2):.1f}", f"{height:.1f}")
            parts.append(format_html(_BAR, *box, colour[name], x, name,
                                     _short(value), unit))  # fmt: skip
        if i % label_every == 0:
            parts.append(format_html('<text x="{}" y="{}" class="axis">{}</text>', f"{left:.1f}", HEIGHT - 6, x))
    body = mark_safe("".join(parts))
    svg = format_html(
        '<svg viewBox="0 0 {} {}" role="img" aria-label="{}" class="chart">{}</svg>', WIDTH, HEIGHT, title, body
    )
    return Chart(title=title, svg=svg, legend=[(name, colour[name]) for name in series])


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
    return mark_safe(items)


def lines(title: str, x_labels: Sequence[str], series: dict[str, list[float | None]], unit: str) -> Chart:
    """A line chart: one line per series, one value (or None: no point) per x label."""
    names = sorted(series)
    colour = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    top = max((v for values in series.values() for v in values if v is not None), default=0) or 1
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(x_labels))
    parts = [
        format_html('<text x="{}" y="{}" class="axis">{}</text>', 2, TOP + 8, _short(top)),
        format_html('<text x="{}" y="{}" class="axis">0</text>', 2, TOP + plot_h),
        format_html(
            '<line x1="{}" y1="{}" x2="{}" y2="{}" class="base"/>', LEFT, TOP + plot_h, WIDTH - 4, TOP + plot_h
        ),
    ]
    for name in names:
        points = [
            (LEFT + (i + 0.5) * step, TOP + plot_h - value / top * plot_h, x_labels[i], value)
            for i, value in enumerate(series[name][: len(x_labels)])
            if value is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
            parts.append(format_html('<polyline points="{}" fill="none" stroke="{}"/>', path, colour[name]))
        for x, y, label, value in points:
            dot = '<circle cx="{}" cy="{}" r="2.5" fill="{}"><title>{} {}: {} {}</title></circle>'
            parts.append(format_html(dot, f"{x:.1f}", f"{y:.1f}", colour[name], label, name, _short(value), unit))
    label_every = max(1, len(x_labels) // 8)
    for i, x in enumerate(x_labels):
        if i % label_every == 0:
            parts.append(format_html('<text x="{}" y="{}" class="axis">{}</text>', f"{LEFT + i * step:.1f}",
                                     HEIGHT - 6, x))  # fmt: skip
    body = mark_safe("".join(parts))
    svg = format_html(
        '<svg viewBox="0 0 {} {}" role="img" aria-label="{}" class="chart">{}</svg>', WIDTH, HEIGHT, title, body
    )
    return Chart(title=title, svg=svg, legend=[(name, colour[name]) for name in names])
