"""The run report's HTML and the per-slice regression gate, from plain data."""

import json
import re

import numpy as np
import pytest

from components.report_html import (
    plot_history,
    plot_projection,
    plot_slices,
    render,
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
