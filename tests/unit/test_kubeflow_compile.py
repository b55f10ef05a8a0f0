"""The Kubeflow V2 spec, read back as Kubeflow reads it, matches the local pipeline."""

import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import configs
from pipeline.kubeflow_runner import compile_pipeline
from pipeline.pipeline import PREPROCESSING_FN, RUN_FN, create_pipeline
from tests.support import ROOT

IMAGE = "registry.example/hypernet-tfx:test"
RESOLVER = "latest_blessed_model_resolver"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    out = tmp_path_factory.mktemp("kfp") / "hypernet.json"
    compile_pipeline(["--output", str(out), "--image", IMAGE, "--output-dir", "gs://bucket/hn",
                      "--data-root", "gs://bucket/data/taxi"])
    raw = json.loads(out.read_text())
    return raw, json_format.ParseDict(raw["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


def kfp_task_names(component_id: str) -> set[str]:
    """The KFP compiler splits the Resolver into one task per resolved channel."""
    if component_id == RESOLVER:
        return {f"{RESOLVER}-model-resolver", f"{RESOLVER}-model-blessing-resolver"}
    return {component_id}


def kfp_upstream(component_id: str) -> str:
    """Downstream tasks depend on the resolver's model channel, the one they consume."""
    return f"{RESOLVER}-model-resolver" if component_id == RESOLVER else component_id


def test_tasks_and_dependencies_equal_the_local_pipeline(spec):
    _, parsed = spec
    local = create_pipeline(configs.load(configs.DEFAULT_CONFIG))
    tasks = parsed.root.dag.tasks
    expected = set().union(*(kfp_task_names(c.id) for c in local.components))
    assert set(tasks) == expected
    for component in local.components:
        upstream = {kfp_upstream(u.id) for u in component.upstream_nodes}
        for name in kfp_task_names(component.id):
            assert set(tasks[name].dependent_tasks) == upstream, name


def test_every_executor_uses_the_configured_image(spec):
    _, parsed = spec
    executors = json_format.MessageToDict(parsed.deployment_spec)["executors"]
    containers = {k: v["container"] for k, v in executors.items() if "container" in v}
    assert {c.get("image") for c in containers.values()} == {IMAGE}
    assert len(containers) >= 8


def test_user_code_resolves_from_the_installed_package(spec):
    raw, parsed = spec
    text = json.dumps(raw)
    assert ROOT not in text, "a path of this checkout was baked into the spec"
    params = {name: task.inputs.parameters for name, task in parsed.root.dag.tasks.items()}
    def constant(task, name):
        return params[task][name].runtime_value.constant_value.string_value

    assert constant("Trainer", "run_fn") == RUN_FN
    assert constant("Transform", "preprocessing_fn") == PREPROCESSING_FN
    assert "module_file" not in params["Trainer"] and "module_file" not in params["Transform"]
    assert constant("CsvExampleGen", "input_base") == "gs://bucket/data/taxi"
    assert raw["runtimeConfig"]["gcsOutputDirectory"].startswith("gs://bucket/hn/")
    for dotted in (RUN_FN, PREPROCESSING_FN):
        module, _, fn = dotted.rpartition(".")
        assert callable(getattr(__import__(module, fromlist=[fn]), fn))


def test_pipeline_name_is_valid_for_kubeflow(spec):
    _, parsed = spec
    assert parsed.pipeline_info.name == "hypernet-taxi"
