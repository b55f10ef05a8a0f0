"""Multi-worker training: two local processes run the Trainer's code under one TF_CONFIG cluster.

Each worker calls `trainer.task.train_and_export` (what `run_fn` runs) with the same
FnArgs, as a distributed TFX Trainer would, on Transform output of real taxi rows.
A single process with the default strategy trains the same steps on the same global
batches as the reference. Run as a script, this module is one of those processes:
    python -m tests.e2e.test_multi_worker SPEC.json TAG
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

from tests.support import ROOT, TAXI_CSV, pipeline_env

pytestmark = pytest.mark.e2e
WORKERS = 2
TIMEOUT_S = 900


def worker_main(spec_path: str, tag: str) -> None:
    """One worker: train and export like run_fn, then record its final weights."""
    with open(spec_path) as f:
        spec = json.load(f)
    from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
    from tfx_bsl.public import tfxio

    from trainer import task

    def dataset_factory(file_pattern, options, schema):
        # What the Trainer's DataAccessor does for tf.Example payloads.
        return tfxio.TFExampleRecord(file_pattern=file_pattern, schema=schema) \
            .TensorFlowDataset(options)

    fn_args = FnArgs(
        train_files=[spec["train"]], eval_files=[spec["eval"]],
        transform_output=spec["transform_output"], serving_model_dir=spec["serving_model_dir"],
        model_run_dir=spec["model_run_dir"], base_model=None, custom_config=spec["custom_config"],
        data_accessor=DataAccessor(tf_dataset_factory=dataset_factory,
                                   record_batch_factory=None, data_view_decode_fn=None))
    model = task.train_and_export(fn_args)
    weights = model.hyper.get_weights()  # context encoder + weight generator: all that trains
    np.savez(os.path.join(spec["out"], f"{tag}.npz"),
             **{f"w{i:03d}": w for i, w in enumerate(weights)})
    strategy = model.distribute_strategy
    with open(os.path.join(spec["out"], f"{tag}.json"), "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync, "chief": task.is_chief(strategy),
                   "names": [v.name for v in model.hyper.weights]}, f)


def _write_transformed(tft_output, rows, dtypes, path: str) -> int:
    """Transform raw rows with the Transform graph and write them as gzipped tf.Examples."""
    import tensorflow as tf

    from tests.support import to_example

    serialized = tf.constant([to_example(r, dtypes) for r in rows])
    raw = tf.io.parse_example(serialized, tft_output.raw_feature_spec())
    out = tft_output.transform_raw_features(raw)
    spec = tft_output.transformed_feature_spec()
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for i in range(len(rows)):
            example = tf.train.Example()
            for key, feature_spec in spec.items():
                value = out[key]
                if isinstance(value, tf.SparseTensor):
                    value = tf.sparse.to_dense(value)
                v = np.reshape(value[i].numpy(), [-1]).tolist()
                feature = example.features.feature[key]
                if feature_spec.dtype == tf.string:
                    feature.bytes_list.value.extend(v)
                elif feature_spec.dtype == tf.int64:
                    feature.int64_list.value.extend(int(x) for x in v)
                else:
                    feature.float_list.value.extend(float(x) for x in v)
            writer.write(example.SerializeToString())
    return len(rows)


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    import portpicker

    from pipeline import configs
    from tests.support import read_csv, run_transform

    tmp = tmp_path_factory.mktemp("multi_worker")
    base = configs.load(configs.DEFAULT_CONFIG)
    # No quantile buckets: tests.support's in-process Transform (instance dicts on Beam's
    # in-memory runner) cannot run tft.bucketize's analyzer.
    # One candidate model: two near-equal eval losses could otherwise pick different ones
    # in the cluster and the single process (float summation order differs).
    config = dataclasses.replace(
        base, features=dataclasses.replace(base.features, bucketized=()),
        model=dataclasses.replace(base.model, generator=("film",), pooling=(10.0,)),
        training=dataclasses.replace(base.training, train_steps=12, epochs=2, eval_steps=2,
                                     batch_size=32, distribution="multi_worker_mirrored"))
    rows, dtypes = read_csv(TAXI_CSV, limit=800)
    tft_output = run_transform(config, rows, dtypes, str(tmp / "transform"))
    (tmp / "data").mkdir()
    _write_transformed(tft_output, rows[:600], dtypes, str(tmp / "data" / "train.gz"))
    _write_transformed(tft_output, rows[600:], dtypes, str(tmp / "data" / "eval.gz"))
    spec = {
        "train": str(tmp / "data" / "train.gz"), "eval": str(tmp / "data" / "eval.gz"),
        "transform_output": str(tmp / "transform"),
        "serving_model_dir": str(tmp / "model" / "Format-Serving"),
        "model_run_dir": str(tmp / "model_run"), "out": str(tmp),
        "custom_config": configs.serialize(dataclasses.replace(config, schema_file=None)),
    }
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))

    addresses = [f"127.0.0.1:{portpicker.pick_unused_port()}" for _ in range(WORKERS)]
    procs = []
    start = time.monotonic()
    for index in range(WORKERS):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        log = open(tmp / f"worker{index}.log", "w")
        procs.append((subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.test_multi_worker", str(spec_path), f"worker{index}"],
            cwd=ROOT, env=pipeline_env(TF_CONFIG=json.dumps(tf_config)),
            stdout=log, stderr=subprocess.STDOUT), log))
    codes = []
    try:
        for proc, _ in procs:
            codes.append(proc.wait(timeout=max(1, TIMEOUT_S - (time.monotonic() - start))))
    finally:
        for proc, log in procs:
            if proc.poll() is None:  # a worker waiting forever on a dead peer
                proc.kill()
                proc.wait()
            log.close()
    logs = [(tmp / f"worker{i}.log").read_text() for i in range(WORKERS)]
    seconds = time.monotonic() - start

    # The reference: one process, default strategy, same config otherwise.
    single = {**spec, "serving_model_dir": str(tmp / "single" / "model"),
              "model_run_dir": str(tmp / "single" / "run"),
              "custom_config": {**spec["custom_config"], "training": {
                  **spec["custom_config"]["training"], "distribution": "default"}}}
    (tmp / "single_spec.json").write_text(json.dumps(single))
    reference = subprocess.run(
        [sys.executable, "-m", "tests.e2e.test_multi_worker", str(tmp / "single_spec.json"), "single"],
        cwd=ROOT, env=pipeline_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    return {"tmp": tmp, "spec": spec, "codes": codes, "logs": logs, "seconds": seconds,
            "reference": reference}


def test_both_workers_exit_cleanly(cluster_run):
    for index, (code, log) in enumerate(zip(cluster_run["codes"], cluster_run["logs"])):
        assert code == 0, f"worker {index} exited {code}:\n{log[-4000:]}"


def test_workers_trained_as_one_cluster(cluster_run):
    info = [json.loads((cluster_run["tmp"] / f"worker{i}.json").read_text())
            for i in range(WORKERS)]
    assert [i["replicas"] for i in info] == [WORKERS] * WORKERS
    assert [i["chief"] for i in info] == [True, False]


def test_workers_end_with_identical_weights(cluster_run):
    a, b = (np.load(cluster_run["tmp"] / f"worker{i}.npz") for i in range(WORKERS))
    assert sorted(a.files) == sorted(b.files) and len(a.files) > 2
    for key in a.files:
        np.testing.assert_allclose(a[key], b[key], atol=1e-6, rtol=0, err_msg=key)


def test_two_workers_train_like_one_process_on_the_global_batch(cluster_run):
    """Each worker gets half of every global batch and the gradients are all-reduced, so
    the cluster follows the single-process trajectory (up to float summation order)."""
    reference = cluster_run["reference"]
    assert reference.returncode == 0, reference.stderr[-4000:]
    assert json.loads((cluster_run["tmp"] / "single.json").read_text())["replicas"] == 1
    single, chief = (np.load(cluster_run["tmp"] / f"{t}.npz") for t in ("single", "worker0"))
    assert sorted(single.files) == sorted(chief.files)
    for key in single.files:
        np.testing.assert_allclose(chief[key], single[key], atol=1e-4, rtol=0, err_msg=key)


def test_only_the_chief_exported(cluster_run):
    spec = cluster_run["spec"]
    assert os.path.exists(os.path.join(spec["serving_model_dir"], "saved_model.pb"))
    history = json.loads(open(os.path.join(spec["model_run_dir"], "history.json")).read())
    assert len(history["loss"]) >= 1 and all(np.isfinite(history["loss"]))
    # The other worker's scratch copies are gone (its own temp dir and Keras' workertemp_1).
    assert not glob.glob(os.path.join(spec["model_run_dir"], "**", "workertemp_*"), recursive=True)
    assert sorted(os.listdir(os.path.dirname(spec["serving_model_dir"]))) == ["Format-Serving"]


def test_the_exported_model_serves(cluster_run):
    from tests.support import load_in_fresh_process, read_csv, to_example

    rows, _ = read_csv(TAXI_CSV, limit=5)
    _, dtypes = read_csv(TAXI_CSV)
    serving = [{k: v for k, v in r.items() if k not in ("tips",)} for r in rows]
    out = load_in_fresh_process(cluster_run["spec"]["serving_model_dir"],
                                [to_example(r, dtypes) for r in serving])
    probabilities = np.array(out["probabilities"])
    assert probabilities.shape == (5, 1)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


if __name__ == "__main__":
    worker_main(sys.argv[1], sys.argv[2])
