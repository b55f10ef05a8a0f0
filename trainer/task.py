"""The Trainer module: `run_fn(fn_args)` trains the configured hypernetwork and exports it.

The exported SavedModel has two signatures:
- `serving_default`: serialized raw tf.Examples (label columns absent) -> Transform
  graph -> hypernetwork -> {"probabilities"} (classification) or {"predictions"}.
- `transform_features`: serialized raw tf.Examples -> transformed features; TFMA
  uses it to read the transformed label.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx import v1 as tfx
from tfx_bsl.public import tfxio

from pipeline.configs import PipelineConfig, deserialize
from trainer.features import vocab_filename
from trainer.keras_env import require_legacy_keras
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.preprocessing import LABEL_VOCAB
from trainer.warm_start import warm_start

HISTORY_FILE = "history.json"


def output_name(config: PipelineConfig) -> str:
    return "predictions" if config.label.task == "regression" else "probabilities"


def serving_feature_spec(config: PipelineConfig, tft_output: tft.TFTransformOutput) -> dict:
    """The raw feature spec of a serving request: every column but the label-only ones."""
    return {k: v for k, v in tft_output.raw_feature_spec().items()
            if k not in config.label_only_columns}


def make_dataset(file_pattern, data_accessor: tfx.components.DataAccessor,
                 tft_output: tft.TFTransformOutput, config: PipelineConfig) -> tf.data.Dataset:
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=config.training.batch_size, label_key=config.label.name,
        shuffle_seed=config.training.seed)
    dataset = data_accessor.tf_dataset_factory(
        file_pattern, options, tft_output.transformed_metadata.schema).repeat()
    if config.training.distribution == "multi_worker_mirrored":
        # Each worker reads every file and keeps its share of the batches: correct with any
        # number of files (FILE sharding needs at least one file per worker).
        sharding = tf.data.Options()
        sharding.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(sharding)
    return dataset


def make_strategy(config: PipelineConfig) -> tf.distribute.Strategy:
    """training.distribution's strategy; multi_worker_mirrored reads the cluster from $TF_CONFIG."""
    if config.training.distribution == "multi_worker_mirrored":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The worker that exports: task "chief", or "worker" 0 when the cluster has no chief."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief)


def compile_model(model: tf.keras.Model, config: PipelineConfig) -> None:
    task = config.label.task
    if task == "binary":
        loss = tf.keras.losses.BinaryCrossentropy()
        metrics = [tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.BinaryAccuracy(name="accuracy")]
    elif task == "multiclass":
        loss = tf.keras.losses.SparseCategoricalCrossentropy()
        metrics = [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        loss = tf.keras.losses.MeanSquaredError()
        metrics = [tf.keras.metrics.MeanAbsoluteError(name="mae")]
    model.compile(optimizer=tf.keras.optimizers.Adam(config.training.learning_rate),
                  loss=loss, metrics=metrics)


def train(model: tf.keras.Model, config: PipelineConfig, train_ds: tf.data.Dataset,
          eval_ds: tf.data.Dataset, log_dir: str | None = None) -> dict[str, list[float]]:
    t = config.training
    callbacks = [tf.keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=t.early_stopping_patience, restore_best_weights=True)]
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    history = model.fit(
        train_ds, epochs=t.epochs, steps_per_epoch=max(1, t.train_steps // t.epochs),
        validation_data=eval_ds, validation_steps=t.eval_steps, callbacks=callbacks, verbose=2)
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def export(model: tf.keras.Model, config: PipelineConfig, tft_output: tft.TFTransformOutput,
           export_dir: str) -> None:
    """Save with both signatures (see module docstring)."""
    model.tft_layer = tft_output.transform_features_layer()
    raw_spec = tft_output.raw_feature_spec()
    serving_spec = serving_feature_spec(config, tft_output)
    out_name = output_name(config)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve(serialized):
        transformed = model.tft_layer(tf.io.parse_example(serialized, serving_spec))
        return {out_name: model(transformed)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized):
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    tf.saved_model.save(model, export_dir, signatures={
        "serving_default": serve.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    })


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point (run by every worker when training is distributed)."""
    train_and_export(fn_args)


def train_and_export(fn_args: tfx.components.FnArgs) -> tf.keras.Model:
    """run_fn's work; returns the trained model."""
    require_legacy_keras()
    config = deserialize(fn_args.custom_config)
    # First, before other TensorFlow work: a multi-worker strategy starts this worker's server.
    strategy = make_strategy(config)
    # Same span + same seed -> same model: seeded init and shuffle, deterministic kernels and
    # tf.data ordering (the TFXIO reader interleaves files in parallel).
    tf.keras.utils.set_random_seed(config.training.seed)
    tf.config.experimental.enable_op_determinism()
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    layout = ModelLayout.from_transform(config, tft_output)

    train_ds = make_dataset(fn_args.train_files, fn_args.data_accessor, tft_output, config)
    eval_ds = make_dataset(fn_args.eval_files, fn_args.data_accessor, tft_output, config)
    with strategy.scope():  # variables (model, optimizer, metrics) mirrored across workers
        model = ConfiguredHyperModel(config, layout, name="hyper_model")
        compile_model(model, config)
        if config.training.warm_start:
            model(next(iter(train_ds))[0])  # build the variables before copying into them
            vocabularies = {c: tft_output.vocabulary_file_by_name(vocab_filename(c))
                            for c in config.features.categorical}
            if config.label.task == "multiclass":
                vocabularies["label"] = tft_output.vocabulary_file_by_name(LABEL_VOCAB)
            warm_start(model.hyper, fn_args.base_model, vocabularies)
    history = train(model, config, train_ds, eval_ds, log_dir=fn_args.model_run_dir)
    logging.info("hypernetwork: %d target parameters generated by %d generator parameters",
                 model.hyper.target.num_params, model.hyper.generator.num_generator_params)

    if not is_chief(strategy):
        # Every worker saves (saving may run collective ops); only the chief's copy is kept.
        scratch = tempfile.mkdtemp(prefix="hypernet-worker-")
        try:
            export(model, config, tft_output, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return model
    export(model, config, tft_output, fn_args.serving_model_dir)
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f)
    return model
