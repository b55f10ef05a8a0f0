"""One compiled Kubeflow V2 task, run the way its container runs it: the spec executes.

The CsvExampleGen task of the compiled spec runs outside any cluster, through TFX's own
entry points with the arguments the spec gives them: first its pre-cache-check driver
(`lifecycle.preCacheCheck`), then its executor, each with `{{$}}` replaced by the
ExecutorInput JSON that Kubeflow would build from the task's parameters and the
component's output definitions. Then its output artifact is checked.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import subprocess
import sys

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.kubeflow_runner import compile_pipeline
from tests.support import TAXI_CSV, pipeline_env

pytestmark = pytest.mark.e2e
ROWS = 300
TASK = "CsvExampleGen"
ARTIFACT_NAME = "projects/1/locations/local/metadataStores/default/artifacts/{}"


def executor_input(spec: pipeline_spec_pb2.PipelineSpec, task_name: str, outputs_root: str,
                   output_file: str) -> pipeline_spec_pb2.ExecutorInput:
    """What the Kubeflow backend passes as `{{$}}`: parameters, output artifacts, output file."""
    task = spec.root.dag.tasks[task_name]
    component = spec.components[task.component_ref.name]
    result = pipeline_spec_pb2.ExecutorInput()
    for name, parameter in task.inputs.parameters.items():
        value = parameter.runtime_value.constant_value  # pipeline_spec_pb2.Value
        result.inputs.parameters[name].CopyFrom(value)  # what TFX reads (spec < 2.1)
        kind = value.WhichOneof("value")
        if kind == "string_value":
            result.inputs.parameter_values[name].string_value = value.string_value
        elif kind == "int_value":
            result.inputs.parameter_values[name].number_value = value.int_value
        else:
            result.inputs.parameter_values[name].number_value = value.double_value
    for i, (name, definition) in enumerate(sorted(component.output_definitions.artifacts.items())):
        artifact = result.outputs.artifacts[name].artifacts.add()
        artifact.name = ARTIFACT_NAME.format(i + 1)
        artifact.uri = os.path.join(outputs_root, task_name, name)
        artifact.type.CopyFrom(definition.artifact_type)
    result.outputs.output_file = output_file
    return result


def apply_driver_output(executor_input_: pipeline_spec_pb2.ExecutorInput,
                        driver_output: pipeline_spec_pb2.ExecutorOutput) -> None:
    """What the backend does between driver and executor: the driver's resolved parameters
    (span, fingerprint, input_config) become the task's, its artifact metadata the artifact's."""
    for name, value in driver_output.parameter_values.items():
        executor_input_.inputs.parameter_values[name].CopyFrom(value)
        legacy = executor_input_.inputs.parameters[name]
        if value.WhichOneof("kind") == "string_value":
            legacy.string_value = value.string_value
        else:
            legacy.int_value = int(value.number_value)
    for name, artifacts in driver_output.artifacts.items():
        for ours, theirs in zip(executor_input_.outputs.artifacts[name].artifacts,
                                artifacts.artifacts):
            ours.metadata.update(json_format.MessageToDict(theirs.metadata))


def run_container(container: dict, payload: str, cwd: str) -> subprocess.CompletedProcess:
    """command + args with `{{$}}` substituted; `python` is this environment's interpreter."""
    command = [sys.executable if c == "python" else c for c in container["command"]]
    args = [payload if a == "{{$}}" else a for a in container["args"]]
    return subprocess.run(command + args, cwd=cwd, env=pipeline_env(), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfp_task")
    data = tmp / "data"
    data.mkdir()
    with open(TAXI_CSV) as src, open(data / "data.csv", "w") as dst:
        for _ in range(ROWS + 1):  # header + ROWS rows
            dst.write(src.readline())
    out = tmp / "hypernet.json"
    compile_pipeline(["--output", str(out), "--image", "hypernet-tfx:test",
                      "--output-dir", str(tmp / "out"), "--data-root", str(data)])
    raw = json.loads(out.read_text())
    spec = json_format.ParseDict(raw["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    executor_label = spec.components[spec.root.dag.tasks[TASK].component_ref.name].executor_label
    container = raw["pipelineSpec"]["deploymentSpec"]["executors"][executor_label]["container"]

    task_root = tmp / "out" / "task_1"  # Kubeflow: <pipeline root>/<job>/<task>_<id>/
    output_file = str(task_root / "executor_output.json")
    invocation = executor_input(spec, TASK, str(tmp / "out" / "artifacts"), output_file)
    driver = run_container(container["lifecycle"]["preCacheCheck"],
                           json_format.MessageToJson(invocation), str(tmp))
    assert driver.returncode == 0, driver.stderr[-4000:]
    driver_output = json.loads(open(output_file).read())
    apply_driver_output(invocation, json_format.ParseDict(
        driver_output, pipeline_spec_pb2.ExecutorOutput()))
    executor = run_container(container, json_format.MessageToJson(invocation), str(tmp))
    assert executor.returncode == 0, executor.stderr[-4000:]
    return {
        "tmp": tmp, "container": container, "data": data,
        "artifact_uri": str(tmp / "out" / "artifacts" / TASK / "examples"),
        "driver_output": driver_output,
        "executor_output": json.loads(open(output_file).read()),
    }


def test_the_container_runs_tfx_entrypoints_with_the_spec_arguments(task_run):
    container = task_run["container"]
    assert container["command"] == [
        "python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
    assert container["args"][:2] == [
        "--executor_class_path", "tfx.components.example_gen.csv_example_gen.executor.Executor"]
    assert "{{$}}" in container["args"]


def test_driver_resolved_span_and_fingerprint(task_run):
    params = task_run["driver_output"]["parameterValues"]
    assert params["span"] == 0
    assert params["input_fingerprint"].startswith("split:single_split,num_files:1,")
    (artifact,) = task_run["driver_output"]["artifacts"]["examples"]["artifacts"]
    # span is also a property of Examples, hence the "custom:" prefix of the custom property.
    assert artifact["metadata"]["custom:span"] == 0
    assert artifact["metadata"]["input_fingerprint"] == params["input_fingerprint"]


def test_examples_are_split_train_eval_and_test(task_run):
    uri = task_run["artifact_uri"]
    assert sorted(os.listdir(uri)) == ["Split-eval", "Split-test", "Split-train"]
    for split in ("Split-train", "Split-eval", "Split-test"):
        files = glob.glob(os.path.join(uri, split, "*.gz"))
        assert files, split
        for path in files:
            with gzip.open(path, "rb") as f:
                f.read(1)  # gzip, or this raises


def _read_examples(uri: str, split: str) -> list:
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(uri, split, "*.gz")))
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_examples_hold_every_csv_row_and_column(task_run):
    with open(task_run["data"] / "data.csv", newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames, list(reader)
    train, evaluation, test = (_read_examples(task_run["artifact_uri"], f"Split-{split}")
                               for split in ("train", "eval", "test"))
    assert len(train) + len(evaluation) + len(test) == ROWS
    assert len(train) > 2 * len(evaluation) > 0 and len(train) > 2 * len(test) > 0  # 3:1:1
    for example in train + evaluation + test:
        assert set(example.features.feature) == set(header)
    # Values survive: the multiset of fares read back equals the CSV's.
    def fare(e):
        value = e.features.feature["fare"]
        return round(value.float_list.value[0], 4) if value.float_list.value else None
    csv_fares = sorted(round(float(r["fare"]), 4) for r in rows if r["fare"])
    assert sorted(x for x in map(fare, train + evaluation + test) if x is not None) == csv_fares


def test_executor_output_file_describes_the_artifact(task_run):
    output = task_run["executor_output"]
    parsed = json_format.ParseDict(output, pipeline_spec_pb2.ExecutorOutput())
    (artifact,) = parsed.artifacts["examples"].artifacts
    assert artifact.uri == task_run["artifact_uri"]
    assert artifact.name == ARTIFACT_NAME.format(1)
    metadata = json_format.MessageToDict(artifact.metadata)
    assert json.loads(metadata["split_names"]) == ["train", "eval", "test"]
    # What the driver resolved reached the executor's artifact.
    assert metadata["custom:span"] == 0
    assert metadata["input_fingerprint"] == \
        task_run["driver_output"]["parameterValues"]["input_fingerprint"]
    assert metadata["file_format"] == "tfrecords_gzip"
    assert metadata["payload_format"] == "FORMAT_TF_EXAMPLE"
    assert "tfx_version" in metadata
