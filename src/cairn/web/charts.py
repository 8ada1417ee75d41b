"""Bar and line charts over time as server-rendered SVG: no script, readable by screen readers.

A chart is a list of x labels (days, hours) and one or more ``Series`` of values, one value per
label. ``bars`` stacks the series; ``lines`` draws one line each. Colours are CSS classes
(``s0`` .. ``s7`` in ``cairn.css``), so light and dark themes recolour them. Each chart carries a
``<title>`` and a ``<desc>`` that says what it shows in words, each bar or point a ``<title>``
with its figures, and the legend is HTML below the picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

COLOURS = 8
"""Series past this many reuse the colours from the start."""


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]


@dataclass(frozen=True)
class Frame:
    """The plot area inside a ``width`` x ``height`` picture, room left for the axes' labels."""

    width: int = 640
    height: int = 200
    left: int = 44
    right: int = 8
    top: int = 8
    bottom: int = 28

    @property
    def inner_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def inner_height(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float, top: float) -> float:
        return self.top + self.inner_height * (1 - value / top)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (at least 1): the axis top."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop's last step always holds


def bars(
    title: str, labels: Sequence[str], series: Sequence[Series], frame: Frame | None = None
) -> Markup:
    """Stacked bars, one per label, with a part per series."""
    frame = frame or Frame()
    _check(labels, series)
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    top = nice_ceiling(max(totals, default=0))
    slot = frame.inner_width / max(len(labels), 1)
    width = max(slot * 0.8, 1.0)
    parts = []
    for i, label in enumerate(labels):
        x = frame.left + i * slot + (slot - width) / 2
        base = 0.0
        for n, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            y0, y1 = frame.y(base, top), frame.y(base + value, top)
            tip = f"{label}: {_figure(value)}" + (f" {s.name}" if len(series) > 1 else "")
            parts.append(
                f'<rect class="s{n % COLOURS}" x="{x:.1f}" y="{y1:.1f}" width="{width:.1f}" '
                f'height="{max(y0 - y1, 0.5):.1f}"><title>{escape(tip)}</title></rect>'
            )
            base += value
    total = sum(totals)
    summary = f"{_figure(total)} in all over {len(labels)} {_plural(len(labels), 'period')}"
    return _picture(title, summary, frame, top, labels, parts, series, centred=True)


def lines(
    title: str, labels: Sequence[str], series: Sequence[Series], frame: Frame | None = None
) -> Markup:
    """One line per series, a dot at each label."""
    frame = frame or Frame()
    _check(labels, series)
    top = nice_ceiling(max((v for s in series for v in s.values), default=0))
    step = frame.inner_width / max(len(labels) - 1, 1)
    parts = []
    for n, s in enumerate(series):
        points = [(frame.left + i * step, frame.y(v, top)) for i, v in enumerate(s.values)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline class="line s{n % COLOURS}" points="{path}"/>')
        for (x, y), label, value in zip(points, labels, s.values, strict=True):
            tip = escape(f"{label}: {_figure(value)} {s.name}")
            parts.append(
                f'<circle class="s{n % COLOURS}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                f"<title>{tip}</title></circle>"
            )
    peak = max((v for s in series for v in s.values), default=0)
    summary = f"peak {_figure(peak)} over {len(labels)} {_plural(len(labels), 'period')}"
    return _picture(title, summary, frame, top, labels, parts, series, centred=False)


def _picture(
    title: str,
    summary: str,
    frame: Frame,
    top: float,
    labels: Sequence[str],
    parts: list[str],
    series: Sequence[Series],
    centred: bool,
) -> Markup:
    """The SVG around ``parts``: the grid, both axes' labels (``centred`` under bars, else on
    points), title and description; then the legend (when there is more than one series)."""
    grid = []
    for k in range(5):
        value = top * k / 4
        y = frame.y(value, top)
        grid.append(
            f'<line class="grid" x1="{frame.left}" x2="{frame.width - frame.right}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{frame.left - 4}" y="{y + 4:.1f}" text-anchor="end">{_figure(value)}</text>'
        )
    axis_y = frame.height - frame.bottom
    grid.append(
        f'<line class="axis" x1="{frame.left}" x2="{frame.width - frame.right}" '
        f'y1="{axis_y}" y2="{axis_y}"/>'
    )
    for i in _label_positions(len(labels)):
        if centred:
            x = frame.left + (i + 0.5) * frame.inner_width / max(len(labels), 1)
        else:
            x = frame.left + i * frame.inner_width / max(len(labels) - 1, 1)
        grid.append(
            f'<text x="{x:.1f}" y="{frame.height - 8}" text-anchor="middle">'
            f"{escape(labels[i])}</text>"
        )
    names = ", ".join(s.name for s in series)
    desc = f"{summary}; {names}" if names else summary
    svg = (
        f'<svg class="chart" viewBox="0 0 {frame.width} {frame.height}" role="img" '
        f'aria-label="{escape(title)}: {escape(desc)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title><desc>{escape(desc)}</desc>"
        + "".join(grid)
        + "".join(parts)
        + "</svg>"
    )
    if len(series) > 1:
        items = "".join(
            f'<li class="s{n % COLOURS}"><span class="swatch"></span>{escape(s.name)}</li>'
            for n, s in enumerate(series)
        )
        svg += f'<ul class="legend" aria-hidden="true">{items}</ul>'
    return Markup(svg)


def _label_positions(count: int, most: int = 8) -> list[int]:
    """Which x labels to write: all of a few, else ``most`` spread evenly, first and last in."""
    if count <= most:
        return list(range(count))
    return sorted({round(k * (count - 1) / (most - 1)) for k in range(most)})


def _check(labels: Sequence[str], series: Sequence[Series]) -> None:
    for s in series:
        if len(s.values) != len(labels):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(labels)}")
        if any(not math.isfinite(v) or v < 0 for v in s.values):
            raise ValueError(f"series {s.name!r} holds a negative or non-finite value")


def _figure(value: float) -> str:
    """A value as an axis writes it: 1200 -> 1.2k, 3.5 -> 3.5, 4.0 -> 4."""
    if value >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if value >= 1_000:
        return f"{value / 1_000:.3g}k"
    return f"{value:.3g}"


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"
