"""A memory and its neighbours as a small server-rendered SVG graph, each node a link.

The memory sits in the middle; each relation is a spoke to a node around it, labelled with how
it reads from the middle ("superseded by", "duplicate of"). Enough for the handful of relations
one memory has; past ``MOST`` the rest are left to the list beside the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

MOST = 12


@dataclass(frozen=True)
class Neighbour:
    label: str
    href: str
    phrase: str


def relation_graph(
    title: str, centre: str, neighbours: Sequence[Neighbour], size: int = 360
) -> Markup:
    """The SVG of ``centre`` among its ``neighbours`` (at most ``MOST`` drawn)."""
    shown = list(neighbours)[:MOST]
    mid = size / 2
    radius = size / 2 - 48
    parts = []
    for i, n in enumerate(shown):
        angle = 2 * math.pi * i / max(len(shown), 1) - math.pi / 2
        x, y = mid + radius * math.cos(angle), mid + radius * math.sin(angle)
        lx, ly = (mid + x) / 2, (mid + y) / 2
        parts.append(
            f'<line class="edge" x1="{mid:.1f}" y1="{mid:.1f}" x2="{x:.1f}" y2="{y:.1f}"/>'
            f'<text x="{lx:.1f}" y="{ly - 4:.1f}" text-anchor="middle">{escape(n.phrase)}</text>'
            f'<a href="{escape(n.href)}"><title>{escape(n.phrase)}: {escape(n.label)}</title>'
            f'<circle class="node" cx="{x:.1f}" cy="{y:.1f}" r="10"/>'
            f'<text class="node-label" x="{x:.1f}" y="{y + 24:.1f}" text-anchor="middle">'
            f"{escape(_short(n.label))}</text></a>"
        )
    desc = f"{len(neighbours)} related memories" if neighbours else "no related memories"
    return Markup(
        f'<svg class="chart graph" viewBox="0 0 {size} {size}" role="img" '
        f'aria-label="{escape(title)}: {desc}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title><desc>{desc}</desc>"
        + "".join(parts)
        + f'<circle class="node center" cx="{mid}" cy="{mid}" r="14"/>'
        f'<text class="node-label" x="{mid}" y="{mid + 30}" text-anchor="middle">'
        f"{escape(_short(centre))}</text></svg>"
    )


def _short(text: str, most: int = 28) -> str:
    line = " ".join(text.split())
    return line if len(line) <= most else line[: most - 1] + "…"
