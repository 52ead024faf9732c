"""The run report: one self-contained HTML page with embedded PNG charts.

Rendered from the evaluation record (:func:`fraud_detection.training.steps.evaluate_step`) and
the gate decision, so it needs neither the model nor the data:

* the precision-recall curve with the operating threshold marked;
* recall, precision and F1 against the threshold;
* the confusion matrix at the operating threshold;
* the forest's feature importances;
* the expected cost per threshold: one analyst review per flagged transaction and the average
  fraud amount per missed fraud.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

import numpy as np

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
.passed { color: #1a7f37; font-weight: bold; } .failed { color: #c62828; font-weight: bold; }
img { max-width: 100%; } .grid { display: flex; flex-wrap: wrap; gap: 1em; }
.grid figure { margin: 0; width: 48%; min-width: 420px; }
"""


def _png(figure: Any) -> str:
    """A matplotlib figure as a base64 ``data:`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.0, 4.2))


def pr_curve_chart(evaluation: Mapping[str, Any]) -> str:
    """Precision against recall, the operating point marked."""
    figure, axes = _figure()
    curve = evaluation["pr_curve"]
    metrics = evaluation["metrics"]
    axes.plot(curve["recall"], curve["precision"], color="#1f77b4", label="model")
    axes.scatter(
        [metrics["recall"]],
        [metrics["precision"]],
        color="#d62728",
        zorder=3,
        label=f"threshold {metrics['threshold']:g}",
    )
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    axes.set_title(f"Precision-recall (average precision {metrics['pr_auc']:.3f})")
    axes.legend(loc="lower left")
    axes.grid(alpha=0.3)
    return _png(figure)


def threshold_chart(evaluation: Mapping[str, Any]) -> str:
    """Recall, precision and F1 against the threshold."""
    figure, axes = _figure()
    curve = evaluation["threshold_curve"]
    for name, color in (("recall", "#2ca02c"), ("precision", "#1f77b4"), ("f1", "#ff7f0e")):
        axes.plot(curve["threshold"], curve[name], label=name, color=color)
    axes.axvline(evaluation["metrics"]["threshold"], color="#d62728", linestyle="--", lw=1)
    axes.set(xlabel="threshold", ylabel="value", xlim=(0, 1), ylim=(0, 1.02))
    axes.set_title("Recall, precision and F1 by threshold")
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return _png(figure)


def confusion_chart(evaluation: Mapping[str, Any]) -> str:
    """The confusion matrix at the operating threshold, counts in the cells."""
    figure, axes = _figure()
    matrix = np.asarray(evaluation["metrics"]["confusion_matrix"], dtype=np.float64)
    names = evaluation.get("class_names", ["legitimate", "fraud"])
    shade = np.log10(matrix + 1)
    axes.imshow(shade, cmap="Blues")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if shade[row, column] > 0.6 * shade.max() else "black"
        axes.text(
            column, row, f"{int(count):,}", ha="center", va="center", fontsize=13, color=color
        )
    axes.set_xticks([0, 1], [f"predicted {n}" for n in names])
    axes.set_yticks([0, 1], [f"actual {n}" for n in names])
    axes.set_title(f"Confusion matrix at threshold {evaluation['metrics']['threshold']:g}")
    return _png(figure)


def importance_chart(evaluation: Mapping[str, Any]) -> str:
    """Impurity-based feature importances, largest on top."""
    figure, axes = _figure()
    importances = evaluation["feature_importances"]
    names = list(importances)[::-1]
    axes.barh(names, [importances[name] for name in names], color="#1f77b4")
    axes.set(xlabel="importance (mean decrease in impurity)")
    axes.set_title("Feature importances")
    axes.tick_params(axis="y", labelsize=8)
    return _png(figure)


def cost_chart(evaluation: Mapping[str, Any]) -> str:
    """Expected cost per threshold, the operating threshold and the cheapest one marked."""
    figure, axes = _figure()
    cost = evaluation["cost"]
    thresholds, values = cost["threshold"], cost["expected_cost"]
    axes.plot(thresholds, values, color="#9467bd")
    best = int(np.argmin(values))
    axes.scatter(
        [thresholds[best]],
        [values[best]],
        color="#2ca02c",
        zorder=3,
        label=f"cheapest: {thresholds[best]:g}",
    )
    axes.axvline(
        evaluation["metrics"]["threshold"],
        color="#d62728",
        linestyle="--",
        lw=1,
        label=f"operating: {evaluation['metrics']['threshold']:g}",
    )
    axes.set(xlabel="threshold", ylabel="expected cost on the test set", xlim=(0, 1))
    axes.set_title(
        f"Expected cost (review {cost['review_cost']:g} per flag, "
        f"missed fraud {cost['fraud_amount']:.2f})"
    )
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    return _png(figure)


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def render_report(
    evaluation: Mapping[str, Any],
    decision: Mapping[str, Any] | None = None,
    title: str = "Fraud model training run",
) -> str:
    """The report page as an HTML string."""
    metrics = evaluation["metrics"]
    baseline = (evaluation.get("deployed") or {}).get("metrics")
    names = ("recall", "precision", "f1", "pr_auc", "roc_auc", "card_precision_at_100")
    rows = [
        (name, _fmt(metrics.get(name)), _fmt(baseline.get(name) if baseline else None))
        for name in names
    ]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Model version {html.escape(str(evaluation.get('model_version') or 'not exported'))}; "
        f"test set: {metrics['test_rows']:,} transactions, {metrics['test_frauds']:,} fraudulent; "
        f"operating threshold {metrics['threshold']:g}.</p>",
    ]
    if decision is not None:
        verdict = "passed" if decision["passed"] else "failed"
        parts.append(f"<h2>Gate: <span class='{verdict}'>{verdict}</span></h2>")
        parts.append(
            "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in decision["reasons"]) + "</ul>"
        )
    deployed_note = evaluation.get("deployed") or {}
    deployed_label = f"deployed {deployed_note.get('model_version', '')}".strip()
    parts.append("<h2>Metrics</h2>")
    parts.append(_table(rows, ("metric", "this model", deployed_label if baseline else "deployed")))
    if deployed_note.get("note"):
        parts.append(f"<p>{html.escape(deployed_note['note'])}</p>")
    charts = [
        ("Precision-recall curve", pr_curve_chart(evaluation)),
        ("Threshold", threshold_chart(evaluation)),
        ("Confusion matrix", confusion_chart(evaluation)),
        ("Feature importances", importance_chart(evaluation)),
        ("Expected cost", cost_chart(evaluation)),
    ]
    parts.append("<div class='grid'>")
    for caption, uri in charts:
        parts.append(
            f"<figure><img alt='{html.escape(caption)}' src='{uri}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts.append("</div>")
    training = evaluation.get("training") or {}
    if training:
        parts.append("<h2>Training</h2>")
        parts.append(
            _table(
                [(k, _fmt(v)) for k, v in sorted(_flatten(training).items())], ("field", "value")
            )
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
