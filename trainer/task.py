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


def make_dataset(file_pattern, data_accessor: tfx.components.DataAccessor,
                 tft_output: tft.TFTransformOutput, config: PipelineConfig) -> tf.data.Dataset:
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=config.training.batch_size, label_key=config.label.name,
        shuffle_seed=config.training.seed)
    return data_accessor.tf_dataset_factory(
        file_pattern, options, tft_output.transformed_metadata.schema).repeat()


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
    serving_spec = {k: v for k, v in raw_spec.items() if k not in config.label_only_columns}
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
    """TFX Trainer entry point."""
    require_legacy_keras()
    config = deserialize(fn_args.custom_config)
    tf.keras.utils.set_random_seed(config.training.seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    layout = ModelLayout.from_transform(config, tft_output)

    train_ds = make_dataset(fn_args.train_files, fn_args.data_accessor, tft_output, config)
    eval_ds = make_dataset(fn_args.eval_files, fn_args.data_accessor, tft_output, config)
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

    export(model, config, tft_output, fn_args.serving_model_dir)
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, HISTORY_FILE), "w") as f:
        json.dump(history, f)
