"""The Trainer module: `run_fn(fn_args)` trains the configured hypernetwork and exports it.

The exported SavedModel has two signatures:
- `serving_default`: serialized raw tf.Examples (label columns absent) -> Transform
  graph -> hypernetwork -> {"probabilities"} (classification) or {"predictions"}.
- `transform_features`: serialized raw tf.Examples -> transformed features; TFMA
  uses it to read the transformed label.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx.components.trainer.fn_args_utils import FnArgs

from pipeline.configs import (
    HISTORY_FILE,
    TRANSFORM_SIGNATURE,
    Candidate,
    ModelConfig,
    PipelineConfig,
    deserialize,
)
from trainer import launcher
from trainer.context_intercepts import fit_model_intercepts
from trainer.hypernet.keras_env import require_legacy_keras, without_autograph, without_keras_traces
from trainer.model import ConfiguredHyperModel, ModelLayout, vocabulary_files
from trainer.warm_start import warm_start

DATA_LOSS = "data_loss"
SCORING_BATCH = 4096  # a pass that only predicts (fitting the context intercepts)


def serving_feature_spec(config: PipelineConfig, tft_output: tft.TFTransformOutput) -> dict:
    """The raw feature spec of a serving request: every column but the label-only ones."""
    return {k: v for k, v in tft_output.raw_feature_spec().items()
            if k not in config.label_only_columns}


def make_dataset(file_pattern: str | list[str], tft_output: tft.TFTransformOutput,
                 config: PipelineConfig, training: bool = True,
                 keep_in_memory: bool = True) -> tf.data.Dataset:
    """Batches of (transformed features, label) from Transform's tf.Example files.

    Read with tf.data, batches parsed in parallel: TFXIO's reader (`data_accessor`)
    parses on a single thread, 6.1 ms per batch of 256 here against 1.5 ms, which made
    input, not the model, the Trainer's bottleneck. Training: shuffled and repeated.
    Evaluation: the whole split (or its first `eval_steps` batches) in file order, parsed
    once and then kept in memory, since every early-stopping check reads the same rows
    (`keep_in_memory=False` for a single pass, such as over the train split).
    """
    t = config.training
    spec = tft_output.transformed_feature_spec()
    files, compression = _record_files(file_pattern)
    records = tf.data.Dataset.from_tensor_slices(files)
    if training:
        records = records.shuffle(len(files), seed=t.seed)
    records = records.interleave(lambda f: tf.data.TFRecordDataset(f, compression),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training:
        records = records.shuffle(10_000, seed=t.seed)

    def parse(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        features = tf.io.parse_example(serialized, spec)
        return features, features.pop(config.label.name)

    if training or t.eval_steps is not None:
        records = records.repeat()
    dataset = records.batch(t.batch_size, drop_remainder=training or t.eval_steps is not None)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not training:
        dataset = dataset if t.eval_steps is None else dataset.take(t.eval_steps)
        dataset = dataset.cache() if keep_in_memory else dataset
    options = tf.data.Options()
    # No autotuning thread: deleting an iterator waits out that thread's sleep, which
    # doubles up to seconds as the iterator lives, so dropping a finished candidate's
    # training iterator stalled the Trainer 2.5-5 s in about half the runs (the garbage
    # collector's pass lands anywhere, docs/performance.md). AUTOTUNE then means one
    # call per core and a self-sizing prefetch buffer: steps were as fast, order the same.
    options.autotune.enabled = False
    if t.distribution == "multi_worker_mirrored":
        # Each worker reads every file and keeps its share of the batches: correct with any
        # number of files (FILE sharding needs at least one file per worker).
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def scoring_dataset(file_pattern: str | list[str], tft_output: tft.TFTransformOutput,
                    config: PipelineConfig) -> tf.data.Dataset:
    """The whole split once, in file order, in batches of SCORING_BATCH and not kept in
    memory: for passes that only predict."""
    one_pass = dataclasses.replace(config, training=dataclasses.replace(
        config.training, batch_size=SCORING_BATCH, eval_steps=None))
    return make_dataset(file_pattern, tft_output, one_pass, training=False, keep_in_memory=False)


def _record_files(file_pattern: str | list[str]) -> tuple[list[str], str]:
    """The files matching the pattern(s), and their TFRecord compression."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
    if not files:
        raise ValueError(f"no transformed examples match {file_pattern}")
    # Transform writes GZIP'd TFRecords (*.gz); anything else is read as plain TFRecords.
    return files, "GZIP" if all(f.endswith(".gz") for f in files) else ""


@dataclasses.dataclass(frozen=True)
class LabelStats:
    """The train split's size and label moments: the budget, the prior's scale and, for
    regression, the standardisation of what the target network predicts."""

    count: int
    mean: float
    variance: float

    def loss_scale(self, task: str) -> float:
        """What a penalty in the standardised label's units is multiplied by to sit beside
        the loss: regression's loss is in the label's units (its variance times the
        standardised one); other tasks' losses have no units (1)."""
        return self.variance if task == "regression" and self.variance > 0 else 1.0


def label_stats(file_pattern: str | list[str], tft_output: tft.TFTransformOutput,
                config: PipelineConfig) -> LabelStats:
    """One pass over the split parsing only the label (1.5M taxi rows: a few seconds)."""
    files, compression = _record_files(file_pattern)
    spec = {config.label.name: tft_output.transformed_feature_spec()[config.label.name]}
    labels = tf.data.TFRecordDataset(files, compression, num_parallel_reads=tf.data.AUTOTUNE
                                     ).batch(4096).map(
        lambda r: tf.cast(tf.io.parse_example(r, spec)[config.label.name], tf.float64))
    zero = tf.constant(0.0, tf.float64)
    n, total, squares = labels.reduce((zero, zero, zero), lambda acc, y: (
        acc[0] + tf.cast(tf.size(y), tf.float64), acc[1] + tf.reduce_sum(y),
        acc[2] + tf.reduce_sum(tf.square(y))))
    count = int(n)
    mean = float(total) / max(count, 1)
    variance = max(float(squares) / max(count, 1) - mean * mean, 0.0)
    return LabelStats(count, mean, variance)


def steps_per_epoch(config: PipelineConfig, train_examples: int) -> int:
    """One pass over the train split, or train_steps spread over the epochs when set."""
    t = config.training
    if t.train_steps is not None:
        return max(1, t.train_steps // t.epochs)
    return max(1, math.ceil(train_examples / t.batch_size))


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
    # "data_loss": the loss without the pooling and L2 penalties, which early stopping and
    # the choice between candidates read (the penalties differ between them).
    if task == "binary":
        loss = tf.keras.losses.BinaryCrossentropy()
        metrics = [tf.keras.metrics.BinaryCrossentropy(name=DATA_LOSS),
                   tf.keras.metrics.AUC(name="auc"), tf.keras.metrics.BinaryAccuracy(name="accuracy")]
    elif task == "multiclass":
        loss = tf.keras.losses.SparseCategoricalCrossentropy()
        metrics = [tf.keras.metrics.SparseCategoricalCrossentropy(name=DATA_LOSS),
                   tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    else:
        loss = tf.keras.losses.MeanSquaredError()
        metrics = [tf.keras.metrics.MeanSquaredError(name=DATA_LOSS),
                   tf.keras.metrics.MeanAbsoluteError(name="mae")]
    model.compile(optimizer=tf.keras.optimizers.Adam(config.training.learning_rate),
                  loss=loss, metrics=metrics)


def train(model: tf.keras.Model, config: PipelineConfig, train_ds: tf.data.Dataset,
          eval_ds: tf.data.Dataset, train_examples: int,
          log_dir: str | None = None) -> dict[str, list[float]]:
    """Epochs until the eval loss stops improving, the learning rate lowered on a plateau
    on the way; the best epoch's weights are kept."""
    t = config.training
    callbacks: list[tf.keras.callbacks.Callback] = [tf.keras.callbacks.EarlyStopping(
        monitor=f"val_{DATA_LOSS}", patience=t.early_stopping_patience, restore_best_weights=True)]
    if t.lr_plateau_factor < 1.0:
        callbacks.append(tf.keras.callbacks.ReduceLROnPlateau(
            monitor=f"val_{DATA_LOSS}", factor=t.lr_plateau_factor,
            patience=t.lr_plateau_patience))
    if log_dir:
        callbacks.append(tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"))
    history = model.fit(
        train_ds, epochs=t.epochs, steps_per_epoch=steps_per_epoch(config, train_examples),
        validation_data=eval_ds, validation_steps=t.eval_steps, callbacks=callbacks, verbose=2)
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def export(model: tf.keras.Model, config: PipelineConfig, tft_output: tft.TFTransformOutput,
           export_dir: str) -> None:
    """Save with both signatures (see module docstring)."""
    model.tft_layer = tft_output.transform_features_layer()
    raw_spec = tft_output.raw_feature_spec()
    serving_spec = serving_feature_spec(config, tft_output)
    out_name = config.output_name

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    @without_autograph
    def serve(serialized):
        transformed = model.tft_layer(tf.io.parse_example(serialized, serving_spec))
        return {out_name: model(transformed)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    @without_autograph
    def transform_features(serialized):
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    with without_keras_traces():
        tf.saved_model.save(model, export_dir, signatures={
            "serving_default": serve.get_concrete_function(),
            TRANSFORM_SIGNATURE: transform_features.get_concrete_function(),
        })


def run_fn(fn_args: FnArgs) -> None:
    """TFX Trainer entry point (run by every worker when training is distributed).

    With training.workers > 1 and no $TF_CONFIG (a local run), it starts the workers
    instead, each running train_and_export (trainer/launcher.py says why processes).
    """
    if launcher.should_launch(fn_args.custom_config or {}):
        launcher.launch_from_fn_args(fn_args)
        return
    train_and_export(fn_args)
    if os.environ.get("TF_CONFIG"):  # one replica of a cluster (Vertex AI)
        launcher.await_chief_export(fn_args.serving_model_dir)


def model_candidates(m: ModelConfig, anchor: bool = False) -> list[Candidate]:
    """Every model the Trainer fits, in the config's order (ModelConfig.candidate_models).
    An anchor (a benchmark's reference model) has no generator: one fit, no pooling."""
    models = m.candidate_models()
    if anchor:
        return [Candidate(models[0].generator)]
    return list(models)


def build_for_training(model: tf.keras.Model, element_spec: Any) -> None:
    """Create every variable `fit` would create in its first step: the model's (before
    warm start copies weights in), the optimizer's slots, the loss and metric totals.

    Why: a tf.function whose first trace creates variables traces again before it runs,
    so fit traced each candidate's train step twice (about 0.5 s of taxi's Trainer per
    candidate); the weights trained are the same to the bit (tests/unit/test_trainer_fit.py).
    The model runs on zeros shaped by `element_spec`, not on a batch of the training data:
    every iterator of it shares its shuffle seeds, and one thrown away reads ahead (new
    seeds at each pass) as far as timing lets it, so fit's order would vary.
    """
    features, labels = tf.nest.map_structure(
        lambda s: tf.zeros([1, *s.shape[1:]], s.dtype), element_spec)
    predictions = model(features)
    model.optimizer.build(model.trainable_variables)
    model.compiled_loss.build(predictions)
    model.compiled_metrics.build(predictions, labels)


def fit_hypernetwork(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                     train_files: str | list[str], eval_files: str | list[str],
                     strategy: tf.distribute.Strategy | None = None,
                     base_model: str | None = None, log_dir: str | None = None,
                     build: Callable[[float], tf.keras.Model] | None = None,
                     ) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """The trained model and its history: one model per generator kind, pooling strength
    and shared L2 of the config, each seeded alike and early-stopped on eval, then given its
    context intercepts (fitted on train, their strength chosen on eval from
    model.intercept_strengths); the lowest eval loss of a model as it will be exported,
    intercepts included, is kept (eval chose it: only test judges it).

    `build(loss_scale)` makes the model instead (the benchmarks pass their anchors through
    the same loop, one fit); `loss_scale` is what a strength in the standardised label's
    units is multiplied by, as ours' are.
    """
    strategy = strategy or tf.distribute.get_strategy()
    layout = ModelLayout.from_transform(config, tft_output)
    candidates = model_candidates(config.model, anchor=build is not None)
    eval_ds = make_dataset(eval_files, tft_output, config, training=False)
    stats = label_stats(train_files, tft_output, config)
    train_examples = stats.count
    regression = config.label.task == "regression"
    # Regression: the target network predicts the standardised label, and the prior and
    # the L2 are in those units too (the loss is in the label's: both scale with its variance).
    loss_scale = stats.loss_scale(config.label.task)

    def make(c: Candidate) -> tf.keras.Model:
        """The candidate, its strengths in the loss's units."""
        if build is not None:
            return build(loss_scale)
        shift = None if c.shift_pooling is None else c.shift_pooling * loss_scale
        return ConfiguredHyperModel(config, layout, c.pooling * loss_scale, train_examples,
                                    c.generator, c.shared_l2 * loss_scale, shift,
                                    name="hyper_model")
    train_scoring = scoring_dataset(train_files, tft_output, config)  # each candidate's intercepts
    best: tuple[float, tf.keras.Model, dict[str, list[float]]] | None = None
    for candidate in candidates:
        tf.keras.utils.set_random_seed(config.training.seed)
        # A new input pipeline per candidate: a shared one's shuffle state would carry over
        # as far as its prefetching read ahead (timing-dependent), and each candidate would
        # see another order from run to run.
        train_ds = make_dataset(train_files, tft_output, config)
        with strategy.scope():  # variables (model, optimizer, metrics) mirrored across workers
            model = make(candidate)
            if regression:
                model.set_output_affine(math.sqrt(loss_scale), stats.mean)
            compile_model(model, config)
            build_for_training(model, train_ds.element_spec)
            if config.training.warm_start and isinstance(model, ConfiguredHyperModel):
                warm_start(model.hyper, base_model, vocabulary_files(config, tft_output),
                           shared_columns=layout.shared_columns)
        history = train(model, config, train_ds, eval_ds, train_examples, log_dir=log_dir)
        score = min(history[f"val_{DATA_LOSS}"])
        if isinstance(model, ConfiguredHyperModel):
            # Chosen as exported: a strongly pooled model leaves more to its intercepts.
            fit = fit_model_intercepts(model, config.label.task, config.model.intercept_strengths,
                                       train_scoring, eval_ds)
            history["intercept_strength"] = [fit.strength if fit else None]
            score = fit.eval_losses[fit.strength] if fit else score
        logging.info("generator %s, pooling %s, shared L2 %s, shift pooling %s: eval %s %.6f "
                     "with intercepts (best epoch %.6f)", candidate.generator, candidate.pooling,
                     candidate.shared_l2, candidate.shift_pooling, DATA_LOSS, score,
                     min(history[f"val_{DATA_LOSS}"]))
        history["pooling"] = [float(candidate.pooling)]
        history["shared_l2"] = [float(candidate.shared_l2)]
        history["shift_pooling"] = [candidate.shift_pooling]
        history["generator"] = [candidate.generator]
        history["eval_loss_with_intercepts"] = [float(score)]
        if best is None or score < best[0]:
            best = (score, model, history)
    assert best is not None  # the config requires a strength per pooled kind
    return best[1], best[2]


def train_and_export(fn_args: FnArgs) -> tf.keras.Model:
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
    model, history = fit_hypernetwork(config, tft_output, fn_args.train_files,
                                      fn_args.eval_files, strategy, fn_args.base_model,
                                      log_dir=fn_args.model_run_dir)
    # Free training's garbage now, in one full pass (0.4 s), not at a random point of the
    # export (it once stalled the export 7-9 s in 2 runs of 3, before make_dataset
    # stopped starting tf.data's autotuning thread, the likely cause).
    gc.collect()
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
