"""The main job end to end: the taxi pipeline through the TFX CLI, as `make run` does it."""

import glob
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from pipeline import configs
from pipeline.summary import run_artifacts, summarize
from tests.support import (
    ROOT,
    TAXI_CSV,
    load_in_fresh_process,
    pipeline_env,
    read_csv,
    to_example,
    write_config,
)

pytestmark = pytest.mark.e2e

# Output keys of every component's artifacts in ML Metadata.
EXPECTED_ARTIFACTS = {
    "examples", "statistics", "schema", "anomalies", "transform_graph", "transformed_examples",
    "model", "model_run", "evaluation", "blessing", "deployment_blessing", "pushed_model",
    "target_networks", "pushed_target_networks",
}


@pytest.fixture(scope="module")
def taxi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("taxi")
    config_path = write_config(
        str(tmp / "taxi.yaml"), base=configs.DEFAULT_CONFIG, output_dir=str(tmp),
        training={"train_steps": 300, "epochs": 3, "eval_steps": 20})
    env = pipeline_env(HYPERNET_CONFIG=config_path, LOCAL_HOME=str(tmp / "cli"))
    tfx = os.path.join(os.path.dirname(os.sys.executable), "tfx")
    for args in (["pipeline", "create", "--engine", "local", "--pipeline_path",
                  "pipeline/local_runner.py"],
                 ["run", "create", "--engine", "local", "--pipeline_name", "hypernet-taxi"]):
        done = subprocess.run([tfx, *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]
    os.environ["HYPERNET_CONFIG"] = config_path
    try:
        config = configs.load(config_path)
    finally:
        del os.environ["HYPERNET_CONFIG"]
    return config


def test_every_component_recorded_its_artifacts(taxi_run):
    arts = run_artifacts(taxi_run.metadata_path)
    assert EXPECTED_ARTIFACTS <= set(arts), sorted(EXPECTED_ARTIFACTS - set(arts))
    for name in EXPECTED_ARTIFACTS:
        for art in arts[name]:
            assert os.path.exists(art.uri), (name, art.uri)


def test_model_is_blessed_and_pushed_with_its_metrics(taxi_run):
    summary = summarize(taxi_run)
    assert summary["blessed"] is True and summary["pushed"] is True
    overall = summary["metrics"]["overall"]
    assert overall["auc"] >= taxi_run.gates.lower_bound
    # The gate read the test split (3:1:1 of 15,002 rows), never eval.
    assert overall["example_count"] == len(split_examples(taxi_run, "test")) > 2500
    assert set(taxi_run.context) <= {k.split("=")[0] for k in summary["metrics"] if k != "overall"}
    pushed = glob.glob(os.path.join(taxi_run.serving_model_dir, "*", "saved_model.pb"))
    assert len(pushed) == 1 and summary["pushed_destination"] == os.path.dirname(pushed[0])


def test_pushed_model_serves_raw_examples_in_a_fresh_process(taxi_run):
    rows, dtypes = read_csv(TAXI_CSV, limit=20)
    requests = [{k: v for k, v in r.items() if k != "tips"} for r in rows]
    requests.append(dict(requests[0], company="A Taxi Company Never Seen Before"))
    requests.append({"payment_type": "Cash", "fare": "8.25"})  # optional fields missing
    model_dir = glob.glob(os.path.join(taxi_run.serving_model_dir, "*"))[0]
    out = load_in_fresh_process(model_dir, [to_example(r, dtypes) for r in requests])
    p = np.array(out["probabilities"])
    assert p.shape == (len(requests), 1)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))


def split_examples(taxi_run, split: str) -> list[bytes]:
    import tensorflow as tf

    (examples,) = run_artifacts(taxi_run.metadata_path)["examples"]
    files = glob.glob(os.path.join(examples.uri, f"Split-{split}", "*.gz"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_target_networks_are_pushed_next_to_the_model_under_its_version(taxi_run):
    summary = summarize(taxi_run)
    version = os.path.basename(summary["pushed_destination"])
    assert summary["target_networks_destination"] == os.path.join(
        taxi_run.serving_target_networks_dir, version)
    with open(os.path.join(summary["target_networks_destination"], "manifest.json")) as f:
        manifest = json.load(f)
    vocabulary = {n["context"]["payment_type"] for n in manifest["networks"]}
    assert {"Cash", "Credit Card", "<out-of-vocabulary>"} <= vocabulary
    for network in manifest["networks"]:
        path = os.path.join(summary["target_networks_destination"], network["path"])
        assert os.path.exists(os.path.join(path, "saved_model.pb")), path
        assert network["num_params"] == manifest["networks"][0]["num_params"] > 1000
    by_value = {n["context"]["payment_type"]: n for n in manifest["networks"]}
    for value in ("Cash", "Credit Card"):  # the evaluator's slice metrics, copied
        assert by_value[value]["metrics"]["auc"] == pytest.approx(
            summary["metrics"][f"payment_type={value}"]["auc"])


def test_every_test_example_gets_the_same_output_from_its_target_network(taxi_run):
    import tensorflow as tf

    summary = summarize(taxi_run)
    with open(os.path.join(summary["target_networks_destination"], "manifest.json")) as f:
        manifest = json.load(f)
    serialized = tf.constant(split_examples(taxi_run, "test"))
    assert serialized.shape[0] > 2500
    hyper = tf.saved_model.load(summary["pushed_destination"])
    expected = hyper.signatures["serving_default"](examples=serialized)["probabilities"].numpy()
    context_ids = hyper.signatures["transform_features"](
        examples=serialized)["payment_type_xf"].numpy().reshape(-1)
    covered = 0
    for network in manifest["networks"]:
        rows = np.flatnonzero(context_ids == int(network["model_input"]["payment_type"]))
        if not len(rows):
            continue
        target = tf.saved_model.load(os.path.join(summary["target_networks_destination"],
                                                  network["path"]))
        got = target.signatures["serving_default"](examples=tf.gather(serialized, rows))
        np.testing.assert_allclose(got["probabilities"].numpy(), expected[rows], atol=1e-5,
                                   err_msg=network["path"])
        covered += len(rows)
    assert covered == len(expected)  # every example had a network for its context


def test_report_shows_the_runs_numbers(taxi_run):
    import tensorflow_data_validation as tfdv

    summary = summarize(taxi_run)
    assert summary["report"] == os.path.join(taxi_run.pipeline_root, "report.html")
    page = open(summary["report"]).read()
    data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
    # Numbers in the page equal TFMA's and StatisticsGen's.
    overall = summary["metrics"]["overall"]
    assert data["metrics"]["overall"]["auc"] == pytest.approx(overall["auc"])
    assert f"<td>overall</td><td>{overall['auc']:.4f}</td>" in page  # first column: auc
    (statistics,) = run_artifacts(taxi_run.metadata_path)["statistics"]
    for split in ("train", "eval", "test"):
        stats = tfdv.load_stats_binary(os.path.join(statistics.uri, f"Split-{split}",
                                                    "FeatureStats.pb"))
        count = stats.datasets[0].num_examples
        assert data["rows"][split] == count and f"<td>{split}</td><td>{count}</td>" in page
    assert "BLESSED: auc" in page and summary["pushed_destination"] in page
    assert summary["target_networks_destination"] in page
    assert len(data["history"]["loss"]) >= 1
    assert page.count('<img src="data:image/png;base64,') == 3
    assert len(data["projection"]["names"]) == len(data["projection"]["points"]) >= 3


def test_report_renders_in_headless_chromium(taxi_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed (make test installs it: make chromium)"
    url = "file://" + os.path.join(taxi_run.pipeline_root, "report.html")
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    shot = tmp_path / "report.png"
    done = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2400", url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-loaded="3/3"' in dom.stdout  # every plot decoded
    assert "Uncaught" not in dom.stderr and "ERROR:CONSOLE" not in dom.stderr
