"""The run report: one self-contained HTML page with embedded PNG charts, for a fraud analyst.

Rendered from the evaluation record (:func:`fraud_detection.training.steps.evaluate_step`) and
the gate decision, so it needs neither the model nor the data; every figure on the page is
computed by the evaluation, the report only lays it out:

* what the gate decided and what that means for deployment (the report is written before the
  pipeline's deploy step, which runs only when the gate passes), and which model, if any, was
  deployed when the run was evaluated;
* the operating point in an analyst's terms: alerts a day, frauds and fraud amount caught;
* the metrics with 95 % confidence intervals, beside the previously deployed model's;
* the precision-recall curve and recall, precision and F1 by threshold, the operating point
  marked;
* the score distribution of each class, the threshold marked;
* the confusion matrix at the operating threshold;
* impurity and permutation feature importances, each sorted by value;
* the expected cost per threshold: one analyst review per flagged transaction and a given amount
  per missed fraud;
* the training parameters, the split (only the fields of the split that was used) and the fit.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import numpy as np

from fraud_detection.html_report import CHART_HEIGHT as _HEIGHT
from fraud_detection.html_report import html_figure, html_page
from fraud_detection.html_report import html_table as _table
from fraud_detection.html_report import render_chart as _render

_OPERATING = "#d62728"


def _threshold(evaluation: Mapping[str, Any]) -> float:
    return float(evaluation["metrics"]["threshold"])


def pr_curve_chart(evaluation: Mapping[str, Any]) -> str:
    """Precision against recall, the operating point marked."""
    curve, metrics = evaluation["pr_curve"], evaluation["metrics"]

    def draw(axes: Any) -> None:
        axes.plot(curve["recall"], curve["precision"], color="#1f77b4", label="model")
        axes.scatter(
            [metrics["recall"]],
            [metrics["precision"]],
            color=_OPERATING,
            zorder=3,
            label=f"threshold {metrics['threshold']:g}",
        )
        axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
        axes.set_title(f"Precision-recall (average precision {metrics['pr_auc']:.3f})")
        axes.legend(loc="lower left")
        axes.grid(alpha=0.3)

    return _render(draw)


def threshold_chart(evaluation: Mapping[str, Any]) -> str:
    """Recall, precision and F1 against the threshold."""
    curve = evaluation["threshold_curve"]

    def draw(axes: Any) -> None:
        for name, color in (("recall", "#2ca02c"), ("precision", "#1f77b4"), ("f1", "#ff7f0e")):
            axes.plot(curve["threshold"], curve[name], label=name, color=color)
        axes.axvline(_threshold(evaluation), color=_OPERATING, linestyle="--", lw=1)
        axes.set(xlabel="threshold", ylabel="value", xlim=(0, 1), ylim=(0, 1.02))
        axes.set_title("Recall, precision and F1 by threshold")
        axes.legend(loc="best")
        axes.grid(alpha=0.3)

    return _render(draw)


def score_distribution_chart(evaluation: Mapping[str, Any]) -> str:
    """Histograms of the scores of each class (log-scaled counts), the threshold marked."""
    histogram = evaluation["score_histogram"]
    names = evaluation.get("class_names", ["legitimate", "fraud"])
    edges = np.asarray(histogram["edges"], dtype=np.float64)

    def draw(axes: Any) -> None:
        for name, color in zip(names, ("#1f77b4", _OPERATING), strict=True):
            counts = np.asarray(histogram[name], dtype=np.float64)
            axes.stairs(counts, edges, fill=True, alpha=0.45, color=color, label=name)
            axes.stairs(counts, edges, color=color, lw=1)
        axes.axvline(
            _threshold(evaluation),
            color="#222",
            linestyle="--",
            lw=1,
            label=f"threshold {_threshold(evaluation):g}",
        )
        axes.set_yscale("log")
        axes.set_ylim(bottom=0.7)
        axes.set(xlabel="fraud score", ylabel="test transactions (log scale)", xlim=(0, 1))
        axes.set_title("Score distribution by class")
        axes.legend(loc="upper right")
        axes.grid(alpha=0.3, which="major")

    return _render(draw)


def reliability_chart(evaluation: Mapping[str, Any]) -> str:
    """Observed fraud rate against mean score per score bin (log axes), with the threshold."""
    bins = evaluation["reliability"]
    mean = np.asarray(bins["mean_score"], dtype=np.float64)
    rate = np.asarray(bins["fraud_rate"], dtype=np.float64)
    low = np.asarray(bins["fraud_rate_low"], dtype=np.float64)
    high = np.asarray(bins["fraud_rate_high"], dtype=np.float64)
    floor = 1e-4  # log axes: a bin without fraud is drawn at the floor

    def draw(axes: Any) -> None:
        axes.plot([floor, 1], [floor, 1], color="#888", lw=1, linestyle=":", label="calibrated")
        axes.errorbar(
            np.maximum(mean, floor),
            np.maximum(rate, floor),
            yerr=[np.maximum(rate, floor) - np.maximum(low, floor), high - np.maximum(rate, floor)],
            fmt="o-",
            color="#1f77b4",
            ecolor="#9bbbd8",
            capsize=3,
            label="test set (95 % interval)",
        )
        threshold = _threshold(evaluation)
        axes.axvline(
            threshold, color="#222", linestyle="--", lw=1, label=f"threshold {threshold:g}"
        )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set(xlim=(floor, 1), ylim=(floor, 1))
        axes.set(xlabel="mean score of the bin", ylabel="observed fraud rate")
        axes.set_title("Reliability")
        axes.legend(loc="upper left")
        axes.grid(alpha=0.3, which="major")

    return _render(draw)


def confusion_chart(evaluation: Mapping[str, Any]) -> str:
    """The confusion matrix at the operating threshold, counts in the cells."""
    matrix = np.asarray(evaluation["metrics"]["confusion_matrix"], dtype=np.float64)
    names = evaluation.get("class_names", ["legitimate", "fraud"])

    def draw(axes: Any) -> None:
        shade = np.log10(matrix + 1)
        axes.imshow(shade, cmap="Blues")
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if shade[row, column] > 0.6 * shade.max() else "black"
            axes.text(
                column, row, f"{int(count):,}", ha="center", va="center", fontsize=13, color=color
            )
        axes.set_xticks([0, 1], ["not flagged", "flagged"])
        axes.set_yticks([0, 1], [f"actual {n}" for n in names])
        axes.set_title(f"Confusion matrix at threshold {_threshold(evaluation):g}")

    return _render(draw)


def _sorted_by_value(values: Mapping[str, float]) -> list[str]:
    """Names by decreasing value (ties by name), so a chart lists the largest first."""
    return sorted(values, key=lambda name: (-values[name], name))


def _bar_height(count: int) -> float:
    return max(_HEIGHT, 0.3 * count + 1.2)


def importance_chart(evaluation: Mapping[str, Any]) -> str:
    """Impurity-based feature importances, sorted by value, largest on top."""
    importances = evaluation["feature_importances"]
    names = _sorted_by_value(importances)

    def draw(axes: Any) -> None:
        axes.barh(names, [importances[name] for name in names], color="#1f77b4")
        axes.invert_yaxis()
        axes.set(xlabel="mean decrease in impurity (share of the total)")
        axes.set_title("Impurity importance (training)")
        axes.grid(alpha=0.3, axis="x")

    return _render(draw, _bar_height(len(names)))


def permutation_chart(evaluation: Mapping[str, Any]) -> str:
    """Permutation importances on the test set (mean and spread of the shuffles), sorted."""
    permutation = evaluation["permutation_importances"]
    means, spreads = permutation["mean"], permutation["std"]
    names = _sorted_by_value(means)

    def draw(axes: Any) -> None:
        axes.barh(
            names,
            [means[name] for name in names],
            xerr=[spreads[name] for name in names],
            color="#2ca02c",
            ecolor="#444",
            capsize=2,
        )
        axes.invert_yaxis()
        axes.axvline(0, color="#222", lw=0.8)
        axes.set(xlabel="drop in average precision when the feature is shuffled")
        axes.set_title("Permutation importance (test set)")
        axes.grid(alpha=0.3, axis="x")

    return _render(draw, _bar_height(len(names)))


def cost_chart(evaluation: Mapping[str, Any]) -> str:
    """Expected cost per threshold, the operating threshold and the cheapest one marked."""
    cost = evaluation["cost"]
    thresholds, values = cost["threshold"], cost["expected_cost"]
    best = int(np.argmin(values))

    def draw(axes: Any) -> None:
        axes.plot(thresholds, values, color="#9467bd", label="expected cost")
        axes.scatter(
            [thresholds[best]],
            [values[best]],
            color="#2ca02c",
            zorder=3,
            label=f"cheapest: threshold {thresholds[best]:g}",
        )
        axes.axvline(
            _threshold(evaluation),
            color=_OPERATING,
            linestyle="--",
            lw=1,
            label=f"operating: threshold {_threshold(evaluation):g}",
        )
        axes.set(xlabel="threshold", ylabel="cost on the test set (amount)", xlim=(0, 1))
        axes.yaxis.set_major_formatter("{x:,.0f}")
        source = "" if cost.get("fraud_amount_source") == "parameter" else " (mean fraud amount)"
        axes.set_title(
            "Expected cost by threshold\n"
            f"review {cost['review_cost']:g} per alert, missed fraud "
            f"{_amount(cost['fraud_amount'])}{source}",
            fontsize=10,
        )
        axes.legend(loc="best")
        axes.grid(alpha=0.3)

    return _render(draw)


# ---------------------------------------------------------------------------------- text
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _amount(value: float) -> str:
    return f"{value:,.2f}"


def _interval(interval: Mapping[str, Any] | None) -> str:
    if not interval:
        return "-"
    return f"{interval['low']:.3f} to {interval['high']:.3f}"


def deployment_statement(
    decision: Mapping[str, Any] | None, deployed: Mapping[str, Any] | None
) -> list[str]:
    """What the report can truthfully say about deployment, as sentences.

    The report runs before the deploy step, which runs only when the gate passes: so the gate's
    decision says whether this model is deployed, never that it already is. ``deployed`` is the
    evaluation's record of the model that was deployed when the run was evaluated (the
    comparison baseline), not this model.
    """
    deployed = deployed or {}
    previous = deployed.get("model_version") if deployed.get("evaluated") else None
    if decision is None:
        outcome = (
            "No gate decision was given to this report, so whether this model is deployed is "
            "not known here."
        )
    elif decision.get("passed"):
        outcome = (
            "The gate passed: the pipeline's deploy step, which runs after this report, deploys "
            "this model"
            + (f" in place of {previous}." if previous else ".")
            + " That step records whether it succeeded (in a local run, the field "
            "'deployed' of metrics.json)."
        )
    else:
        outcome = "The gate refused this model: it is not deployed" + (
            f"; {previous} stays deployed." if previous else "."
        )
    if deployed.get("evaluated"):
        baseline = (
            f"The model deployed when this run was evaluated, {previous}, was scored on the "
            "same test set (last column of the metrics table)."
        )
    else:
        note = deployed.get("note") or "no record of a deployed model"
        version = deployed.get("model_version")
        baseline = (
            "No comparison with a previously deployed model"
            + (f" ({version})" if version else "")
            + f": {note} (registry at evaluation time)."
        )
    return [outcome, baseline]


def operating_point(evaluation: Mapping[str, Any]) -> list[str]:
    """The operating threshold in an analyst's terms: alerts, frauds and fraud amount caught."""
    metrics = evaluation["metrics"]
    intervals = metrics.get("confidence_intervals") or {}
    level = f"{float(intervals.get('level', 0.95)):.0%}"
    matrix = metrics["confusion_matrix"]
    caught, frauds, flagged = matrix[1][1], metrics["test_frauds"], metrics["flagged"]
    lines = []
    if "alerts_per_day" in metrics:
        alerts = (
            f"<b>{metrics['alerts_per_day']:,.1f} alerts a day</b>: {flagged:,} of "
            f"{metrics['test_rows']:,} test transactions flagged over the "
            f"{metrics['test_span_days']} days the test set spans."
        )
        split = ((evaluation.get("training") or {}).get("split")) or {}
        if split.get("kind") == "stratified" and split.get("test_size"):
            share = float(split["test_size"])
            alerts += (
                f" The stratified test set is a {share:.0%} sample of every day's transactions, "
                f"so all traffic would raise about {metrics['alerts_per_day'] / share:,.0f} a day."
            )
        lines.append(alerts)
    recall = f"recall {metrics['recall']:.3f}"
    if "recall" in intervals:
        recall += f", {level} interval {_interval(intervals['recall'])}"
    lines.append(f"<b>{caught:,} of {frauds:,} frauds caught</b> ({recall}).")
    precision = f"precision {metrics['precision']:.3f}"
    if "precision" in intervals:
        precision += f", {level} interval {_interval(intervals['precision'])}"
    lines.append(f"<b>{caught:,} of {flagged:,} alerts are fraud</b> ({precision}).")
    if "fraud_value_caught_share" in metrics:
        lines.append(
            f"<b>{metrics['fraud_value_caught_share']:.1%} of the fraud amount caught</b>: "
            f"{_amount(metrics['fraud_amount_caught'])} of the "
            f"{_amount(metrics['fraud_amount_total'])} that the test set's frauds took "
            "(amounts in the data's currency)."
        )
    return lines


def _interval_note(metrics: Mapping[str, Any]) -> str:
    intervals = metrics.get("confidence_intervals") or {}
    if not intervals:
        return ""
    parts = []
    if "recall" in intervals:
        parts.append(
            "Wilson score intervals for recall (a share of the test set's frauds) and precision "
            "(a share of the flagged transactions)"
        )
    boot = intervals.get("f1") or intervals.get("pr_auc")
    if boot:
        parts.append(
            f"percentile intervals of {boot['resamples']:,} bootstrap resamples of the test set "
            f"(seed {boot['seed']}) for F1 and PR-AUC"
        )
    level = float(intervals.get("level", 0.95))
    return (
        f"{level:.0%} intervals: "
        + "; ".join(parts)
        + f". With {metrics['test_frauds']:,} frauds in the test set, differences inside these "
        "intervals are not meaningful. ROC-AUC and Card Precision@100 have no interval."
    )


def _captions(evaluation: Mapping[str, Any]) -> dict[str, str]:
    """The caption under each chart: how to read it and where its figures come from."""
    threshold = _threshold(evaluation)
    cost = evaluation["cost"]
    values, thresholds = cost["expected_cost"], cost["threshold"]
    best = int(np.argmin(values))
    at = int(np.argmin(np.abs(np.asarray(thresholds) - threshold)))
    if cost.get("fraud_amount_source") == "parameter":
        missed = (
            f"a missed fraud costs {_amount(cost['fraud_amount'])}, the pipeline parameter "
            "fraud_amount"
        )
    else:
        missed = (
            f"a missed fraud costs {_amount(cost['fraud_amount'])}, the mean amount of the test "
            "set's frauds (pipeline parameter fraud_amount=0; set it to use a fixed figure)"
        )
    captions = {
        "pr": (
            "Each point of the curve is a threshold: the share of frauds caught (recall) against "
            "the share of alerts that are fraud (precision). The red dot is the operating "
            f"threshold {threshold:g}; average precision (PR-AUC) summarises the whole curve."
        ),
        "threshold": (
            "What each threshold would give on the test set; the dashed line is the operating "
            f"threshold {threshold:g}. Lowering it catches more fraud and raises more alerts."
        ),
        "scores": (
            "How the model scores each class (counts on a log scale: frauds are rare). Every "
            f"transaction at or right of the dashed line (score ≥ {threshold:g}) is flagged; "
            "frauds left of it are missed."
        ),
        "reliability": (
            "Whether a score means what it says: test transactions binned by score, each bin's "
            "mean score against the share of its transactions that are fraud (95 % Wilson "
            "interval). On the dotted diagonal, a score of 0.1 flags transactions that are fraud "
            "about one time in ten. A bin without fraud is drawn at the bottom edge."
        ),
        "confusion": (
            "Test transactions by actual class (rows) and by the decision at threshold "
            f"{threshold:g} (columns)."
        ),
        "impurity": (
            "How much each feature reduced the trees' impurity during training (shares summing "
            "to 1). It favours features with many distinct values and says nothing about the "
            "test set; compare with the permutation importance."
        ),
        "cost": (
            "Cost on the test set at each threshold, in the data's amount units: each flagged "
            f"transaction costs one analyst review of {cost['review_cost']:g} (pipeline "
            f"parameter review_cost) and {missed}. The operating threshold {threshold:g} costs "
            f"about {values[at]:,.0f}; the cheapest, {thresholds[best]:g}, "
            f"{values[best]:,.0f}. Both cost figures are assumptions to set for the business."
        ),
    }
    permutation = evaluation.get("permutation_importances")
    if permutation:
        sample = (
            f"all {permutation['test_rows']:,} test transactions"
            if permutation["rows"] == permutation["test_rows"]
            else (
                f"a seeded sample of {permutation['rows']:,} of the "
                f"{permutation['test_rows']:,} test transactions holding {permutation['frauds']:,} "
                "frauds, weighted to stand for the whole test set"
            )
        )
        captions["permutation"] = (
            "How much average precision drops when one feature's values are shuffled (mean of "
            f"{permutation['repeats']} shuffles, seed {permutation['seed']}; whiskers: one "
            f"standard deviation), measured on {sample}. Near zero or below: the model does not "
            "rely on the feature."
        )
    return captions


def _charts(evaluation: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(alt text, image URI, caption) of every chart the evaluation has data for."""
    captions = _captions(evaluation)
    charts = [
        ("Precision-recall curve", pr_curve_chart(evaluation), captions["pr"]),
        (
            "Recall, precision and F1 by threshold",
            threshold_chart(evaluation),
            captions["threshold"],
        ),
    ]
    if evaluation.get("score_histogram"):
        charts.append(
            ("Score distribution", score_distribution_chart(evaluation), captions["scores"])
        )
    if evaluation.get("reliability"):
        charts.append(("Reliability", reliability_chart(evaluation), captions["reliability"]))
    charts.append(("Confusion matrix", confusion_chart(evaluation), captions["confusion"]))
    charts.append(("Impurity importance", importance_chart(evaluation), captions["impurity"]))
    if evaluation.get("permutation_importances"):
        charts.append(
            ("Permutation importance", permutation_chart(evaluation), captions["permutation"])
        )
    charts.append(("Expected cost", cost_chart(evaluation), captions["cost"]))
    return charts


#: Split fields that apply to each kind of split, in display order.
_SPLIT_FIELDS: dict[str, tuple[str, ...]] = {
    "stratified": ("kind", "test_size", "seed"),
    "temporal": (
        "kind",
        "windows.train_start",
        "windows.train_end",
        "windows.test_start",
        "windows.test_end",
        "windows.gap_days",
        "exclude_known_compromised",
        "test_rows_excluded_known_compromised",
    ),
}
_SPLIT_COUNTS = ("train_rows", "train_frauds", "test_rows", "test_frauds")


def training_rows(training: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The training table: parameters, the split's own fields (only those its kind uses), fit."""
    rows: list[tuple[str, str]] = []
    params = _flatten(training.get("params") or {})
    rows += [(f"params.{key}", _fmt(value)) for key, value in sorted(params.items())]
    split = _flatten(training.get("split") or {})
    if split:
        fields = _SPLIT_FIELDS.get(str(split.get("kind")), tuple(sorted(split)))
        rows += [
            (f"split.{key}", _fmt(split[key])) for key in (*fields, *_SPLIT_COUNTS) if key in split
        ]
    fit = _flatten(training.get("fit") or {})
    rows += [(f"fit.{key}", _fmt(value)) for key, value in sorted(fit.items())]
    return rows


def render_report(
    evaluation: Mapping[str, Any],
    decision: Mapping[str, Any] | None = None,
    title: str = "Fraud model training run",
) -> str:
    """The report page as an HTML string."""
    metrics = evaluation["metrics"]
    deployed = evaluation.get("deployed") or {}
    baseline = deployed.get("metrics") if deployed.get("evaluated") else None
    intervals = metrics.get("confidence_intervals") or {}
    split_kind = ((evaluation.get("training") or {}).get("split") or {}).get("kind")
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Model version {html.escape(str(evaluation.get('model_version') or 'not exported'))}; "
        f"test set: {metrics['test_rows']:,} transactions, {metrics['test_frauds']:,} fraudulent"
        + (f" ({html.escape(str(split_kind))} split)" if split_kind else "")
        + f"; operating threshold {metrics['threshold']:g}.</p>",
    ]
    if decision is not None:
        verdict = "passed" if decision["passed"] else "failed"
        parts.append(f"<h2>Gate: <span class='{verdict}'>{verdict}</span></h2>")
        parts.append(
            "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in decision["reasons"]) + "</ul>"
        )
    parts.append("<h2>Deployment</h2>")
    parts += [
        f"<p class='deployment'>{html.escape(line)}</p>"
        for line in deployment_statement(decision, deployed)
    ]
    parts.append(f"<h2>At the operating threshold {metrics['threshold']:g}</h2>")
    parts.append(
        "<ul>" + "".join(f"<li>{line}</li>" for line in operating_point(evaluation)) + "</ul>"
    )

    names = ("recall", "precision", "f1", "pr_auc", "roc_auc", "card_precision_at_100")
    rows = [
        (
            name,
            _fmt(metrics.get(name)),
            _interval(intervals.get(name)),
            _fmt(baseline.get(name) if baseline else None),
        )
        for name in names
    ]
    previous = deployed.get("model_version") if baseline else None
    parts.append("<h2>Metrics</h2>")
    parts.append(
        _table(
            rows,
            (
                "metric",
                "this model",
                f"{float(intervals.get('level', 0.95)):.0%} interval",
                f"deployed before ({previous})" if previous else "deployed before",
            ),
        )
    )
    if note := _interval_note(metrics):
        parts.append(f"<p class='note'>{html.escape(note)}</p>")

    parts.append("<div class='grid'>")
    for alt, uri, caption in _charts(evaluation):
        parts.append(html_figure(alt, uri, caption))
    parts.append("</div>")
    training = evaluation.get("training") or {}
    if training:
        parts.append("<h2>Training</h2>")
        parts.append(_table(training_rows(training), ("field", "value")))
    return html_page(title, parts)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
