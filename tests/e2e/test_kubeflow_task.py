"""The compiled Kubeflow V2 spec, executed task by task the way its containers run it.

Every task of the compiled spec runs outside any cluster, through TFX's container entry
point (`kubeflow_v2_run_executor`) with the arguments the spec gives it, `{{$}}` replaced
by the ExecutorInput that Kubeflow would build (tests/kubeflow_tasks.py): CsvExampleGen
(its pre-cache-check driver first), StatisticsGen, CuratedSchemaGen, ExampleValidator,
AnomalyGate, Transform (our preprocessing_fn), Trainer (our run_fn), Evaluator,
ModelVerdict, Pusher, TargetNetworkExporter, TargetNetworkPusher and RunReport. Each
task's input artifacts are its upstream tasks' outputs as their executors described them
in their ExecutorOutput files; the latest-blessed-model resolvers (no container: the
backend queries ML Metadata) resolve to nothing, as on a first run. One module fixture
runs the chain once; each test asserts on one task's outputs.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import configs
from pipeline.kubeflow_runner import compile_pipeline
from tests.kubeflow_tasks import ARTIFACT_NAME, container_of, load_spec, run_pipeline
from tests.support import TAXI_CSV, load_in_fresh_process, read_csv, to_example, write_config

pytestmark = pytest.mark.e2e
# ~1,200 train / 400 eval / 400 test rows: enough for the gate (AUC >= 0.90 on test) after
# a short training, so the blessed path (push, target networks) runs.
ROWS = 2000
TRAINING = {"train_steps": 150, "epochs": 2, "eval_steps": 5}
MODEL = {"generator": ["film"], "pooling": [3.0], "shared_l2": [0.0]}  # one candidate: no model selection
TFX_EXECUTORS = {  # task -> the TFX executor its container runs
    "CsvExampleGen": "tfx.components.example_gen.csv_example_gen.executor.Executor",
    "StatisticsGen": "tfx.components.statistics_gen.executor.Executor",
    "ExampleValidator": "tfx.components.example_validator.executor.Executor",
    "Transform": "tfx.components.transform.executor.Executor",
    "Trainer": "tfx.components.trainer.executor.GenericExecutor",
    "Evaluator": "tfx.components.evaluator.executor.Executor",
    "Pusher": "tfx.components.pusher.executor.Executor",
}
CUSTOM = ("AnomalyGate", "CuratedSchemaGen", "ModelVerdict", "TargetNetworkExporter",
          "TargetNetworkPusher", "RunReport")


def _executor_path(component) -> str:
    executor = component.EXECUTOR_SPEC.executor_class
    return f"{executor.__module__}.{executor.__name__}"


def _ours() -> dict[str, str]:
    """Our components' executors (function components: a generated <name>_Executor class)."""
    from components import anomaly_gate, curated_schema, report, target_networks, verdict

    classes = {"AnomalyGate": anomaly_gate.AnomalyGate,
               "CuratedSchemaGen": curated_schema.CuratedSchemaGen,
               "ModelVerdict": verdict.ModelVerdict,
               "TargetNetworkExporter": target_networks.TargetNetworkExporter,
               "TargetNetworkPusher": target_networks.TargetNetworkPusher,
               "RunReport": report.RunReport}
    return {name: _executor_path(cls) for name, cls in classes.items()}


RESOLVERS = {"latest_blessed_model_resolver-model-blessing-resolver",
             "latest_blessed_model_resolver-model-resolver"}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfp_tasks")
    data = tmp / "data"
    data.mkdir()
    with open(TAXI_CSV) as src, open(data / "data.csv", "w") as dst:
        for _ in range(ROWS + 1):  # header + ROWS rows
            dst.write(src.readline())
    # output_dir: the compiled spec's (--output-dir), so config.pipeline_root is the spec's.
    config_path = write_config(str(tmp / "taxi.yaml"), base=configs.DEFAULT_CONFIG,
                               data_root=str(data), output_dir=str(tmp / "out"),
                               training=TRAINING, model=MODEL)
    out = tmp / "hypernet.json"
    compile_pipeline(["--output", str(out), "--image", "hypernet-tfx:test", "--config",
                      config_path, "--output-dir", str(tmp / "out"), "--data-root", str(data)])
    raw, spec = load_spec(str(out))
    # Kubeflow: <pipeline root>/<job>/<task>_<id>/; the working directory is the image's.
    runs = run_pipeline(raw, spec, str(tmp / "out" / "job"), cwd=str(tmp))
    config = configs.load(config_path)
    return {"tmp": tmp, "raw": raw, "spec": spec, "runs": runs, "data": data,
            "config": config}


def test_every_task_ran_through_the_container_entrypoint_with_the_spec_arguments(chain):
    runs, raw, spec = chain["runs"], chain["raw"], chain["spec"]
    executors = {**TFX_EXECUTORS, **_ours()}
    assert set(runs) == set(executors) | RESOLVERS
    for name, class_path in executors.items():
        container = container_of(raw, spec, name)
        assert container["command"] == [
            "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
        assert container["args"][:2] == ["--executor_class_path", class_path], name
        assert "{{$}}" in container["args"]
        # Its ExecutorOutput file describes every output the component defines (AnomalyGate:
        # none, so "{}").
        outputs = spec.components[spec.root.dag.tasks[name].component_ref.name].output_definitions
        assert runs[name].kind == "container", name
        assert set(runs[name].executor_output.get("artifacts", {})) == set(outputs.artifacts)
    for name in RESOLVERS:
        assert container_of(raw, spec, name) is None and runs[name].kind == "resolver"


def test_inputs_are_the_upstream_outputs_as_their_executors_described_them(chain):
    runs, spec = chain["runs"], chain["spec"]
    for name in (*TFX_EXECUTORS, *CUSTOM):
        given = runs[name].executor_input.get("inputs", {}).get("artifacts", {})
        for key, channel in spec.root.dag.tasks[name].inputs.artifacts.items():
            source = channel.task_output_artifact
            upstream = runs[source.producer_task].outputs[source.output_artifact_key]
            artifacts = given.get(key, {}).get("artifacts", [])
            assert [a["uri"] for a in artifacts] == [a.uri for a in upstream], (name, key)
            for ours, theirs in zip(artifacts, upstream):
                assert ours["name"] == theirs.name
                assert ours.get("metadata", {}) == json_format.MessageToDict(theirs.metadata)
    # First run: no blessed model, so no baseline for the Trainer's warm start or the Evaluator.
    assert runs["Trainer"].executor_input["inputs"]["artifacts"]["base_model"] == {}
    assert runs["Evaluator"].executor_input["inputs"]["artifacts"]["baseline_model"] == {}


# -- CsvExampleGen: driver, then executor -----------------------------------------------

def test_example_gen_driver_resolved_span_and_fingerprint(chain):
    driver = chain["runs"]["CsvExampleGen"].driver_output
    params = driver["parameterValues"]
    assert params["span"] == 0
    assert params["input_fingerprint"].startswith("split:single_split,num_files:1,")
    (artifact,) = driver["artifacts"]["examples"]["artifacts"]
    # span is also a property of Examples, hence the "custom:" prefix of the custom property.
    assert artifact["metadata"]["custom:span"] == 0
    assert artifact["metadata"]["input_fingerprint"] == params["input_fingerprint"]


def _read_examples(uri: str, split: str) -> list:
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*.gz")))
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_examples_hold_every_csv_row_and_column_split_3_1_1(chain):
    uri = chain["runs"]["CsvExampleGen"].uri("examples")
    assert sorted(os.listdir(uri)) == ["Split-eval", "Split-test", "Split-train"]
    for path in glob.glob(os.path.join(uri, "*", "*")):
        with gzip.open(path, "rb") as f:
            f.read(1)  # gzip, or this raises
    with open(chain["data"] / "data.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    train, evaluation, test = (_read_examples(uri, s) for s in ("train", "eval", "test"))
    assert len(train) + len(evaluation) + len(test) == ROWS
    assert len(train) > 2 * len(evaluation) > 0 and len(train) > 2 * len(test) > 0  # 3:1:1
    for example in train + evaluation + test:
        assert set(example.features.feature) == set(header)

    def fare(e):
        value = e.features.feature["fare"]
        return round(value.float_list.value[0], 4) if value.float_list.value else None
    csv_fares = sorted(round(float(r["fare"]), 4) for r in rows if r["fare"])
    assert sorted(x for x in map(fare, train + evaluation + test) if x is not None) == csv_fares


def test_example_gen_output_file_describes_the_artifact(chain):
    run = chain["runs"]["CsvExampleGen"]
    parsed = json_format.ParseDict(run.executor_output, pipeline_spec_pb2.ExecutorOutput())
    (artifact,) = parsed.artifacts["examples"].artifacts
    assert artifact.name.startswith(ARTIFACT_NAME.format(""))
    metadata = run.metadata("examples")
    assert json.loads(metadata["split_names"]) == ["train", "eval", "test"]
    # What the driver resolved reached the executor's artifact.
    assert metadata["custom:span"] == 0
    assert metadata["input_fingerprint"] == run.driver_output["parameterValues"]["input_fingerprint"]
    assert metadata["file_format"] == "tfrecords_gzip"
    assert metadata["payload_format"] == "FORMAT_TF_EXAMPLE"
    assert "tfx_version" in metadata


# -- data checks ------------------------------------------------------------------------

def test_statistics_schema_and_anomalies_pass_the_gate(chain):
    runs = chain["runs"]
    assert json.loads(runs["StatisticsGen"].metadata("statistics")["split_names"]) == [
        "train", "eval", "test"]
    schema_uri = runs["CuratedSchemaGen"].uri("schema")
    assert os.path.exists(os.path.join(schema_uri, "schema.pbtxt"))
    # The curated schema's content travelled as the task's parameter, not as a path.
    assert "feature {" in runs["CuratedSchemaGen"].executor_input["inputs"]["parameters"][
        "schema_text"]["stringValue"]
    anomalies = runs["ExampleValidator"].uri("anomalies")
    assert sorted(os.listdir(anomalies)) == ["Split-eval", "Split-test", "Split-train"]
    assert "AnomalyGate" in runs and runs["AnomalyGate"].outputs == {}  # passed: exit 0


# -- Transform: our preprocessing_fn ---------------------------------------------------

def test_transform_graph_transforms_raw_rows(chain):
    import tensorflow as tf
    import tensorflow_transform as tft

    run = chain["runs"]["Transform"]
    output = tft.TFTransformOutput(run.uri("transform_graph"))
    rows, dtypes = read_csv(TAXI_CSV, limit=8)
    raw = tf.constant([to_example(r, dtypes) for r in rows])
    features = tf.io.parse_example(raw, output.raw_feature_spec())
    transformed = output.transform_raw_features(features)
    config = chain["config"]
    assert config.label.name in transformed
    assert "payment_type_xf" in transformed  # the context's vocabulary id
    for name, value in transformed.items():
        if isinstance(value, tf.Tensor):
            assert value.shape[0] == len(rows), name
    # Transformed examples for the splits the Trainer reads; the Evaluator scores test
    # from the raw examples, so none is written for it.
    examples = run.uri("transformed_examples")
    assert sorted(os.listdir(examples)) == ["Split-eval", "Split-train"]
    assert sorted(json.loads(run.metadata("transformed_examples")["split_names"])) == [
        "eval", "train"]


# -- Trainer: our run_fn -----------------------------------------------------------------

def test_trainer_model_loads_and_serves(chain):
    import tensorflow as tf

    run = chain["runs"]["Trainer"]
    model_dir = os.path.join(run.uri("model"), "Format-Serving")
    model = tf.saved_model.load(model_dir)
    assert "serving_default" in model.signatures
    assert os.listdir(run.uri("model_run"))  # the training logs and history


# -- Evaluator and the verdict -------------------------------------------------------------

def test_evaluator_wrote_metrics_on_the_test_split(chain):
    from trainer.eval_results import slice_metrics

    run = chain["runs"]["Evaluator"]
    metrics = slice_metrics(run.uri("evaluation"))
    test = _read_examples(chain["runs"]["CsvExampleGen"].uri("examples"), "test")
    assert metrics["overall"]["example_count"] == len(test)
    assert {"auc", "binary_accuracy"} <= set(metrics["overall"])
    assert any(k.startswith("payment_type=") for k in metrics)
    blessing = run.metadata("blessing")
    assert blessing["blessed"] == 1.0
    # The entry point rewrote the model id into the artifact's runtime name (b/169583143).
    assert blessing["current_model_id"] == run.executor_input["inputs"]["artifacts"][
        "model"]["artifacts"][0]["name"]
    assert "baseline_model_id" not in blessing  # a first run: the bound alone


def test_model_verdict_blessed_with_its_reasons_file(chain):
    run, config = chain["runs"]["ModelVerdict"], chain["config"]
    uri = run.uri("deployment_blessing")
    assert os.path.exists(os.path.join(uri, "BLESSED"))
    with open(os.path.join(uri, configs.VERDICT_FILE)) as f:
        verdict = json.load(f)
    with open(os.path.join(config.pipeline_root, configs.VERDICT_FILE)) as f:
        assert json.load(f) == verdict  # the newest verdict, in the pipeline root as well
    assert verdict["blessed"] is True and verdict["reasons"] == []
    assert verdict["value"] >= config.gates.lower_bound and verdict["baseline_value"] is None
    assert run.metadata("deployment_blessing")["blessed"] == 1.0


# -- Pusher, target networks, report ---------------------------------------------------

def _requests() -> list[bytes]:
    rows, dtypes = read_csv(TAXI_CSV, limit=10)
    requests = [{k: v for k, v in r.items() if k != "tips"} for r in rows]
    requests.append({"payment_type": "Cash", "fare": "8.25"})  # optional fields missing
    return [to_example(r, dtypes) for r in requests]


def test_pushed_model_serves_raw_examples(chain):
    run, config = chain["runs"]["Pusher"], chain["config"]
    metadata = run.metadata("pushed_model")
    assert metadata["pushed"] == 1.0
    destination = metadata["pushed_destination"]
    assert os.path.dirname(destination) == config.serving_model_dir
    assert os.path.basename(destination) == metadata["pushed_version"]
    out = load_in_fresh_process(destination, _requests())
    probabilities = out["probabilities"]
    assert len(probabilities) == 11 and all(len(p) == 1 and 0 <= p[0] <= 1 for p in probabilities)


def test_target_networks_exported_and_pushed_next_to_the_model(chain):
    runs, config = chain["runs"], chain["config"]
    exported = os.path.join(runs["TargetNetworkExporter"].uri("target_networks"),
                            "Format-Serving")
    with open(os.path.join(exported, configs.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    assert manifest["networks"]
    pushed = runs["TargetNetworkPusher"].metadata("pushed_target_networks")
    assert pushed["pushed"] == 1.0
    version = runs["Pusher"].metadata("pushed_model")["pushed_version"]
    assert pushed["pushed_destination"] == os.path.join(config.serving_target_networks_dir,
                                                        version)
    with open(os.path.join(pushed["pushed_destination"], configs.MANIFEST_FILE)) as f:
        assert json.load(f) == manifest
    # A pushed target network serves the same raw tf.Examples.
    first = manifest["networks"][0]
    folder = os.path.join(pushed["pushed_destination"], first["path"])
    out = load_in_fresh_process(folder, _requests())
    assert len(out["probabilities"]) == 11


def test_run_report_written(chain):
    config = chain["config"]
    report = os.path.join(config.pipeline_root, configs.REPORT_FILE)
    with open(report) as f:
        page = f.read()
    assert "<html" in page.lower() and config.name in page
    # Kubeflow gives its executors no run id: the page is named by time instead.
    assert len(glob.glob(os.path.join(config.pipeline_root, "report-*.html"))) == 1
