"""Run a compiled Kubeflow V2 pipeline spec's tasks as their containers would, on local paths.

What the Kubeflow backend does for each task, done here outside any cluster: build the
ExecutorInput (`{{$}}`) from the spec (the task's constant parameters; its input artifacts
from the upstream tasks' outputs, as those tasks' executors described them in their
ExecutorOutput files; its output artifacts under an outputs root), run the container's
command with the spec's own arguments (the pre-cache-check driver first, when the task
has one), and read back the ExecutorOutput. Resolver tasks have no container: the backend
answers their queries from ML Metadata, which a first run leaves empty (`resolve` says
what to give instead).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping

from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.support import pipeline_env

ARTIFACT_NAME = "projects/1/locations/local/metadataStores/default/artifacts/{}"

Spec = pipeline_spec_pb2.PipelineSpec
RuntimeArtifact = pipeline_spec_pb2.RuntimeArtifact


@dataclasses.dataclass
class TaskRun:
    """One task's execution: what it was given, what it said, what it wrote."""

    name: str
    kind: str  # "container" | "resolver"
    executor_input: dict = dataclasses.field(default_factory=dict)
    driver_output: dict | None = None
    executor_output: dict = dataclasses.field(default_factory=dict)
    outputs: dict[str, list[RuntimeArtifact]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""

    def uri(self, key: str) -> str:
        (artifact,) = self.outputs[key]
        return artifact.uri

    def metadata(self, key: str) -> dict:
        (artifact,) = self.outputs[key]
        return json_format.MessageToDict(artifact.metadata)


def load_spec(path: str) -> tuple[dict, Spec]:
    """The compiled file as a dict (its `pipelineSpec`) and as the PipelineSpec proto."""
    with open(path) as f:
        raw = json.load(f)["pipelineSpec"]
    return raw, json_format.ParseDict(raw, Spec())


def topological_order(spec: Spec) -> list[str]:
    """Task names, every task after the tasks it depends on (ties by name)."""
    tasks = spec.root.dag.tasks
    depends = {name: set(task.dependent_tasks) | {
        a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()
        if a.task_output_artifact.producer_task} for name, task in tasks.items()}
    order: list[str] = []
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in order and depends[n] <= set(order))
        assert ready, f"cycle among {sorted(set(tasks) - set(order))}"
        order.append(ready[0])
    return order


def container_of(raw: dict, spec: Spec, task_name: str) -> dict | None:
    """The task's executor container (command, args, lifecycle) in the spec, or None."""
    label = spec.components[spec.root.dag.tasks[task_name].component_ref.name].executor_label
    return raw["deploymentSpec"]["executors"][label].get("container")


def _set_parameter(result: pipeline_spec_pb2.ExecutorInput, name: str,
                   value: pipeline_spec_pb2.Value) -> None:
    result.inputs.parameters[name].CopyFrom(value)  # what TFX reads (spec < 2.1)
    kind = value.WhichOneof("value")
    if kind == "string_value":
        result.inputs.parameter_values[name].string_value = value.string_value
    elif kind == "int_value":
        result.inputs.parameter_values[name].number_value = value.int_value
    else:
        result.inputs.parameter_values[name].number_value = value.double_value


def executor_input(spec: Spec, task_name: str, artifacts_root: str, output_file: str,
                   upstream: Mapping[str, TaskRun], names: Callable[[], str]
                   ) -> pipeline_spec_pb2.ExecutorInput:
    """What the backend passes as `{{$}}`: parameters, input and output artifacts, output file.

    An input artifact is the upstream task's output as its ExecutorOutput described it
    (uri, name, metadata: split_names, span, blessed, ...), typed by the producer
    component's output definition (ExecutorOutput carries no type).
    """
    task = spec.root.dag.tasks[task_name]
    component = spec.components[task.component_ref.name]
    result = pipeline_spec_pb2.ExecutorInput()
    for name, parameter in task.inputs.parameters.items():
        _set_parameter(result, name, parameter.runtime_value.constant_value)
    for name, channel in task.inputs.artifacts.items():
        source = channel.task_output_artifact
        producer = spec.components[spec.root.dag.tasks[source.producer_task].component_ref.name]
        artifact_type = producer.output_definitions.artifacts[source.output_artifact_key].artifact_type
        target = result.inputs.artifacts[name]  # present even when the list stays empty
        for artifact in upstream[source.producer_task].outputs[source.output_artifact_key]:
            added = target.artifacts.add()
            added.CopyFrom(artifact)
            added.type.CopyFrom(artifact_type)
    for name, definition in sorted(component.output_definitions.artifacts.items()):
        artifact = result.outputs.artifacts[name].artifacts.add()
        artifact.name = names()
        artifact.uri = os.path.join(artifacts_root, name)
        artifact.type.CopyFrom(definition.artifact_type)
    result.outputs.output_file = output_file
    return result


def apply_driver_output(invocation: pipeline_spec_pb2.ExecutorInput,
                        driver_output: pipeline_spec_pb2.ExecutorOutput) -> None:
    """What the backend does between driver and executor: the driver's resolved parameters
    (span, fingerprint, input_config) become the task's, its artifact metadata the artifact's."""
    for name, value in driver_output.parameter_values.items():
        invocation.inputs.parameter_values[name].CopyFrom(value)
        legacy = invocation.inputs.parameters[name]
        if value.WhichOneof("kind") == "string_value":
            legacy.string_value = value.string_value
        else:
            legacy.int_value = int(value.number_value)
    for name, artifacts in driver_output.artifacts.items():
        for ours, theirs in zip(invocation.outputs.artifacts[name].artifacts, artifacts.artifacts):
            ours.metadata.update(json_format.MessageToDict(theirs.metadata))


def run_container(container: dict, payload: str, cwd: str, timeout: float = 1800
                  ) -> subprocess.CompletedProcess:
    """command + args with `{{$}}` substituted; `python` is this environment's interpreter."""
    command = [sys.executable if c == "python" else c for c in container["command"]]
    args = [payload if a == "{{$}}" else a for a in container["args"]]
    return subprocess.run(command + args, cwd=cwd, env=pipeline_env(), capture_output=True,
                          text=True, timeout=timeout)


class TaskFailed(AssertionError):
    pass


def run_pipeline(raw: dict, spec: Spec, job_root: str, cwd: str,
                 resolve: Callable[[str, str], list[RuntimeArtifact]] | None = None,
                 stop_after: str | None = None) -> dict[str, TaskRun]:
    """Every task of the spec in topological order; returns {task name: TaskRun}.

    job_root plays <pipeline root>/<job id>: task i writes <job_root>/<task>_<i>/ (its
    executor_output.json and its output artifacts, one folder per output key).
    `resolve(task, output key)` gives a resolver task's artifacts (default: none, as on a
    first run). Raises TaskFailed (with the task's log) when a container exits non-zero.
    """
    counter = iter(range(1, 1_000_000))

    def names() -> str:
        return ARTIFACT_NAME.format(next(counter))

    runs: dict[str, TaskRun] = {}
    for i, name in enumerate(topological_order(spec), start=1):
        container = container_of(raw, spec, name)
        if container is None:  # a resolver: the backend queries ML Metadata
            component = spec.components[spec.root.dag.tasks[name].component_ref.name]
            runs[name] = TaskRun(name, "resolver", outputs={
                key: list(resolve(name, key)) if resolve else []
                for key in component.output_definitions.artifacts})
        else:
            runs[name] = run_task(spec, name, container, os.path.join(job_root, f"{name}_{i}"),
                                  cwd, runs, names)
        if name == stop_after:
            break
    return runs


def run_task(spec: Spec, name: str, container: dict, task_root: str, cwd: str,
             upstream: Mapping[str, TaskRun], names: Callable[[], str]) -> TaskRun:
    start = time.monotonic()
    output_file = os.path.join(task_root, "executor_output.json")
    invocation = executor_input(spec, name, task_root, output_file, upstream, names)
    run = TaskRun(name, "container")
    logs = []
    driver = container.get("lifecycle", {}).get("preCacheCheck")
    if driver:
        done = run_container(driver, json_format.MessageToJson(invocation), cwd)
        logs.append(done.stderr)
        if done.returncode != 0:
            raise TaskFailed(f"{name} driver exited {done.returncode}:\n{done.stderr[-6000:]}")
        with open(output_file) as f:
            run.driver_output = json.load(f)
        apply_driver_output(invocation, json_format.ParseDict(
            run.driver_output, pipeline_spec_pb2.ExecutorOutput()))
    run.executor_input = json_format.MessageToDict(invocation)
    os.makedirs(task_root, exist_ok=True)
    with open(os.path.join(task_root, "executor_input.json"), "w") as f:  # for a post-mortem
        json.dump(run.executor_input, f, indent=1)
    done = run_container(container, json_format.MessageToJson(invocation), cwd)
    logs.append(done.stderr)
    run.log = "\n".join(logs)
    if done.returncode != 0:
        raise TaskFailed(f"{name} exited {done.returncode}:\n{done.stderr[-6000:]}")
    with open(output_file) as f:
        run.executor_output = json.load(f)
    parsed = json_format.ParseDict(run.executor_output, pipeline_spec_pb2.ExecutorOutput())
    run.outputs = {key: list(artifacts.artifacts) for key, artifacts in parsed.artifacts.items()}
    run.seconds = time.monotonic() - start
    return run
