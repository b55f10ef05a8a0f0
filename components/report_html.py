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


def weights_projection(weights_file: str) -> dict[str, Any] | None:
    """2-D PCA of the generated flat weights, one point per materialized context."""
    if not os.path.exists(weights_file):
        return None
    data = np.load(weights_file)
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
    keys = [k for k in history if not k.startswith("val_")]
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
                lower_bound: float | None, baseline: float | None) -> str | None:
    names = [n for n in metrics if metric in metrics[n]]
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(names) + 2), 3.6))
    values = [metrics[n][metric] for n in names]
    ax.bar(range(len(names)), values, color=["#444" if n == "overall" else "#4a7ab5" for n in names])
    if lower_bound is not None:
        ax.axhline(lower_bound, color="red", linestyle="--", label=f"gate: {metric} ≥ {lower_bound}")
    if baseline is not None:
        ax.axhline(baseline, color="orange", linestyle=":", label=f"last blessed: {baseline:.4f}")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylim(min([*values, lower_bound or 1.0, baseline or 1.0]) - 0.05, 1.0)
    ax.set_ylabel(metric)
    ax.legend(loc="lower right")
    return _png(fig)


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
        return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _metric(values: Mapping[str, float], name: str) -> Any:
    value = values.get(name, "")
    return int(value) if name == "example_count" and value != "" else value


def _img(src: str | None, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">' if src else f"<p>(no {alt})</p>"


def render(data: Mapping[str, Any]) -> str:
    """The page. `data` is what collect() gathered (also embedded as JSON)."""
    verdict = data["verdict"]
    metric = verdict.get("gate_metric", "auc")
    metrics = data["metrics"]
    columns = sorted({k for m in metrics.values() for k in m})
    status = "BLESSED" if verdict.get("blessed") else "NOT BLESSED"
    sections = [
        f"<h1>{html.escape(data['pipeline'])}: run {html.escape(data['run'])}</h1>",
        f'<p class="verdict {"ok" if verdict.get("blessed") else "bad"}">'
        f"{status}: {metric} = {verdict.get('value') if verdict.get('value') is None else format(verdict['value'], '.4f')}"
        f" (gate: ≥ {data['gates']['lower_bound']}, at most {data['gates']['change_tolerance']}"
        " below the last blessed model)</p>",
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
        "<h2>Evaluation (eval split)</h2>",
        _table(["slice", *columns], [[n, *[_metric(m, c) for c in columns]] for n, m in metrics.items()]),
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
    payload = json.dumps({k: v for k, v in data.items() if k != "plots"}).replace("</", "<\\/")
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
