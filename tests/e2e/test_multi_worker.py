"""Multi-worker training as a user starts it: `python -m pipeline.local_runner --train-workers 2`.

The whole pipeline runs on a small taxi sample; its Trainer's run_fn launches two worker
processes under one TF_CONFIG cluster (trainer/launcher.py), the chief's export is
evaluated, pushed and served. A second check trains one process with the default strategy
through the launcher's worker entry point (`python -m trainer.launcher`) on the pipeline's
own Transform output, and compares its weights with the cluster's: the same steps on the
same global batches.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys
import time

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
from trainer import launcher

pytestmark = pytest.mark.e2e
WORKERS = 2
ROWS = 2000  # ~1,200 train / 400 eval / 400 test rows
# One epoch, one candidate: nothing is chosen between near-equal eval losses, which the
# cluster and the single process could order differently (float summation order).
TRAINING = {"train_steps": 24, "epochs": 1, "eval_steps": 4, "batch_size": 64}
MODEL = {"generator": ["film"], "pooling": [3.0], "shared_l2": [0.0]}
TIMEOUT_S = 1500


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multi_worker")
    data = tmp / "data"
    data.mkdir()
    with open(TAXI_CSV) as src, open(data / "data.csv", "w") as dst:
        for _ in range(ROWS + 1):  # header + ROWS rows
            dst.write(src.readline())
    config_path = write_config(
        str(tmp / "taxi.yaml"), base=configs.DEFAULT_CONFIG, data_root=str(data),
        output_dir=str(tmp), training=TRAINING, model=MODEL,
        gates={"lower_bound": 0.5})  # this test is about launching, not about quality
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.local_runner", "--config", config_path,
         "--train-workers", str(WORKERS)],
        cwd=ROOT, env=pipeline_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    (tmp / "run.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-6000:]
    config = configs.with_workers(configs.load(config_path), WORKERS)
    return {"tmp": tmp, "config": config, "log": done.stdout + done.stderr,
            "seconds": time.monotonic() - started, "arts": run_artifacts(config.metadata_path)}


def test_the_trainer_ran_two_workers_as_one_cluster(launched):
    (model_run,) = launched["arts"]["model_run"]
    cluster = json.loads(open(os.path.join(model_run.uri, launcher.CLUSTER_FILE)).read())
    assert cluster["workers"] == WORKERS
    assert cluster["replicas_in_sync"] == [WORKERS] * WORKERS
    assert cluster["chief"] == [True, False]
    log = launched["log"]
    for index in range(WORKERS):  # each worker's output, in the Trainer's log
        assert f"[worker {index}] " in log
        assert f"worker {index}: {WORKERS} replicas in sync" in log
    history = json.loads(open(os.path.join(model_run.uri, configs.HISTORY_FILE)).read())
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"]).all()


def test_the_chiefs_model_was_evaluated_and_pushed(launched):
    summary = summarize(launched["config"])
    assert summary["blessed"] is True and summary["pushed"] is True
    pushed = glob.glob(os.path.join(launched["config"].serving_model_dir, "*", "saved_model.pb"))
    assert len(pushed) == 1
    # Only the chief wrote into the Trainer's output (no worker's scratch copy).
    (model,) = launched["arts"]["model"]
    assert os.listdir(model.uri) == ["Format-Serving"]
    assert not glob.glob(os.path.join(model.uri, "**", "workertemp_*"), recursive=True)


def test_the_pushed_model_serves(launched):
    rows, _ = read_csv(TAXI_CSV, limit=5)
    _, dtypes = read_csv(TAXI_CSV)
    requests = [{k: v for k, v in r.items() if k != "tips"} for r in rows]
    model_dir = summarize(launched["config"])["pushed_destination"]
    out = load_in_fresh_process(model_dir, [to_example(r, dtypes) for r in requests])
    probabilities = np.array(out["probabilities"])
    assert probabilities.shape == (5, 1)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_two_workers_train_like_one_process_on_the_global_batch(launched):
    """Each worker gets half of every global batch and the gradients are all-reduced, so
    the cluster follows the single-process trajectory (up to float summation order)."""
    tmp, config, arts = launched["tmp"], launched["config"], launched["arts"]
    (examples,) = arts["transformed_examples"]
    (graph,) = arts["transform_graph"]
    single = dataclasses.replace(config, schema_file=None, training=dataclasses.replace(
        config.training, workers=1, distribution="default"))
    spec = {"train_files": [os.path.join(examples.uri, "Split-train", "*")],
            "eval_files": [os.path.join(examples.uri, "Split-eval", "*")],
            "train_steps": config.training.train_steps, "eval_steps": config.training.eval_steps,
            "transform_output": graph.uri, "serving_model_dir": str(tmp / "single" / "model"),
            "model_run_dir": str(tmp / "single" / "run"), "base_model": None,
            "custom_config": configs.serialize(single), "results_dir": str(tmp / "single")}
    (tmp / "single").mkdir()
    (tmp / "single" / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "trainer.launcher",
                           str(tmp / "single" / "spec.json"), "0"],
                          cwd=ROOT, env=pipeline_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((tmp / "single" / "worker-0.json").read_text())["replicas_in_sync"] == 1

    (model,) = arts["model"]
    chief = _hypernetwork_weights(os.path.join(model.uri, "Format-Serving"))
    reference = _hypernetwork_weights(spec["serving_model_dir"])
    assert sorted(chief) == sorted(reference) and len(chief) > 2
    for key in reference:
        np.testing.assert_allclose(chief[key], reference[key], atol=1e-4, rtol=0, err_msg=key)


def _hypernetwork_weights(saved_model: str) -> dict[str, np.ndarray]:
    """The trained variables of an exported model (the hypernetwork's, not the optimizer's
    or the metrics'), by checkpoint key."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(saved_model, "variables", "variables"))
    keys = [k for k in reader.get_variable_to_shape_map()
            if k.startswith("hyper/") and "OPTIMIZER_SLOT" not in k and ".OPTIMIZER" not in k]
    return {k: reader.get_tensor(k) for k in keys}
