"""The main job end to end: the taxi pipeline through the TFX CLI, as `make run` does it."""

import glob
import os
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

EXPECTED_ARTIFACTS = {
    "Examples", "ExampleStatistics", "Schema", "ExampleAnomalies", "TransformGraph",
    "Model", "ModelRun", "ModelEvaluation", "ModelBlessing", "PushedModel",
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
    assert overall["example_count"] > 4000
    assert {"payment_type", "company"} <= {k.split("=")[0] for k in summary["metrics"] if k != "overall"}
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
