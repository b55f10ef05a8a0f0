"""The run report's HTML and the per-slice regression gate, from plain data."""

import base64
import json
import re
import struct
import time

import numpy as np
import pytest

from components.report_html import (
    charted_slices,
    plot_history,
    plot_projection,
    plot_slices,
    render,
    slice_view,
    weights_projection,
)
from components.verdict import slice_regressions

METRICS = {
    "overall": {"auc": 0.9431, "example_count": 4966.0},
    "payment_type=Cash": {"auc": 0.7012, "example_count": 1900.0},
    "payment_type=Credit Card": {"auc": 0.9123, "example_count": 2800.0},
}


def test_slice_gate_flags_only_large_slices_that_fell_beyond_tolerance():
    candidate = {
        "overall": {"auc": 0.94, "example_count": 5000, "mean_label": 0.4},
        "payment_type=Cash": {"auc": 0.80, "example_count": 1900, "mean_label": 0.2},
        "payment_type=Credit Card": {"auc": 0.90, "example_count": 2800, "mean_label": 0.6},
        "payment_type=Dispute": {"auc": 0.10, "example_count": 12, "mean_label": 0.5},
        "payment_type=No Charge": {"auc": 0.10, "example_count": 900, "mean_label": 0.001},
    }
    baseline = {name: dict(values, auc=0.95) for name, values in candidate.items()}
    baseline["payment_type=Credit Card"]["auc"] = 0.92  # fell 0.02: within 0.03
    failures = slice_regressions(candidate, baseline, "auc", tolerance=0.03, min_examples=200)
    assert len(failures) == 1 and failures[0].startswith("payment_type=Cash: auc = 0.8000 vs 0.9500")
    assert "1900 examples" in failures[0]
    # Lower is better (regression metrics): a rise is the regression.
    assert slice_regressions({"s": {"mse": 2.0, "example_count": 500}}, {"s": {"mse": 1.0}},
                             "mse", 0.5, 200, higher_is_better=False)


def test_page_holds_the_numbers_the_plots_and_the_data(tmp_path):
    history = {"loss": [0.5, 0.4], "val_loss": [0.45, 0.42], "auc": [0.9, 0.93], "val_auc": [0.91, 0.92]}
    weights = np.random.default_rng(0).normal(size=(4, 50))
    np.savez(tmp_path / "w.npz", names=np.array(["000-a", "001-b", "002-c", "003-d"]), weights=weights)
    projection = weights_projection(str(tmp_path / "w.npz"))
    data = {
        "pipeline": "hypernet-taxi", "run": "2026-11-27T04:00:00Z",
        "rows": {"train": 10036, "eval": 4966}, "anomalies": {"train": {}, "eval": {"fare": "Unexpected"}},
        "history": history, "metrics": METRICS,
        "gates": {"metric": "auc", "lower_bound": 0.9, "change_tolerance": 0.01},
        "verdict": {"blessed": True, "gate_metric": "auc", "value": 0.9431, "reasons": []},
        "pushed": {"hypernetwork": "/srv/models/17", "target networks": None},
        "projection": projection,
        "plots": {"history": plot_history(history), "slices": plot_slices(METRICS, "auc", 0.9, 0.93),
                  "projection": plot_projection(projection)},
    }
    page = render(data)
    assert "BLESSED: auc = 0.9431" in page and "/srv/models/17" in page and "(not pushed)" in page
    assert "<td>overall</td><td>0.9431</td>" in page and "<td>eval</td><td>4966</td>" in page
    assert "<td>eval</td><td>fare</td><td>Unexpected</td>" in page
    assert page.count('src="data:image/png;base64,') == 3
    embedded = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    assert embedded["metrics"] == METRICS and "plots" not in embedded
    assert projection["points"] and len(projection["points"][0]) == 2
    assert projection["explained"][0] >= projection["explained"][1] > 0
    assert projection["mean_distance"] == pytest.approx(
        np.mean([np.linalg.norm(weights[i] - weights[j]) for i in range(4) for j in range(4) if i != j]))


def _png_size(src: str) -> tuple[int, int]:
    png = base64.b64decode(src.split(",", 1)[1])
    return struct.unpack(">II", png[16:24])  # IHDR: width, height


def _page(metrics, view, plot):
    return render({
        "pipeline": "p", "run": "r", "rows": {}, "anomalies": {}, "history": {},
        "metrics": metrics, "slice_view": view,
        "gates": {"metric": "auc", "lower_bound": None, "change_tolerance": 0.01},
        "verdict": {"blessed": True, "gate_metric": "auc", "value": 0.9, "reasons": []},
        "pushed": {}, "projection": None, "plots": {"slices": plot}})


def test_small_slices_are_marked_not_shown_as_auc_zero_or_nan():
    metrics = {**METRICS,
               "payment_type=Dispute": {"auc": 0.0, "example_count": 1.0},
               "payment_type=No Charge": {"auc": float("nan"), "example_count": 12.0},
               "payment_type=Unknown": {"auc": 0.81, "example_count": 250.0}}
    view = slice_view(metrics, min_examples=200, limit=20)
    assert view["shown"] == ["overall", "payment_type=Credit Card", "payment_type=Cash",
                             "payment_type=Unknown", "payment_type=No Charge",
                             "payment_type=Dispute"]  # by example count
    assert view["small"] == ["payment_type=No Charge", "payment_type=Dispute"]
    assert view["small_slices"] == 2 and view["context_slices"] == 5
    plot = plot_slices(metrics, "auc", None, None, min_examples=200, limit=20)
    page = _page(metrics, view, plot)
    dispute = re.search(r"<tr><td>payment_type=Dispute</td>(.*?)</tr>", page)[1]
    assert "0.0000" not in dispute and "small: 1 example (&lt; 200), too few to judge" in dispute
    assert "<td>1</td>" in dispute  # the example count is still shown
    no_charge = re.search(r"<tr><td>payment_type=No Charge</td>(.*?)</tr>", page)[1]
    assert "nan" not in no_charge.lower() and "small: 12 examples" in no_charge
    assert "<tr><td>payment_type=Unknown</td><td>0.8100</td><td>250</td><td></td></tr>" in page
    assert "2 have fewer than 200 examples" in page
    # The page's data is strict JSON (a browser's JSON.parse rejects NaN): NaN became null.
    raw = re.search(r'id="report-data">(.*?)</script>', page, re.S)[1]
    embedded = json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in the page's JSON"))
    assert embedded["metrics"]["payment_type=No Charge"]["auc"] is None
    # The chart: overall + the 3 large slices, not the small ones.
    assert plot is not None and charted_slices(metrics, "auc", view) == view["shown"][:4]
    assert "payment_type=No Charge" not in charted_slices(metrics, "auc", slice_view(metrics))


def test_thousands_of_context_slices_chart_and_list_only_the_largest():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 190, size=2410)
    metrics = {"overall": {"mean_squared_error": 5.5, "example_count": float(counts.sum())}}
    metrics.update({f"school={i}": {"mean_squared_error": float(rng.uniform(2, 9)),
                                    "example_count": float(c)} for i, c in enumerate(counts)})
    view = slice_view(metrics, min_examples=50, limit=20)
    largest = sorted(range(2410), key=lambda i: (-counts[i], f"school={i}"))[:20]
    assert view["shown"] == ["overall", *(f"school={i}" for i in largest)]
    assert view["small_slices"] == int((counts < 50).sum()) and view["context_slices"] == 2410
    start = time.time()
    plot = plot_slices(metrics, "mean_squared_error", None, 5.0, upper_bound=8.0,
                       min_examples=50, limit=20)
    assert time.time() - start < 10
    width, height = _png_size(plot)
    assert width < 2500 and height < 800  # 21 bars, not 2,411
    assert len(charted_slices(metrics, "mean_squared_error", view)) == 1 + 20
    page = _page(metrics, view, plot)
    assert page.count("<tr><td>school=") == 20
    assert "2,410 context slices: the 20 with the most examples are shown, 2,390 smaller" in page
    assert len(json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])[
        "metrics"]) == 2411  # all of them in the data


def test_gate_line_points_the_metric_s_way():
    base = {"pipeline": "p", "run": "r", "rows": {}, "anomalies": {}, "history": {},
            "metrics": {"overall": {"mean_squared_error": 5.5, "example_count": 100.0}},
            "pushed": {}, "projection": None, "plots": {},
            "gates": {"metric": "mean_squared_error", "lower_bound": None, "upper_bound": None,
                      "change_tolerance": 0.01},
            "verdict": {"blessed": True, "gate_metric": "mean_squared_error", "value": 5.5}}
    assert ("gate: no absolute bound, at most 0.01 above the last blessed model"
            in render(base))
    base["gates"]["upper_bound"] = 8.0
    assert "gate: ≤ 8.0, at most 0.01 above" in render(base)
