"""Beam's portability path, executed: the pipeline's Beam components on a job service.

The test starts Beam's job service (`local_job_service_main`) and a pool of SDK workers
(`worker_pool_main`), then runs the whole pipeline with `--runner=PortableRunner
--environment_type=EXTERNAL`: the protocol and worker set-up the README documents for
Flink and Spark (Job API to a job server; the SDK harness from a worker pool). Every Beam
component (CsvExampleGen, StatisticsGen, Transform, the Evaluator) then submits its job to
that service and its DoFns run in the pool's worker processes, not in the runner's. The
same config on the same rows also runs on the DirectRunner; the artifacts must agree:
rows per split, the schema inferred from the statistics, the transform graph's output on
the same raw examples, the Evaluator's example counts per slice.
"""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys
import time

import pytest

from pipeline import configs
from pipeline.pipeline import TRAINER_SPLITS
from pipeline.summary import run_artifacts
from tests.support import ROOT, TAXI_CSV, pipeline_env, read_csv, to_example, write_config

pytestmark = pytest.mark.e2e
ROWS = 1500
TRAINING = {"train_steps": 60, "epochs": 1, "eval_steps": 5}
MODEL = {"generator": ["film"], "pooling": [3.0], "shared_l2": [0.0]}
BEAM_COMPONENTS = ("CsvExampleGen", "StatisticsGen", "Transform", "Evaluator")
SPLITS = ("train", "eval", "test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited {process.returncode}:\n{open(log).read()[-4000:]}")
        with socket.socket() as s:
            if s.connect_ex(("localhost", port)) == 0:
                return
        time.sleep(1)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s:\n{open(log).read()[-4000:]}")


def server_env() -> dict[str, str]:
    """The pipeline's environment (Keras 2, the project on PYTHONPATH for our preprocessing_fn)
    with this venv first on PATH: the worker pool starts each SDK worker as `python -c ...`
    from PATH (Beam 2.61, worker_pool_main.StartWorker), not as sys.executable."""
    bin_dir = os.path.dirname(sys.executable)
    return pipeline_env(PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """A Beam job service and an SDK worker pool, terminated (with their workers) at the end."""
    tmp = tmp_path_factory.mktemp("beam_services")
    job_port, pool_port = free_port(), free_port()
    started = []
    try:
        for name, module, flag, port in (
                ("job_service", "apache_beam.runners.portability.local_job_service_main",
                 "--port", job_port),
                ("worker_pool", "apache_beam.runners.worker.worker_pool_main",
                 "--service_port", pool_port)):
            log = str(tmp / f"{name}.log")
            process = subprocess.Popen(
                [sys.executable, "-m", module, f"{flag}={port}"], cwd=str(tmp), env=server_env(),
                stdout=open(log, "w"), stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: the workers it starts too
            started.append(process)
            wait_for_port(port, process, log)
        yield {"job_port": job_port, "pool_port": pool_port,
               "job_log": str(tmp / "job_service.log"), "pool_log": str(tmp / "worker_pool.log")}
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, 15)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()


def _run(config_path: str, beam_args: list[str], log: str) -> float:
    start = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", "pipeline.local_runner", "--config",
                               config_path, *[f"--beam_arg={a}" for a in beam_args]],
                              cwd=ROOT, env=server_env(), stdout=out, stderr=subprocess.STDOUT,
                              timeout=2400)
    assert done.returncode == 0, open(log).read()[-6000:]
    return time.monotonic() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory, beam_services):
    tmp = tmp_path_factory.mktemp("portable")
    data = tmp / "data"
    data.mkdir()
    with open(TAXI_CSV) as src, open(data / "data.csv", "w") as dst:
        for _ in range(ROWS + 1):
            dst.write(src.readline())
    out = {}
    # schema_file: None: SchemaGen infers the schema from each run's (Beam-made) statistics.
    for name, beam_args in (
            ("portable", ["--runner=PortableRunner",
                          f"--job_endpoint=localhost:{beam_services['job_port']}",
                          "--environment_type=EXTERNAL",
                          f"--environment_config=localhost:{beam_services['pool_port']}"]),
            ("direct", [])):
        path = write_config(str(tmp / f"{name}.yaml"), base=configs.DEFAULT_CONFIG,
                            data_root=str(data), output_dir=str(tmp / name), schema_file=None,
                            training=TRAINING, model=MODEL)
        seconds = _run(path, beam_args, str(tmp / f"{name}.log"))
        config = configs.load(path)
        out[name] = {"config": config, "seconds": seconds, "log": str(tmp / f"{name}.log"),
                     "artifacts": run_artifacts(config.metadata_path)}
    return out


def _uri(run: dict, key: str) -> str:
    (artifact,) = run["artifacts"][key]
    return artifact.uri


def _count(uri: str, split: str) -> int:
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*")))
    return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def test_the_beam_components_ran_as_jobs_on_the_job_service(runs, beam_services):
    with open(beam_services["job_log"]) as f:
        jobs = f.read()
    with open(runs["portable"]["log"]) as f:
        log = f.read()
    # One Beam job per Beam component (Transform: analysis and materialization in one),
    # each completed by the job service, on workers the pool started.
    completed = jobs.count("with state DONE")
    assert completed >= len(BEAM_COMPONENTS), jobs[-4000:]
    assert "FAILED" not in jobs
    for component in BEAM_COMPONENTS:
        assert f"Component {component} is finished" in log
    with open(beam_services["pool_log"]) as f:
        assert "Starting worker" in f.read()


def test_rows_per_split_match_the_direct_runner(runs):
    portable, direct = (_uri(runs[n], "examples") for n in ("portable", "direct"))
    counts = {s: _count(portable, s) for s in SPLITS}
    assert counts == {s: _count(direct, s) for s in SPLITS}
    assert sum(counts.values()) == ROWS
    # Transform's materialized examples too (the Trainer's splits: it writes no test).
    portable, direct = (_uri(runs[n], "transformed_examples") for n in ("portable", "direct"))
    trained = {s: counts[s] for s in TRAINER_SPLITS}
    assert {s: _count(portable, s) for s in TRAINER_SPLITS} == trained == {
        s: _count(direct, s) for s in TRAINER_SPLITS}
    assert not os.path.exists(os.path.join(portable, "Split-test"))


def test_statistics_and_inferred_schema_match_the_direct_runner(runs):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx.utils import io_utils

    schemas = []
    for name in ("portable", "direct"):
        folder = _uri(runs[name], "schema")
        schemas.append(io_utils.parse_pbtxt_file(os.path.join(folder, "schema.pbtxt"),
                                                 schema_pb2.Schema()))
    assert schemas[0] == schemas[1]
    assert len(schemas[0].feature) > 10
    for split in SPLITS:
        stats = [tfdv.load_stats_binary(os.path.join(_uri(runs[n], "statistics"),
                                                     f"Split-{split}", "FeatureStats.pb"))
                 for n in ("portable", "direct")]
        assert stats[0].datasets[0].num_examples == stats[1].datasets[0].num_examples
        features = [{f.path.step[0]: f for f in s.datasets[0].features} for s in stats]
        assert set(features[0]) == set(features[1])


def test_transform_graphs_give_the_same_output_on_the_same_rows(runs):
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    rows, dtypes = read_csv(TAXI_CSV, limit=50)
    raw = tf.constant([to_example(r, dtypes) for r in rows])
    outputs = []
    for name in ("portable", "direct"):
        graph = tft.TFTransformOutput(_uri(runs[name], "transform_graph"))
        features = tf.io.parse_example(raw, graph.raw_feature_spec())
        outputs.append(graph.transform_raw_features(features))
    assert set(outputs[0]) == set(outputs[1]) and outputs[0]
    for key, value in outputs[0].items():
        other = outputs[1][key]
        if isinstance(value, tf.SparseTensor):
            value, other = tf.sparse.to_dense(value), tf.sparse.to_dense(other)
        value, other = value.numpy(), other.numpy()
        if value.dtype.kind == "f":
            np.testing.assert_allclose(value, other, rtol=1e-6, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(value, other, err_msg=key)


def test_evaluator_counted_the_same_examples_per_slice(runs):
    from trainer.eval_results import slice_metrics

    metrics = [slice_metrics(_uri(runs[n], "evaluation")) for n in ("portable", "direct")]
    assert set(metrics[0]) == set(metrics[1]) and "overall" in metrics[0]
    for name, values in metrics[0].items():
        assert values["example_count"] == metrics[1][name]["example_count"], name
    assert metrics[0]["overall"]["example_count"] == _count(
        _uri(runs["direct"], "examples"), "test")
