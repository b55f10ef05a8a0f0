"""The Kubeflow V2 spec, read back as Kubeflow reads it, matches the local pipeline."""

import json

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import configs
from pipeline.kubeflow_runner import compile_pipeline
from pipeline.pipeline import PREPROCESSING_FN, RUN_FN, create_pipeline
from tests.support import ROOT, write_config

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


TRAINER_CLASS = "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor"


@pytest.fixture(scope="module")
def vertex_spec(tmp_path_factory):
    """`--train-workers 3` with the config's Vertex AI project: the Trainer's worker pool."""
    tmp = tmp_path_factory.mktemp("kfp_vertex")
    config = write_config(str(tmp / "taxi.yaml"), base=configs.DEFAULT_CONFIG, training={
        "vertex_project": "my-project", "vertex_region": "europe-west4",
        "vertex_machine_type": "n2-standard-16"})
    out = tmp / "hypernet.json"
    compile_pipeline(["--output", str(out), "--image", IMAGE, "--config", config,
                      "--output-dir", "gs://bucket/hn", "--data-root", "gs://bucket/data/taxi",
                      "--train-workers", "3"])
    raw = json.loads(out.read_text())
    trainer = raw["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]
    custom = json.loads(
        trainer["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]["stringValue"])
    return raw, custom


def test_one_worker_compiles_the_plain_trainer(spec):
    raw, _ = spec
    args = raw["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]["container"]["args"]
    assert args[args.index("--executor_class_path") + 1] == "tfx.components.trainer.executor.GenericExecutor"


def test_train_workers_compile_a_vertex_worker_pool_of_the_pipeline_image(vertex_spec):
    raw, custom = vertex_spec
    container = raw["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert container["args"][container["args"].index("--executor_class_path") + 1] == TRAINER_CLASS
    assert container["image"] == IMAGE  # the task that submits the job
    assert custom["ai_platform_enable_vertex"] is True
    assert custom["ai_platform_vertex_region"] == "europe-west4"
    job = custom["ai_platform_training_args"]
    assert job["project"] == "my-project"
    pools = job["job_spec"]["worker_pool_specs"]
    assert [p["replica_count"] for p in pools] == [1, 2]  # the chief, then the other workers
    assert {p["container_spec"]["image_uri"] for p in pools} == {IMAGE}
    assert {p["machine_spec"]["machine_type"] for p in pools} == {"n2-standard-16"}
    # What every replica's run_fn reads: the same config, three workers, and no launching
    # (Vertex sets $TF_CONFIG for each replica).
    config = configs.deserialize(custom)
    assert (config.training.workers, config.training.distribution) == (3, "multi_worker_mirrored")


def test_vertex_turns_the_compiled_pool_into_replicas_running_the_trainer(vertex_spec):
    """TFX's own Vertex client builds the CustomJob from the spec's custom_config: each
    replica runs the Trainer's executor (our run_fn) in the pipeline image."""
    from tfx.extensions.google_cloud_ai_platform import training_clients

    _, custom = vertex_spec
    job_args = dict(custom["ai_platform_training_args"])
    job_args.pop("project")  # what runner.start_cloud_training does
    client = object.__new__(training_clients.VertexJobClient)  # no API client: nothing is sent
    job = client.create_training_job({}, {}, {"run_fn": RUN_FN, "custom_config": custom},
                                     "tfx.components.trainer.executor.GenericExecutor",
                                     job_args, None, None)
    for pool in job["job_spec"]["worker_pool_specs"]:
        command = pool["container_spec"]["command"]
        assert pool["container_spec"]["image_uri"] == IMAGE
        assert command[command.index("--executor_class_path") + 1] == \
            "tfx.components.trainer.executor.GenericExecutor"


def test_train_workers_on_kubeflow_need_a_vertex_project(tmp_path):
    with pytest.raises(configs.ConfigError, match="training.vertex_project"):
        compile_pipeline(["--output", str(tmp_path / "h.json"), "--image", IMAGE,
                          "--data-root", "gs://bucket/data/taxi", "--train-workers", "2"])


def test_transform_writes_exactly_the_splits_the_trainer_reads():
    nodes = {c.id: c for c in create_pipeline(configs.load(configs.DEFAULT_CONFIG)).components}
    splits = json.loads(nodes["Transform"].exec_properties["splits_config"])
    trainer = nodes["Trainer"].exec_properties
    read = [*json.loads(trainer["train_args"])["splits"], *json.loads(trainer["eval_args"])["splits"]]
    assert splits == {"analyze": ["train"], "transform": read} and read == ["train", "eval"]
    # test is scored from ExampleGen's raw examples, which the model transforms itself.
    assert json.loads(nodes["Evaluator"].exec_properties["example_splits"]) == ["test"]
    assert nodes["Evaluator"].inputs["examples"].producer_component_id == "CsvExampleGen"
