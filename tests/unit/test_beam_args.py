"""Beam pipeline args from the config and the flags, as Beam's own option parser reads them.

The Flink, Spark and Dataflow examples are the YAML blocks of the README's "Scale out"
section, so the documented settings are the tested ones.
"""

import dataclasses
import json
import logging
import os
import re

import pytest
import yaml
from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from pipeline import configs, in_process_beam, local_runner
from pipeline.kubeflow_runner import compile_pipeline
from tests.support import ROOT


def readme_beam_sections() -> dict[str, configs.BeamConfig]:
    """The `beam:` YAML blocks of README's "Scale out", keyed by runner (or the mode)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Scale out\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S):
        beam = yaml.safe_load(block)["beam"]
        config = configs.from_dict({**_taxi(), "beam": beam})  # validated like a config file
        runner = PipelineOptions(config.beam.pipeline_args()).view_as(StandardOptions).runner
        found[runner or config.beam.direct_running_mode] = config.beam
    return found


def _taxi() -> dict:
    data = dataclasses.asdict(configs.load(configs.DEFAULT_CONFIG))
    data.pop("source")
    return data


def options(beam: configs.BeamConfig) -> PipelineOptions:
    return PipelineOptions(beam.pipeline_args())


def test_direct_runner_default():
    opts = options(configs.BeamConfig())
    assert opts.view_as(StandardOptions).runner is None  # Beam's default: the DirectRunner
    assert opts.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert opts.view_as(DirectOptions).direct_num_workers == 1
    assert configs.load(configs.DEFAULT_CONFIG).beam.pipeline_args() == \
        configs.BeamConfig().pipeline_args()


def test_multi_processing_with_n_workers():
    opts = options(configs.BeamConfig("multi_processing", 4))
    assert opts.view_as(DirectOptions).direct_running_mode == "multi_processing"
    assert opts.view_as(DirectOptions).direct_num_workers == 4
    documented = readme_beam_sections()["multi_processing"]
    assert options(documented).view_as(DirectOptions).direct_num_workers == 0  # one per CPU


def test_readme_documents_the_three_cluster_runners():
    assert {"FlinkRunner", "PortableRunner", "DataflowRunner"} <= set(readme_beam_sections())


def test_flink_settings():
    opts = options(readme_beam_sections()["FlinkRunner"])
    flink = opts.view_as(FlinkRunnerOptions)
    assert flink.flink_master == "flink-jobmanager:8081"
    assert flink.flink_version == "1.18"
    assert flink.flink_submit_uber_jar is True
    assert flink.parallelism == 16
    portable = opts.view_as(PortableOptions)
    assert (portable.environment_type, portable.environment_config) == \
        ("EXTERNAL", "localhost:50000")


def test_spark_through_the_portable_job_server():
    opts = options(readme_beam_sections()["PortableRunner"])
    portable = opts.view_as(PortableOptions)
    assert portable.job_endpoint == "beam-spark-job-server:8099"
    assert portable.artifact_endpoint == "beam-spark-job-server:8098"
    assert portable.environment_type == "EXTERNAL"


def test_dataflow_settings():
    opts = options(readme_beam_sections()["DataflowRunner"])
    gcp = opts.view_as(GoogleCloudOptions)
    assert (gcp.project, gcp.region, gcp.temp_location) == \
        ("my-project", "us-central1", "gs://my-bucket/beam-tmp")
    worker = opts.view_as(WorkerOptions)
    assert worker.sdk_container_image.endswith("/hypernet-tfx-worker:1")
    assert (worker.machine_type, worker.max_num_workers) == ("n2-standard-8", 50)
    assert opts.view_as(SetupOptions).sdk_location == "container"


def test_every_documented_option_is_known_to_beam():
    for runner, beam in readme_beam_sections().items():
        known = PipelineOptions(beam.pipeline_args()).get_all_options(retain_unknown_options=False)
        assert beam.unknown_args() == [], runner
        for arg in beam.extra_args:
            assert arg[2:].split("=", 1)[0] in known, (runner, arg)


def test_a_misspelled_option_is_reported(caplog):
    beam = configs.BeamConfig(extra_args=("--runner=FlinkRunner", "--flink_mastr=flink:8081"))
    with caplog.at_level(logging.WARNING, logger="apache_beam.options.pipeline_options"):
        PipelineOptions(beam.pipeline_args()).get_all_options()
    assert "Discarding unparseable args: ['--flink_mastr=flink:8081']" in caplog.text  # Beam's way
    assert beam.unknown_args() == ["--flink_mastr=flink:8081"]
    with pytest.raises(configs.ConfigError, match=r"beam\.extra_args.*--flink_mastr"):
        configs.from_dict({**_taxi(), "beam": {"extra_args": list(beam.extra_args)}})


def test_malformed_extra_arg_is_refused():
    with pytest.raises(configs.ConfigError, match="--name=value"):
        configs.from_dict({**_taxi(), "beam": {"extra_args": ["runner=FlinkRunner"]}})


def test_local_runner_flags_override_and_extend_the_config():
    config = configs.from_dict({**_taxi(), "beam": {"extra_args": ["--parallelism=2"]}})
    args = local_runner.parse_args([
        "--direct_running_mode", "multi_processing", "--direct_num_workers", "3",
        "--beam_arg=--runner=FlinkRunner", "--beam_arg=--flink_master=flink:8081"])
    beam_args = local_runner.beam_pipeline_args(config, args)
    assert beam_args == ["--direct_running_mode=multi_processing", "--direct_num_workers=3",
                         "--max_cache_memory_usage_mb=0", "--parallelism=2", "--runner=FlinkRunner", "--flink_master=flink:8081"]
    opts = PipelineOptions(beam_args)
    assert opts.view_as(FlinkRunnerOptions).flink_master == "flink:8081"
    assert opts.view_as(FlinkRunnerOptions).parallelism == 2
    assert opts.view_as(DirectOptions).direct_num_workers == 3
    bad = local_runner.parse_args(["--beam_arg=--flink_mastr=flink:8081"])
    with pytest.raises(configs.ConfigError, match="flink_mastr"):
        local_runner.beam_pipeline_args(config, bad)


def test_kubeflow_spec_passes_the_beam_args_to_every_beam_component(tmp_path):
    out = tmp_path / "hypernet.json"
    extra = ["--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
             "--temp_location=gs://my-bucket/tmp"]
    compile_pipeline(["--output", str(out), "--image", "img:test", "--output-dir", "gs://b/hn",
                      "--data-root", "gs://b/data", *(f"--beam_arg={a}" for a in extra)])
    executors = json.loads(out.read_text())["pipelineSpec"]["deploymentSpec"]["executors"]
    args = {name: e["container"]["args"] for name, e in executors.items() if "container" in e}
    for name in ("CsvExampleGen_executor", "StatisticsGen_executor", "Transform_executor",
                 "Evaluator_executor"):
        assert args[name][-len(extra):] == extra, name
        opts = PipelineOptions(args[name][args[name].index("{{$}}") + 1:])
        assert opts.view_as(StandardOptions).runner == "DataflowRunner"
        assert opts.view_as(GoogleCloudOptions).project == "my-project"


@pytest.mark.parametrize("size_mb, weighed", [(0, False), (100, True)])
def test_in_process_runner_takes_the_cache_size_from_the_args(monkeypatch, size_mb, weighed):
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import worker_handlers
    from apache_beam.runners.worker import statecache
    from apache_beam.testing.util import assert_that, equal_to

    monkeypatch.setattr(worker_handlers, "STATE_CACHE_SIZE_MB", worker_handlers.STATE_CACHE_SIZE_MB)
    config = configs.from_dict({**_taxi(), "beam": {"max_cache_memory_usage_mb": size_mb}})
    assert f"--max_cache_memory_usage_mb={size_mb}" in config.beam.pipeline_args()
    assert in_process_beam.apply_in_process_cache_size(config.beam.pipeline_args()) == size_mb
    assert worker_handlers.STATE_CACHE_SIZE_MB == size_mb
    calls = []
    real = statecache.get_deep_size
    monkeypatch.setattr(statecache, "get_deep_size", lambda *o: calls.append(1) or real(*o))
    with beam.Pipeline(options=PipelineOptions(config.beam.pipeline_args())) as p:
        side = p | "side" >> beam.Create([1, 2, 3])
        out = (p | beam.Create([10, 20])
               | beam.Map(lambda x, s: x + sum(s), s=beam.pvalue.AsList(side)))
        assert_that(out, equal_to([16, 26]))
    assert bool(calls) is weighed  # a cached side input is weighed; an uncached one is not


def test_negative_cache_size_is_refused():
    with pytest.raises(configs.ConfigError, match="max_cache_memory_usage_mb must be >= 0"):
        configs.from_dict({**_taxi(), "beam": {"max_cache_memory_usage_mb": -1}})


def test_dill_trace_switch_sets_the_log_level_only_when_it_changes(monkeypatch):
    import apache_beam as beam
    import dill
    from apache_beam.internal import pickler
    from apache_beam.testing.util import assert_that, equal_to

    monkeypatch.setattr(dill.dill, "_trace", dill.dill._trace)
    log = dill.dill.log
    monkeypatch.setattr(log, "level", log.level)
    in_process_beam.skip_redundant_dill_log_levels()
    levels = []
    real = type(log).setLevel
    monkeypatch.setattr(type(log), "setLevel",
                        lambda self, level: levels.append((self.name, level)) or real(self, level))
    dill.dill._trace(True)
    dill.dill._trace(True)
    assert log.level == logging.INFO
    dill.dill._trace(False)
    assert log.level == logging.WARN
    assert pickler.loads(pickler.dumps(lambda x: x * 3))(5) == 15  # Beam's pickler still works
    with beam.Pipeline() as p:
        assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x + 1), equal_to([2, 3]))
    assert [lv for name, lv in levels if name == log.name] == [logging.INFO, logging.WARN]


@pytest.mark.parametrize("runner, skipped", [(None, True), ("DataflowRunner", False)])
def test_tfx_packages_itself_only_for_remote_workers(monkeypatch, tmp_path, runner, skipped):
    from tfx.components.statistics_gen.executor import Executor
    from tfx.utils import dependency_utils

    monkeypatch.setattr(dependency_utils, "make_beam_dependency_flags",
                        dependency_utils.make_beam_dependency_flags)
    built = []
    monkeypatch.setattr(dependency_utils, "build_ephemeral_package",
                        lambda: built.append(1) or str(tmp_path / "tfx_ephemeral.tar.gz"))
    args = configs.from_dict(_taxi()).beam.pipeline_args()
    if runner:
        args.append(f"--runner={runner}")
    assert in_process_beam.skip_tfx_sdist_for_direct_runner(args) is skipped
    executor = Executor(Executor.Context(beam_pipeline_args=args))
    extra = [a for a in executor._beam_pipeline_args if a.startswith("--extra_package")]
    assert (extra == []) is skipped
    assert bool(built) is not skipped
