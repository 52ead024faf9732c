"""Self-contained HTML report pages: matplotlib charts embedded as base64 PNG, and tables.

Shared by the training run report (:mod:`fraud_detection.training.report`) and the monitoring
report (:mod:`fraud_detection.monitoring.report`). A page built with these helpers loads nothing
from elsewhere: styles are inline and every chart is a ``data:`` URI. matplotlib is imported
only when a chart is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Iterable, Sequence
from typing import Any

#: The page style of every report.
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.passed { color: #1a7f37; font-weight: bold; } .failed { color: #c62828; font-weight: bold; }
.note { color: #555; font-size: 0.92em; }
img { max-width: 100%; display: block; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
        gap: 1.5em 1.5em; align-items: start; }
.grid figure { margin: 0; }
.grid figcaption { font-size: 0.92em; color: #444; margin-top: 0.3em; line-height: 1.35; }
"""

#: Font sizes (points) of every chart: nothing below 9 pt.
FONTS = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9.5,
}
#: A chart's default size in inches.
CHART_WIDTH = 6.4
CHART_HEIGHT = 4.4
#: Resolution of the embedded PNGs.
DPI = 110


def render_chart(
    draw: Callable[[Any], None],
    height: float = CHART_HEIGHT,
    width: float = CHART_WIDTH,
    rows: int = 1,
) -> str:
    """Draw a figure with the reports' fonts; return it as a base64 PNG ``data:`` URI.

    ``draw`` receives the figure's axes: one ``Axes`` when ``rows`` is 1, else an array of
    ``rows`` axes stacked over a shared x axis.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    with plt.rc_context(FONTS):
        if rows == 1:
            figure, axes = plt.subplots(figsize=(width, height))
        else:
            figure, axes = plt.subplots(rows, 1, figsize=(width, height), sharex=True)
        try:
            draw(axes)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        finally:
            plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def html_table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """An HTML table of ``rows`` under ``header``; every cell is escaped text."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_figure(alt: str, uri: str, caption: str) -> str:
    """One chart with its alt text and caption (both escaped)."""
    return (
        f"<figure><img alt='{html.escape(alt)}' src='{uri}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def html_page(title: str, parts: Iterable[str], style: str = STYLE) -> str:
    """A whole page: ``parts`` (HTML fragments, one a line) under ``title``, styles inline."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
