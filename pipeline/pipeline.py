"""`create_pipeline(...)`: the whole TFX DAG, built from one PipelineConfig.

TFX is imported module by module, not through `tfx.v1`: that facade also imports its Google
Cloud extensions (google.cloud.aiplatform, ~3 s of every run's start). Only the Vertex
Trainer, compiled for Kubeflow, needs them, and imports them where it is built.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tfx.components import (
    CsvExampleGen,
    Evaluator,
    ExampleValidator,
    Pusher,
    SchemaGen,
    StatisticsGen,
    Trainer,
    Transform,
)
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import (
    LatestBlessedModelStrategy,
)
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import example_gen_pb2, pusher_pb2, range_config_pb2, trainer_pb2, transform_pb2
from tfx.types import standard_artifacts
from tfx.types.channel import Channel

from components.anomaly_gate import AnomalyGate
from components.curated_schema import CuratedSchemaGen
from components.report import RunReport
from components.target_networks import TargetNetworkExporter, TargetNetworkPusher
from components.verdict import ModelVerdict
from pipeline.configs import ConfigError, PipelineConfig, serialize
from pipeline.eval_config import build_eval_config

PREPROCESSING_FN = "trainer.preprocessing.preprocessing_fn"
RUN_FN = "trainer.task.run_fn"
VERDICT_ID = "ModelVerdict"
# The splits the Trainer reads. The Evaluator scores `test` from ExampleGen's raw examples
# through the model's own transform, so Transform writes no transformed copy of it.
TRAIN_SPLIT, EVAL_SPLIT = "train", "eval"
TRAINER_SPLITS = (TRAIN_SPLIT, EVAL_SPLIT)


def create_pipeline(
    config: PipelineConfig,
    metadata_connection_config: metadata_store_pb2.ConnectionConfig | None = None,
    beam_pipeline_args: list[str] | None = None,
    preprocessing_fn: str = PREPROCESSING_FN,
    run_fn: str = RUN_FN,
    vertex_image: str | None = None,
    transform_splits: Sequence[str] = TRAINER_SPLITS,
) -> Pipeline:
    """ExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> AnomalyGate -> Transform
    -> Trainer -> (latest blessed model) -> Evaluator -> ModelVerdict (per-slice gate)
    -> Pusher; TargetNetworkExporter -> TargetNetworkPusher; RunReport.

    `vertex_image` (the Kubeflow compile's image): with training.workers > 1 the Trainer
    runs as a Vertex AI CustomJob of that image (vertex_trainer); locally run_fn
    starts the workers itself (trainer/launcher.py). `transform_splits`: the splits
    Transform materializes (the benchmarks add `test`, to score anchors on its rows)."""
    # What Transform and Trainer need; the schema travels as CuratedSchemaGen's parameter.
    custom_config = serialize(dataclasses.replace(config, schema_file=None))

    # train (fit), eval (early stopping, model selection), test (the gate and the report only).
    output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
        for name, buckets in config.splits.buckets().items()]))
    if config.uses_spans:
        # The newest span, or a rolling window of the last num_spans.
        example_gen = CsvExampleGen(
            input_base=config.data_root,
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="span", pattern=config.span_pattern)]),
            output_config=output_config,
            range_config=range_config_pb2.RangeConfig(
                rolling_range=range_config_pb2.RollingRange(num_spans=config.num_spans)))
    else:
        example_gen = CsvExampleGen(input_base=config.data_root,
                                                   output_config=output_config)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    if config.schema_file:
        # A curated schema: drift from what the model was designed for is caught.
        with tf.io.gfile.GFile(config.schema_file) as f:  # a bucket's too
            schema_gen = CuratedSchemaGen(schema_text=f.read(),
                                          source=os.path.basename(config.schema_file))
    else:
        # No inferred shapes: every column is optional, so training and serving fill gaps alike.
        schema_gen = SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=False)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=preprocessing_fn,
        custom_config=custom_config,
        splits_config=transform_pb2.SplitsConfig(analyze=[TRAIN_SPLIT], transform=list(transform_splits)),
        # Its pre-transform statistics repeat StatisticsGen's, and nothing reads the
        # post-transform ones: together ~4 s of Transform's 30 on the taxi sample.
        disable_statistics=True)
    gates = []
    if config.gates.anomaly_severity:
        anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"],
                                   min_severity=config.gates.anomaly_severity)
        transform.add_upstream_node(anomaly_gate)
        gates.append(anomaly_gate)
    # The baseline: the newest model that ModelVerdict (the final gate) blessed.
    model_resolver = Resolver(
        strategy_class=LatestBlessedModelStrategy,
        model=Channel(type=standard_artifacts.Model,
                      producer_component_id="Trainer", output_key="model"),
        model_blessing=Channel(type=standard_artifacts.ModelBlessing,
                               producer_component_id=VERDICT_ID,
                               output_key="deployment_blessing"),
    ).with_id("latest_blessed_model_resolver")
    trainer_class, trainer_config = Trainer, custom_config
    if vertex_image is not None and config.training.workers > 1:
        trainer_class, vertex_keys = vertex_trainer(config, vertex_image)
        trainer_config = {**custom_config, **vertex_keys}
    trainer = trainer_class(
        run_fn=run_fn,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=model_resolver.outputs["model"],  # warm start (trainer/warm_start.py)
        train_args=trainer_pb2.TrainArgs(splits=[TRAIN_SPLIT], num_steps=config.training.train_steps),
        eval_args=trainer_pb2.EvalArgs(splits=[EVAL_SPLIT], num_steps=config.training.eval_steps),
        custom_config=trainer_config)
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"],
        example_splits=["test"],  # never the split that early stopping watched
        eval_config=build_eval_config(config))
    g = config.gates
    verdict = ModelVerdict(
        evaluation=evaluator.outputs["evaluation"], blessing=evaluator.outputs["blessing"],
        verdict_dir=config.pipeline_root, gate_metric=config.gate_metric.result_key,
        slice_tolerance=-1.0 if g.slice_tolerance is None else g.slice_tolerance,  # -1: off
        min_slice_examples=g.min_slice_examples,
        higher_is_better=int(config.gate_metric.higher_is_better),
    ).with_id(VERDICT_ID)
    blessing = verdict.outputs["deployment_blessing"]
    pusher = Pusher(
        model=trainer.outputs["model"],
        model_blessing=blessing,
        push_destination=pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(
                base_directory=config.serving_model_dir)))
    exporter = TargetNetworkExporter(
        model=trainer.outputs["model"], transform_graph=transform.outputs["transform_graph"],
        blessing=blessing, evaluation=evaluator.outputs["evaluation"],
        config=json.dumps(custom_config))
    target_pusher = TargetNetworkPusher(
        target_networks=exporter.outputs["target_networks"],
        pushed_model=pusher.outputs["pushed_model"],
        base_directory=config.serving_target_networks_dir)
    report = RunReport(
        statistics=statistics_gen.outputs["statistics"],
        anomalies=example_validator.outputs["anomalies"],
        model_run=trainer.outputs["model_run"], evaluation=evaluator.outputs["evaluation"],
        blessing=blessing, pushed_model=pusher.outputs["pushed_model"],
        target_networks=exporter.outputs["target_networks"],
        pushed_target_networks=target_pusher.outputs["pushed_target_networks"],
        report_dir=config.pipeline_root, config=json.dumps(custom_config),
        gate_metric=config.gate_metric.result_key)

    return Pipeline(
        pipeline_name=config.name,
        pipeline_root=config.pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, *gates, transform,
                    model_resolver, trainer, evaluator, verdict, pusher, exporter, target_pusher,
                    report],
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or config.beam.pipeline_args(),
    )


def vertex_trainer(config: PipelineConfig, image: str) -> tuple[type[Trainer], dict[str, Any]]:
    """The Vertex AI Trainer class and its custom_config keys: a CustomJob of
    training.workers replicas.

    Pool 0 is the chief (one replica), pool 1 the other workers; Vertex sets each replica's
    $TF_CONFIG (task "chief" or "worker"), every replica runs run_fn in `image`, and only
    the chief exports (trainer.task.is_chief).
    """
    t = config.training
    if not t.vertex_project:
        raise ConfigError(f"{config.source}: training.workers {t.workers} on Kubeflow runs the "
                          "Trainer on Vertex AI: set training.vertex_project (and vertex_region, "
                          "vertex_machine_type)")
    from tfx.v1.extensions import google_cloud_ai_platform as vertex

    def pool(replicas: int) -> dict[str, Any]:
        return {"machine_spec": {"machine_type": t.vertex_machine_type},
                "replica_count": replicas, "container_spec": {"image_uri": image}}

    return vertex.Trainer, {
        vertex.ENABLE_VERTEX_KEY: True,
        vertex.VERTEX_REGION_KEY: t.vertex_region,
        vertex.TRAINING_ARGS_KEY: {
            "project": t.vertex_project,
            "job_spec": {"worker_pool_specs": [pool(1), pool(t.workers - 1)]},
        },
    }
