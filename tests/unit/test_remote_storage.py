"""Our components' executors, the target-network export and data_root on a non-local filesystem.

TensorFlow's in-process ram:// filesystem stands in for gs://: only code that goes
through tf.io.gfile (or TensorFlow's own file ops) can read or write it, so an open(),
os.path.exists, os.walk or numpy file call left in a component fails here. Inputs are
a small real run made on local disk (the Transform and the exported model of the unit
fixtures, TFX's Evaluator executor on 400 taxi rows), copied into ram://.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import uuid

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2
from tfx.dsl.components.base import base_beam_executor, base_executor
from tfx.types import artifact_utils, standard_artifacts

from components.anomaly_gate import AnomalyGate, DataAnomalyError
from components.report import RunReportExecutor, run_report_file
from components.target_networks import (
    SERVING_DIR,
    TargetNetworkExporter,
    TargetNetworkPusher,
    copy_tree,
)
from components.verdict import ModelVerdict
from pipeline import configs
from pipeline.configs import MANIFEST_FILE, REPORT_FILE, VERDICT_FILE, WEIGHTS_FILE, serialize
from pipeline.eval_config import build_eval_config
from pipeline.inputs import check_data, input_files
from tests.support import ROOT, TAXI_CSV, read_csv, to_example, write_config

SPLITS = ["train", "eval", "test"]
VERSION = "1795755637"


def artifact(kind: type, uri: str, **custom: int | str) -> standard_artifacts.Artifact:
    made = kind()
    made.uri = uri
    for key, value in custom.items():
        if isinstance(value, int):
            made.set_int_custom_property(key, value)
        else:
            made.set_string_custom_property(key, value)
    return made


def read(path: str, mode: str = "r") -> str | bytes:
    with tf.io.gfile.GFile(path, mode) as f:
        return f.read()


def files_below(top: str) -> dict[str, bytes]:
    """{relative path: content} of every file below top, through tf.io.gfile."""
    found = {}
    for root, _, names in tf.io.gfile.walk(top):
        for name in names:
            rel = os.path.join(root[len(top):].lstrip("/"), name)
            found[rel] = read(os.path.join(root, name), "rb")
    return found


def no_local_ram_folder(*folders: str) -> None:
    """The classic bug: an os.path call on 'ram://x' makes a local folder named 'ram:'."""
    for folder in folders:
        for root, dirs, names in os.walk(folder):
            assert not [n for n in dirs + names if n.startswith("ram:")], root


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """Executors run in an empty working directory: a stray local 'ram:' lands here."""
    here, folder = os.getcwd(), tmp_path_factory.mktemp("cwd")
    os.chdir(folder)
    yield str(folder)
    os.chdir(here)


@pytest.fixture(scope="module")
def run(taxi, exported, tmp_path_factory, cwd):
    """A run's upstream artifacts in ram://<fresh>/: statistics, anomalies, the model, its
    run history, the Transform graph, and the Evaluator's evaluation and blessing."""
    from tfx.components.evaluator import executor as evaluator

    config, rows, dtypes, tft_output = taxi
    local = tmp_path_factory.mktemp("run")
    examples = local / "examples" / "Split-test"
    examples.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(examples / "data.gz"), options="GZIP") as w:
        for row in rows:
            w.write(to_example(row, dtypes))
    shutil.copytree(exported[0], local / "model" / SERVING_DIR)
    # The gate open (no baseline, bound 0): the Evaluator blesses, so everything downstream runs.
    open_gate = dataclasses.replace(config, gates=dataclasses.replace(config.gates, lower_bound=0.0))
    inputs = {"examples": [artifact(standard_artifacts.Examples, str(local / "examples"))],
              "model": [artifact(standard_artifacts.Model, str(local / "model"))]}
    inputs["examples"][0].split_names = artifact_utils.encode_split_names(["test"])
    outputs = {"evaluation": [artifact(standard_artifacts.ModelEvaluation, str(local / "evaluation"))],
               "blessing": [artifact(standard_artifacts.ModelBlessing, str(local / "blessing"))]}
    evaluator.Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=config.beam.pipeline_args())).Do(inputs, outputs, {
            "eval_config": json_format.MessageToJson(build_eval_config(open_gate)),
            "example_splits": json.dumps(["test"])})
    assert outputs["blessing"][0].get_int_custom_property("blessed") == 1
    for split in SPLITS:
        (local / "anomalies" / f"Split-{split}").mkdir(parents=True)
        (local / "anomalies" / f"Split-{split}" / "SchemaDiff.pb").write_bytes(
            anomalies_pb2.Anomalies().SerializeToString())
        stats = statistics_pb2.DatasetFeatureStatisticsList(
            datasets=[statistics_pb2.DatasetFeatureStatistics(num_examples=len(rows))])
        (local / "statistics" / f"Split-{split}").mkdir(parents=True)
        (local / "statistics" / f"Split-{split}" / "FeatureStats.pb").write_bytes(
            stats.SerializeToString())
    (local / "model_run").mkdir()
    (local / "model_run" / "history.json").write_text(json.dumps(
        {"loss": [0.6, 0.5], "val_loss": [0.55, 0.5]}))
    root = f"ram://{uuid.uuid4().hex}"
    for name in ("model", "model_run", "evaluation", "blessing", "anomalies", "statistics"):
        copy_tree(str(local / name), f"{root}/{name}")
    copy_tree(tft_output._transform_output_dir, f"{root}/transform_graph")
    return root, serialize(open_gate), rows, dtypes


def test_anomaly_gate_reads_a_remote_artifact(run, cwd):
    root, *_ = run
    gate = AnomalyGate.EXECUTOR_SPEC.executor_class()
    anomalies = artifact(standard_artifacts.ExampleAnomalies, f"{root}/anomalies")
    anomalies.split_names = artifact_utils.encode_split_names(SPLITS)
    gate.Do({"anomalies": [anomalies]}, {}, {"min_severity": "ERROR"})  # clean: passes
    broken = anomalies_pb2.Anomalies()
    broken.anomaly_info["fare"].severity = anomalies_pb2.AnomalyInfo.ERROR
    broken.anomaly_info["fare"].short_description = "Unexpected string values"
    bad = artifact(standard_artifacts.ExampleAnomalies, f"{root}/bad_anomalies")
    bad.split_names = artifact_utils.encode_split_names(["eval"])
    tf.io.gfile.makedirs(f"{root}/bad_anomalies/Split-eval")
    with tf.io.gfile.GFile(f"{root}/bad_anomalies/Split-eval/SchemaDiff.pb", "wb") as f:
        f.write(broken.SerializeToString())
    with pytest.raises(DataAnomalyError, match=r"\[eval\] fare: Unexpected string values"):
        gate.Do({"anomalies": [bad]}, {}, {"min_severity": "ERROR"})
    no_local_ram_folder(cwd, ROOT)


@pytest.fixture(scope="module")
def verdict(run):
    root, *_ = run
    blessing = artifact(standard_artifacts.ModelBlessing, f"{root}/blessing",
                        blessed=1, current_model=f"{root}/model")
    deployment = artifact(standard_artifacts.ModelBlessing, f"{root}/deployment_blessing")
    ModelVerdict.EXECUTOR_SPEC.executor_class().Do(
        {"evaluation": [artifact(standard_artifacts.ModelEvaluation, f"{root}/evaluation")],
         "blessing": [blessing]},
        {"deployment_blessing": [deployment]},
        {"verdict_dir": root, "gate_metric": "auc", "slice_tolerance": -1.0,
         "min_slice_examples": 0, "higher_is_better": 1})
    return deployment


def test_model_verdict_writes_its_verdict_remotely(run, verdict, cwd):
    root, *_ = run
    assert verdict.get_int_custom_property("blessed") == 1
    assert tf.io.gfile.exists(f"{root}/deployment_blessing/BLESSED")
    written = json.loads(read(f"{root}/deployment_blessing/{VERDICT_FILE}"))
    assert written == json.loads(read(f"{root}/{VERDICT_FILE}"))  # the newest, in the root
    assert written["blessed"] and written["gate_metric"] == "auc"
    assert 0.0 <= written["value"] <= 1.0 and written["evaluation"] == f"{root}/evaluation"
    no_local_ram_folder(cwd, ROOT)


@pytest.fixture(scope="module")
def target_networks(run, verdict):
    root, config, *_ = run
    out = artifact(standard_artifacts.Model, f"{root}/target_networks")
    TargetNetworkExporter.EXECUTOR_SPEC.executor_class().Do(
        {"model": [artifact(standard_artifacts.Model, f"{root}/model")],
         "transform_graph": [artifact(standard_artifacts.TransformGraph, f"{root}/transform_graph")],
         "blessing": [verdict],
         "evaluation": [artifact(standard_artifacts.ModelEvaluation, f"{root}/evaluation")]},
        {"target_networks": [out]}, {"config": json.dumps(config)})
    return out


def test_target_networks_export_to_a_remote_root(run, target_networks, cwd):
    """TargetNetworkExporter (trainer/target_export.py inside): SavedModels, the weights
    archive and the manifest in ram://, and a network loaded from there serves as the
    hypernetwork does."""
    root, _, rows, dtypes = run
    out = f"{target_networks.uri}/{SERVING_DIR}"
    manifest = json.loads(read(f"{out}/{MANIFEST_FILE}"))
    names = [n["path"] for n in manifest["networks"]]
    assert len(names) >= 3 and manifest["hypernetwork"] == f"{root}/model/{SERVING_DIR}"
    assert sorted(tf.io.gfile.listdir(out)) == sorted([*names, MANIFEST_FILE, WEIGHTS_FILE])
    weights = np.load(io.BytesIO(read(f"{out}/{WEIGHTS_FILE}", "rb")))
    assert list(weights["names"]) == names
    assert weights["weights"].shape == (len(names), manifest["networks"][0]["num_params"])
    assert manifest["networks"][0]["metrics"]["example_count"] > 0  # read from ram:// TFMA
    first = manifest["networks"][0]
    picked = [r for r in rows if r["payment_type"] == first["context"]["payment_type"]][:20]
    serialized = tf.constant([to_example({k: v for k, v in r.items() if k != "tips"}, dtypes)
                              for r in picked])
    served = tf.saved_model.load(f"{out}/{first['path']}")
    hyper = tf.saved_model.load(f"{root}/model/{SERVING_DIR}")
    np.testing.assert_allclose(
        served.signatures["serving_default"](examples=serialized)["probabilities"].numpy(),
        hyper.signatures["serving_default"](examples=serialized)["probabilities"].numpy(),
        atol=1e-5)
    no_local_ram_folder(cwd, ROOT)


@pytest.fixture(scope="module")
def pushed(run, target_networks):
    root, *_ = run
    pushed_model = artifact(standard_artifacts.PushedModel, f"{root}/pushed_model", pushed=1,
                            pushed_version=VERSION,
                            pushed_destination=f"{root}/serving_model/{VERSION}")
    out = artifact(standard_artifacts.PushedModel, f"{root}/pushed_target_networks")
    TargetNetworkPusher.EXECUTOR_SPEC.executor_class().Do(
        {"target_networks": [target_networks], "pushed_model": [pushed_model]},
        {"pushed_target_networks": [out]},
        {"base_directory": f"{root}/serving_target_networks"})
    return pushed_model, out


def test_target_network_pusher_publishes_remotely(run, target_networks, pushed, cwd):
    """Object stores have no directory rename: the pusher moves the files one by one."""
    root, *_ = run
    _, out = pushed
    destination = f"{root}/serving_target_networks/{VERSION}"
    assert out.get_int_custom_property("pushed") == 1
    assert out.get_string_custom_property("pushed_destination") == destination
    source = files_below(f"{target_networks.uri}/{SERVING_DIR}")
    assert files_below(destination) == source and len(source) > 10
    assert tf.io.gfile.listdir(f"{root}/serving_target_networks") == [VERSION]  # no staging left
    assert tf.io.gfile.isdir(f"{destination}/{json.loads(source[MANIFEST_FILE])['networks'][0]['path']}/variables")
    no_local_ram_folder(cwd, ROOT)


def test_run_report_keeps_one_page_per_run_remotely(run, verdict, target_networks, pushed, cwd):
    """Two runs: report-<run id>.html each, report.html the newest;
    every plot present, the weights projection read back from ram://."""
    root, config, rows, _ = run
    pushed_model, pushed_networks = pushed
    inputs = {
        "statistics": artifact(standard_artifacts.ExampleStatistics, f"{root}/statistics"),
        "anomalies": artifact(standard_artifacts.ExampleAnomalies, f"{root}/anomalies"),
        "model_run": artifact(standard_artifacts.ModelRun, f"{root}/model_run"),
        "evaluation": artifact(standard_artifacts.ModelEvaluation, f"{root}/evaluation"),
        "blessing": verdict, "pushed_model": pushed_model, "target_networks": target_networks,
        "pushed_target_networks": pushed_networks}
    for art in (inputs["statistics"], inputs["anomalies"]):
        art.split_names = artifact_utils.encode_split_names(SPLITS)
    reports = f"{root}/reports_root"
    run_ids = ["2026-11-27T04:57:59.979211", "2026-11-28T04:58:01.000001"]
    for run_id in run_ids:
        executor = RunReportExecutor(base_executor.BaseExecutor.Context(pipeline_run_id=run_id))
        executor.Do({k: [v] for k, v in inputs.items()}, {},
                    {"report_dir": reports, "config": json.dumps(config), "gate_metric": "auc"})
    names = [run_report_file(r) for r in run_ids]
    assert names == ["report-2026-11-27T04:57:59.979211.html",
                     "report-2026-11-28T04:58:01.000001.html"]
    assert run_report_file("job/7") == "report-job-7.html"
    assert sorted(tf.io.gfile.listdir(reports)) == sorted([*names, REPORT_FILE])
    pages = [read(f"{reports}/{n}") for n in names]
    assert read(f"{reports}/{REPORT_FILE}") == pages[1]  # the newest
    for run_id, page in zip(run_ids, pages):
        data = json.loads(re.search(r'id="report-data">(.*?)</script>', page, re.S)[1])
        assert data["run"] == run_id and f"run {run_id}</h1>" in page
        assert page.count('<img src="data:image/png;base64,') == 3  # history, slices, weights
        assert 'alt="weights projection"' in page and len(data["projection"]["names"]) >= 3
        assert data["rows"] == {s: len(rows) for s in SPLITS}
        assert f"serving_target_networks/{VERSION}" in page and "BLESSED: auc" in page
    no_local_ram_folder(cwd, ROOT)


def _csv(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    return "\n".join([",".join(header)] + [",".join(
        f'"{r[c]}"' if "," in r[c] else r[c] for c in header) for r in rows]) + "\n"


def test_remote_data_root_with_and_without_spans(tmp_path, cwd):
    rows, _ = read_csv(TAXI_CSV, limit=60)
    root = f"ram://{uuid.uuid4().hex}"
    for path, part in ((f"{root}/plain/data.csv", rows),
                       (f"{root}/spans/span-1/a.csv", rows[:30]),
                       (f"{root}/spans/span-2/b.csv", rows[30:])):
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(_csv(part))
    plain = configs.load(write_config(str(tmp_path / "plain.yaml"), base=configs.DEFAULT_CONFIG,
                                      data_root=f"{root}/plain"))
    assert plain.data_root == f"{root}/plain" and not plain.uses_spans
    assert input_files(plain) == [f"{root}/plain/data.csv"]
    check_data(plain)  # headers and labels read through tf.io.gfile
    spans = configs.load(write_config(str(tmp_path / "spans.yaml"), base=configs.DEFAULT_CONFIG,
                                      data_root=f"{root}/spans"))
    assert spans.uses_spans and spans.spans() == [1, 2]
    assert input_files(spans) == [f"{root}/spans/span-2/b.csv"]
    assert input_files(dataclasses.replace(spans, num_spans=2)) == [
        f"{root}/spans/span-1/a.csv", f"{root}/spans/span-2/b.csv"]
    check_data(spans)
    tf.io.gfile.remove(f"{root}/plain/data.csv")  # ram:// appends to a file opened to write
    with tf.io.gfile.GFile(f"{root}/plain/data.csv", "w") as f:
        f.write(_csv([{k: v for k, v in r.items() if k != "fare"} for r in rows]))
    with pytest.raises(configs.ConfigError, match=r"data.csv: column\(s\) 'fare'"):
        check_data(plain)
    no_local_ram_folder(cwd, ROOT)


def test_remote_schema_file_is_checked_and_read(tmp_path, cwd):
    from pipeline.pipeline import create_pipeline

    schema = f"ram://{uuid.uuid4().hex}/taxi.pbtxt"
    with open(os.path.join(configs.PACKAGE_DIR, "schema", "taxi.pbtxt")) as f:
        text = f.read()
    tf.io.gfile.makedirs(os.path.dirname(schema))
    with tf.io.gfile.GFile(schema, "w") as f:
        f.write(text)
    config = configs.load(write_config(str(tmp_path / "c.yaml"), base=configs.DEFAULT_CONFIG,
                                       output_dir=str(tmp_path / "out"), schema_file=schema))
    check_data(config)  # the schema exists remotely: no error
    node = {c.id: c for c in create_pipeline(config).components}["CuratedSchemaGen"]
    assert node.exec_properties["schema_text"] == text
    missing = dataclasses.replace(config, schema_file=schema + ".gone")
    with pytest.raises(configs.ConfigError, match=r"schema_file .*taxi.pbtxt.gone.* does not exist"):
        check_data(missing)
    no_local_ram_folder(cwd, ROOT)


def test_unlistable_remote_data_root_is_read_as_configured_spans(tmp_path, caplog):
    """Compiling a Kubeflow spec without the bucket's credentials: the configured spans."""
    config = configs.load(write_config(str(tmp_path / "c.yaml"), base=configs.DEFAULT_CONFIG,
                                       data_root="s3://no-filesystem-for-this/taxi"))
    assert config.uses_spans and "cannot list data_root s3://" in caplog.text
    assert not dataclasses.replace(config, span_pattern=None).uses_spans
