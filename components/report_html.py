"""The run report: one self-contained HTML page (plots embedded as PNG data URIs).

`collect(...)` reads a run's artifacts into plain data; `render(data)` turns that
into HTML. Keeping them apart lets a test compare the data with ML Metadata and TFMA
and the page with the data.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


# -- reading a run ----------------------------------------------------------------
def split_rows(statistics_uri: str, splits: Sequence[str]) -> dict[str, int]:
    """Examples per split, from StatisticsGen's output."""
    import tensorflow_data_validation as tfdv

    rows = {}
    for split in splits:
        stats = tfdv.load_stats_binary(os.path.join(statistics_uri, f"Split-{split}",
                                                    "FeatureStats.pb"))
        rows[split] = int(stats.datasets[0].num_examples)
    return rows


def split_anomalies(anomalies_uri: str, splits: Sequence[str]) -> dict[str, dict[str, str]]:
    """feature -> description of each anomaly ExampleValidator recorded, per split."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    from tfx.utils import io_utils

    found = {}
    for split in splits:
        path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(io_utils.read_bytes_file(path))
        found[split] = {name: info.description or info.short_description
                        for name, info in sorted(anomalies.anomaly_info.items())}
    return found


def eval_metrics(evaluation_uri: str, context: Sequence[str]) -> dict[str, dict[str, float]]:
    """Candidate metrics: 'overall' and one entry per single-feature context slice."""
    from trainer.eval_results import slice_metrics

    return {name: values for name, values in slice_metrics(evaluation_uri).items()
            if name == "overall" or ("," not in name and name.split("=", 1)[0] in context)}


def slice_view(metrics: Mapping[str, Mapping[str, float]], min_examples: int = 0,
               limit: int | None = None) -> dict[str, Any]:
    """Which slices the page shows: overall, then the `limit` context slices with the
    most examples. A slice with fewer than `min_examples` examples is "small": its
    metrics are noise (an AUC of 0.0 from one example), so the page marks it instead of
    showing them, and the chart leaves it out."""
    context = sorted((n for n in metrics if n != "overall"),
                     key=lambda n: (-_count(metrics[n]), n))
    shown = context if limit is None else context[:limit]
    small = {n for n in context if _count(metrics[n]) < min_examples}
    return {"shown": (["overall"] if "overall" in metrics else []) + shown,
            "small": [n for n in shown if n in small],
            "context_slices": len(context), "small_slices": len(small),
            "min_examples": min_examples, "limit": limit}


def _count(values: Mapping[str, float]) -> float:
    count = values.get("example_count", 0.0)
    return 0.0 if count is None or math.isnan(count) else float(count)


def weights_projection(weights_file: str) -> dict[str, Any] | None:
    """2-D PCA of the generated flat weights, one point per materialized context.

    Read through tf.io.gfile: on a gs:// pipeline root os.path.exists is always False
    and the plot would silently vanish."""
    import tensorflow as tf

    if not tf.io.gfile.exists(weights_file):
        return None
    with tf.io.gfile.GFile(weights_file, "rb") as f:
        data = np.load(io.BytesIO(f.read()))
    names, weights = [str(n) for n in data["names"]], data["weights"].astype(np.float64)
    if len(names) < 2:
        return None
    centered = weights - weights.mean(axis=0)
    _, s, vt = np.linalg.svd(centered, full_matrices=False)
    points = centered @ vt[:2].T
    explained = (s[:2] ** 2 / max(float((s ** 2).sum()), 1e-12)).tolist()
    distance = np.linalg.norm(weights[:, None] - weights[None], axis=-1)
    return {"names": names, "points": points.tolist(), "explained": explained,
            "mean_distance": float(distance.sum() / (len(names) * (len(names) - 1))),
            "mean_norm": float(np.linalg.norm(weights, axis=1).mean())}


# -- plots ---------------------------------------------------------------------------
def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: Mapping[str, Sequence[float]]) -> str | None:
    keys = [k for k in history if not k.startswith("val_") and f"val_{k}" in history]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        epochs = range(1, len(history[key]) + 1)
        ax.plot(epochs, history[key], marker="o", label="train")
        if f"val_{key}" in history:
            ax.plot(epochs, history[f"val_{key}"], marker="o", label="eval")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    return _png(fig)


def plot_slices(metrics: Mapping[str, Mapping[str, float]], metric: str,
                lower_bound: float | None, baseline: float | None, *,
                upper_bound: float | None = None, min_examples: int = 0,
                limit: int | None = None) -> str | None:
    """Bars of the gate metric: overall, then the largest context slices (`slice_view`);
    small slices and missing or NaN values are left out, so a chart of thousands of
    contexts stays a chart."""
    view = slice_view(metrics, min_examples, limit)
    names = charted_slices(metrics, metric, view)
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    values = [float(metrics[n][metric]) for n in names]
    ax.bar(range(len(names)), values, color=["#444" if n == "overall" else "#4a7ab5" for n in names])
    if lower_bound is not None:
        ax.axhline(lower_bound, color="red", linestyle="--", label=f"gate: {metric} ≥ {lower_bound}")
    if upper_bound is not None:
        ax.axhline(upper_bound, color="red", linestyle="--", label=f"gate: {metric} ≤ {upper_bound}")
    if baseline is not None:
        ax.axhline(baseline, color="orange", linestyle=":", label=f"last blessed: {baseline:.4f}")
    labels = [n if n == "overall" else f"{n} ({int(_count(metrics[n])):,})" for n in names]
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right")
    lines = [v for v in (lower_bound, upper_bound, baseline) if v is not None]
    if all(0.0 <= v <= 1.0 for v in [*values, *lines]) and metric in _UNIT_METRICS:
        ax.set_ylim(min([*values, *lines, 1.0]) - 0.05, 1.0)  # AUC, accuracy: up to 1
    else:  # errors: from 0, room above the highest bar or line
        ax.set_ylim(0.0, max([*values, *lines]) * 1.1 or 1.0)
    ax.set_ylabel(metric)
    hidden = view["context_slices"] - (len(view["shown"]) - (1 if "overall" in metrics else 0))
    title = ["context slices with the most examples (their count in parentheses)"]
    if view["small"]:
        title.append(f"left out: {len(view['small']):,} small (< {min_examples:,} examples)")
    if hidden > 0:
        title.append(f"{hidden:,} smaller not shown")
    if view["context_slices"]:
        ax.set_title("; ".join(title), fontsize=9)
    if lines:
        ax.legend(loc="best")
    return _png(fig)


def charted_slices(metrics: Mapping[str, Mapping[str, float]], metric: str,
                   view: Mapping[str, Any]) -> list[str]:
    """The bars: shown slices that are not small and have a finite value."""
    return [n for n in view["shown"] if n not in view["small"] and _finite(metrics[n].get(metric))]


_UNIT_METRICS = ("auc", "binary_accuracy", "sparse_categorical_accuracy", "auc_precision_recall")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_projection(projection: Mapping[str, Any]) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    points = np.array(projection["points"])
    ax.scatter(points[:, 0], points[:, 1], color="#4a7ab5")
    for (x, y), name in zip(points, projection["names"]):
        ax.annotate(name.split("-", 1)[-1], (x, y), fontsize=8, xytext=(3, 3),
                    textcoords="offset points")
    pc = projection["explained"]
    ax.set_xlabel(f"PC1 ({pc[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({pc[1]:.0%})" if len(pc) > 1 else "PC2")
    ax.set_title("generated target weights, one point per context")
    return _png(fig)


# -- HTML ----------------------------------------------------------------------------
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if math.isfinite(v) else "n/a"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metric(values: Mapping[str, float], name: str) -> Any:
    value = values.get(name, "")
    return int(value) if name == "example_count" and value != "" else value


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">' if src else f"<p>(no {alt})</p>"


def _slice_rows(metrics: Mapping[str, Mapping[str, float]], view: Mapping[str, Any],
                columns: Sequence[str]) -> list[list[Any]]:
    """Table rows of the shown slices; a small slice shows its example count and a note."""
    rows = []
    for name in view["shown"]:
        values = metrics[name]
        if name in view["small"]:
            count = int(_count(values))
            rows.append([name, *[_metric(values, c) if c == "example_count" else "–"
                                 for c in columns],
                         f"small: {count:,} example{'s' * (count != 1)} "
                         f"(< {view['min_examples']:,}), too few to judge"])
        else:
            rows.append([name, *[_metric(values, c) for c in columns], ""])
    return rows


def _slice_note(view: Mapping[str, Any]) -> str:
    total = view["context_slices"]
    if not total:
        return ""
    listed = len([n for n in view["shown"] if n != "overall"])
    shown = (f"the {listed:,} with the most examples are shown, {total - listed:,} smaller ones"
             " are not" if listed < total else "all shown")
    return (f"<p>{total:,} context slices: {shown}; {view['small_slices']:,} have fewer than "
            f"{view['min_examples']:,} examples (small: too few to judge). Every slice's "
            "numbers are in the page's embedded data.</p>")


def _gate_text(metric: str, gates: Mapping[str, Any]) -> str:
    higher = _higher_is_better(metric)
    bound = gates.get("lower_bound") if higher else gates.get("upper_bound")
    absolute = f"{'≥' if higher else '≤'} {bound}" if bound is not None else "no absolute bound"
    return (f"gate: {absolute}, at most {gates.get('change_tolerance')} "
            f"{'below' if higher else 'above'} the last blessed model")


def _higher_is_better(metric: str) -> bool:
    from pipeline.configs import GATE_METRICS

    return next((g.higher_is_better for g in GATE_METRICS.values() if g.result_key == metric),
                True)


def _json_safe(value: Any) -> Any:
    """NaN and infinities as null: JSON.parse (the browser's) rejects Python's NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def render(data: Mapping[str, Any]) -> str:
    """The page. `data` is what collect() gathered (also embedded as JSON)."""
    verdict = data["verdict"]
    metric = verdict.get("gate_metric", "auc")
    metrics = data["metrics"]
    view = data.get("slice_view") or slice_view(metrics)
    columns = sorted({k for n in view["shown"] for k in metrics[n]})
    status = "BLESSED" if verdict.get("blessed") else "NOT BLESSED"
    sections = [
        f"<h1>{html.escape(data['pipeline'])}: run {html.escape(data['run'])}</h1>",
        f'<p class="verdict {"ok" if verdict.get("blessed") else "bad"}">'
        f"{status}: {metric} = {verdict.get('value') if verdict.get('value') is None else format(verdict['value'], '.4f')}"
        f" ({html.escape(_gate_text(metric, data['gates']))})</p>",
        "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in verdict.get("reasons", [])) + "</ul>",
        "<h2>Pushed</h2>",
        _table(["what", "path"], [[k, v or "(not pushed)"] for k, v in data["pushed"].items()]),
        "<h2>Data</h2>",
        _table(["split", "rows"], sorted(data["rows"].items())),
        _table(["split", "feature", "anomaly"],
               [[s, f, d] for s, found in sorted(data["anomalies"].items()) for f, d in found.items()]
               or [["all", "-", "no anomalies"]]),
        "<h2>Training</h2>",
        _img(data["plots"].get("history"), "training curves"),
        "<h2>Evaluation (test split)</h2>",
        _table(["slice", *columns, "note"], _slice_rows(metrics, view, columns)),
        _slice_note(view),
        _img(data["plots"].get("slices"), "per-slice chart"),
        "<h2>Generated weights</h2>",
        _img(data["plots"].get("projection"), "weights projection"),
    ]
    projection = data.get("projection")
    if projection:
        sections.append(
            f"<p>{len(projection['names'])} target networks; mean distance between two contexts'"
            f" weights {projection['mean_distance']:.3f} (mean weight-vector norm "
            f"{projection['mean_norm']:.3f}). Nearby points: contexts treated alike.</p>")
    exported = data.get("target_networks") or {}
    if exported.get("selection"):
        total = exported.get("contexts_total")
        sections.append(
            f"<p>Exported: {html.escape(exported['selection'])}"
            f"{f' ({total:,} contexts in all, out-of-vocabulary included)' if total else ''}.</p>")
    payload = json.dumps(_json_safe({k: v for k, v in data.items() if k != "plots"}),
                         allow_nan=False).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(data['pipeline'])} run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.6em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
.verdict{{font-size:1.3em;font-weight:bold}}.ok{{color:#17702a}}.bad{{color:#b3261e}}img{{max-width:100%}}</style>
</head><body>
{chr(10).join(sections)}
<script type="application/json" id="report-data">{payload}</script>
<script>window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
}});</script>
</body></html>
"""
