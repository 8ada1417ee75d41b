"""SVG charts (cairn.web.charts): the picture holds the figures it claims, and says them."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from cairn.web.charts import Frame, Series, bars, lines, nice_ceiling

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup: str) -> ET.Element:
    """The <svg> element of a chart (the legend after it is HTML, cut off here)."""
    return ET.fromstring(markup[: markup.index("</svg>") + 6])


def test_stacked_bars_are_as_tall_as_their_totals() -> None:
    frame = Frame(width=300, height=140)
    chart = bars(
        "Memories per day",
        ["12-01", "12-02", "12-03"],
        [Series("decision", [4, 0, 2]), Series("fact", [6, 5, 0])],
        frame,
    )
    svg = parse(chart)
    rects = svg.findall(f"{SVG}rect")
    assert len(rects) == 4  # zero values draw nothing
    top = nice_ceiling(10)  # the tallest stack is 10
    unit = frame.inner_height / top
    heights = {r.find(f"{SVG}title").text: float(r.get("height")) for r in rects}
    assert heights == pytest.approx(
        {
            "12-01: 4 decision": 4 * unit,
            "12-01: 6 fact": 6 * unit,
            "12-02: 5 fact": 5 * unit,
            "12-03: 2 decision": 2 * unit,
        },
        abs=0.1,
    )
    # The first day's two parts stack: the fact part sits right on the decision part.
    parts = sorted((r for r in rects if r.find(f"{SVG}title").text.startswith("12-01")),
                   key=lambda r: float(r.get("y")))  # fmt: skip
    assert float(parts[0].get("y")) + float(parts[0].get("height")) == pytest.approx(
        float(parts[1].get("y")),
        abs=0.1,
    )
    assert svg.get("role") == "img"
    assert svg.find(f"{SVG}title").text == "Memories per day"
    assert "17 in all over 3 periods; decision, fact" in svg.find(f"{SVG}desc").text
    assert 'class="legend"' in chart and "decision" in chart[chart.index("</svg>") :]


def test_one_series_has_no_legend_and_plain_tooltips() -> None:
    chart = bars("Pushes", ["10:00", "11:00"], [Series("pushes", [3, 1200])])
    assert 'class="legend"' not in chart
    titles = [t.text for t in parse(chart).iter(f"{SVG}title")]
    assert titles == ["Pushes", "10:00: 3", "11:00: 1.2k"]


def test_lines_put_a_point_per_label_at_its_value() -> None:
    frame = Frame(width=200, height=120)
    chart = lines("Usage", ["a", "b", "c"], [Series("bytes", [0, 50, 100])], frame)
    svg = parse(chart)
    points = [(float(c.get("cx")), float(c.get("cy"))) for c in svg.iter(f"{SVG}circle")]
    assert [x for x, _ in points] == pytest.approx(
        [frame.left, frame.left + frame.inner_width / 2, frame.width - frame.right]
    )
    assert [y for _, y in points] == pytest.approx(
        [frame.top + frame.inner_height, frame.top + frame.inner_height / 2, frame.top]
    )
    polyline = svg.find(f"{SVG}polyline")
    assert polyline is not None and len(polyline.get("points", "").split()) == 3


def test_names_and_labels_are_escaped() -> None:
    chart = bars("<script>", ["<b>"], [Series("a&b", [1]), Series("c", [1])])
    assert "<script>" not in chart and "<b>" not in chart
    assert "&lt;script&gt;" in chart and "a&amp;b" in chart
    parse(chart)  # still well-formed


def test_no_data_still_draws_an_empty_chart() -> None:
    svg = parse(bars("Nothing yet", [], []))
    assert svg.findall(f"{SVG}rect") == []
    assert "0 in all over 0 periods" in (svg.find(f"{SVG}desc").text or "")


def test_many_labels_write_a_few_spread_evenly_first_and_last_in() -> None:
    labels = [f"d{i}" for i in range(90)]
    svg = parse(bars("Days", labels, [Series("n", [1.0] * 90)]))
    written = [t.text for t in svg.iter(f"{SVG}text") if t.text and t.text.startswith("d")]
    assert written[0] == "d0" and written[-1] == "d89" and len(written) == 8


@pytest.mark.parametrize("values", [[1.0], [1.0, -1.0, 2.0], [math.nan, 1.0, 1.0]])
def test_bad_values_are_refused(values: list[float]) -> None:
    with pytest.raises(ValueError, match="series 'x'"):
        bars("t", ["a", "b", "c"], [Series("x", values)])


@pytest.mark.parametrize(
    ("value", "top"),
    [(0, 1), (0.3, 1), (1, 1), (3, 5), (7, 10), (11, 20), (240, 250), (1001, 2000)],
)
def test_the_axis_top_is_a_round_number_at_or_above_the_peak(value: float, top: float) -> None:
    assert nice_ceiling(value) == top


def test_axis_figures_are_short() -> None:
    chart = bars("Big", ["a"], [Series("n", [2_400_000])])
    assert re.findall(r">([\d.]+[kM]?)</text>", chart) == ["0", "625k", "1.25M", "1.88M", "2.5M"]
