"""Quality benchmark: the configured hypernetwork vs a plain MLP vs gradient-boosted trees.

    python bench/quality.py [--config pipeline/taxi.yaml] [--seeds 3]
                            [--set model.pooling=[1,10] ...] [--no-gbt] [--no-plain]

Both Keras models train on the Transform output of one pipeline run through the
Trainer's own loop, `trainer.task.fit_hypernetwork` (same datasets, optimizer, budget,
early stopping on the eval split's data loss, and for the hypernetwork one model per
`model.pooling` strength, the best on eval kept); the plain MLP comes in through its
`build` argument: the same target architecture with the context features one-hot
encoded as ordinary inputs (trained once, at the first pooling strength, which it
ignores). Warm start is off: each model starts from its seeded initialisation.

Every model is then scored once on the whole *test* split (accuracy at 0.5 and
sklearn's ROC AUC), which nothing above read: the eval split chose the epoch and the
pooling strength. The GBT reference is sklearn's HistGradientBoostingClassifier fit on
the raw ExampleGen train split (categorical columns as categorical) and scored on the
same test rows. With --seeds N every number is the median over N seeds.

ExampleGen -> StatisticsGen -> SchemaGen -> Transform of the config's pipeline run
first in a temporary directory (a partial run of create_pipeline's DAG, its Transform
also materializing the test split, which the pipeline's own does not write). Prints one
JSON line on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from tfx import v1 as tfx
from tfx.components.trainer.fn_args_utils import DataAccessor
from tfx.components.util import tfxio_utils
from tfx.types import standard_artifacts
from tfx_bsl.public import tfxio

from bench.grouped_data import rule_label
from bench.machine import cpu_info
from pipeline import configs
from pipeline.configs import PipelineConfig
from trainer.model import ModelLayout, PlainMLP
from trainer.task import DATA_LOSS, fit_hypernetwork

SCORED_SPLIT = "test"  # never "eval": early stopping and the pooling choice read it

EVAL_BATCH = 1024
GBT_MAX_CATEGORIES = 250  # HistGradientBoosting needs fewer categories than max_bins (255)


# -- pipeline artifacts -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunArtifacts:
    """URIs of one finished run's ExampleGen and Transform outputs."""

    raw_examples: str  # CsvExampleGen/examples/<id>
    transformed_examples: str  # Transform/transformed_examples/<id>
    transform_graph: str  # Transform/transform_graph/<id>


def _newest(parent: str) -> str:
    """The artifact directory with the highest numeric id under parent."""
    ids = [d for d in os.listdir(parent) if d.isdigit()] if os.path.isdir(parent) else []
    if not ids:
        raise FileNotFoundError(f"no artifact under {parent}")
    return os.path.join(parent, max(ids, key=int))


def find_artifacts(pipeline_root: str) -> RunArtifacts:
    return RunArtifacts(
        raw_examples=_newest(os.path.join(pipeline_root, "CsvExampleGen", "examples")),
        transformed_examples=_newest(
            os.path.join(pipeline_root, "Transform", "transformed_examples")),
        transform_graph=_newest(os.path.join(pipeline_root, "Transform", "transform_graph")),
    )


def run_transform(config: PipelineConfig, output_dir: str) -> str:
    """ExampleGen..Transform of the config's pipeline into output_dir, the test split
    transformed too (the pipeline's Transform writes only the Trainer's); returns its root."""
    from pipeline.pipeline import TRAINER_SPLITS, create_pipeline

    config = dataclasses.replace(config, output_dir=output_dir, enable_cache=False)
    dag = create_pipeline(
        config,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        transform_splits=(*TRAINER_SPLITS, SCORED_SPLIT))
    from tfx.orchestration.pipeline import RunOptions

    with contextlib.redirect_stdout(sys.stderr):
        tfx.orchestration.LocalDagRunner().run(dag, run_options=RunOptions(to_nodes=["Transform"]))
    return config.pipeline_root


def data_accessor(examples_uri: str) -> DataAccessor:
    """The DataAccessor the Trainer would get for this Examples artifact."""
    artifact = standard_artifacts.Examples()
    artifact.uri = examples_uri
    artifact.split_names = '["train", "eval", "test"]'
    descriptors = ["bench", "quality"]
    return DataAccessor(
        tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
            [artifact], descriptors),
        record_batch_factory=tfxio_utils.get_record_batch_factory_from_artifact(
            [artifact], descriptors),
        data_view_decode_fn=None)


def split_files(examples_uri: str, split: str) -> list[str]:
    return [os.path.join(examples_uri, f"Split-{split}", "*")]


# -- Keras models -------------------------------------------------------------
def score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(np.mean((probs >= 0.5) == (labels > 0.5))),
            "auc": float(roc_auc_score(labels, probs))}


def split_arrays(accessor: DataAccessor, files: list[str], tft_output: tft.TFTransformOutput,
                 config: PipelineConfig) -> list[tuple[dict[str, tf.Tensor], np.ndarray]]:
    """The whole split once, in order, as (features, labels) batches."""
    options = tfxio.TensorFlowDatasetOptions(
        batch_size=EVAL_BATCH, label_key=config.label.name, shuffle=False, num_epochs=1)
    ds = accessor.tf_dataset_factory(files, options, tft_output.transformed_metadata.schema)
    return [(x, np.reshape(y.numpy(), [-1])) for x, y in ds]


def fit_and_score(config: PipelineConfig, art: RunArtifacts, tft_output: tft.TFTransformOutput,
                  test_batches, build: Callable[[float], tf.keras.Model] | None = None,
                  ) -> dict[str, Any]:
    """Train through the Trainer's loop (`build`: None = the configured hypernetwork),
    then score on the test batches."""
    start = time.time()
    with contextlib.redirect_stdout(sys.stderr):
        model, history = fit_hypernetwork(
            config, tft_output, split_files(art.transformed_examples, "train"),
            split_files(art.transformed_examples, "eval"), build=build)
    seconds = time.time() - start
    probs = np.concatenate([np.reshape(model(x).numpy(), [-1]) for x, _ in test_batches])
    labels = np.concatenate([y for _, y in test_batches])
    out = score(labels, probs)
    out.update(params=int(sum(np.prod(v.shape) for v in model.trainable_variables)),
               epochs=len(history["loss"]),
               best_epoch=int(np.argmin(history[f"val_{DATA_LOSS}"])) + 1,
               pooling=history["pooling"][0],
               seconds=round(seconds, 1))
    return out


# -- gradient-boosted trees on the raw columns --------------------------------
def read_raw(examples_uri: str, split: str) -> dict[str, list]:
    """Every feature of a gzipped tf.Example split as a column list (None = missing)."""
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    rows = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        row = {}
        for key, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value) if kind else []
            row[key] = values[0] if values else None
        rows.append(row)
    keys = sorted({k for r in rows for k in r})
    return {k: [r.get(k) for r in rows] for k in keys}


def _number(values: Sequence[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def raw_label(columns: dict[str, list], config: PipelineConfig) -> np.ndarray:
    """The Transform's label, from raw columns (gaps count as 0, as in preprocessing)."""
    rule, label = config.label.rule, config.label
    if rule is None:
        if label.task != "binary":
            raise SystemExit("bench/quality.py scores binary labels only")
        return (np.nan_to_num(_number(columns[label.column])) > 0.5).astype(np.int64)
    rhs = _number(columns[rule.rhs]) if isinstance(rule.rhs, str) else rule.rhs
    return rule_label(rule, _number(columns[rule.lhs]), rhs)


def raw_matrix(columns: dict[str, list], config: PipelineConfig,
               vocabs: dict[str, dict[Any, int]]) -> np.ndarray:
    """Numeric columns as floats (NaN = missing), categorical ones as vocabulary codes."""
    n = len(next(iter(columns.values())))
    parts = []
    for name in (*config.features.numeric, *config.features.log_numeric):
        parts.append(_number(columns.get(name, [None] * n)))
    for name in config.features.categorical:
        vocab = vocabs[name]
        parts.append(np.array([vocab.get(v, np.nan) for v in columns.get(name, [None] * n)],
                              dtype=np.float64))
    return np.stack(parts, axis=1)


def gbt_scores(art: RunArtifacts, config: PipelineConfig, seed: int) -> dict[str, float]:
    train_cols = read_raw(art.raw_examples, "train")
    test_cols = read_raw(art.raw_examples, SCORED_SPLIT)
    vocabs = {}
    for name in config.features.categorical:
        counts = Counter(v for v in train_cols.get(name, []) if v is not None)
        vocabs[name] = {v: i for i, (v, _) in enumerate(counts.most_common(GBT_MAX_CATEGORIES))}
    n_numeric = len(config.features.numeric) + len(config.features.log_numeric)
    mask = [i >= n_numeric for i in range(n_numeric + len(config.features.categorical))]
    model = HistGradientBoostingClassifier(categorical_features=mask, random_state=seed)
    model.fit(raw_matrix(train_cols, config, vocabs), raw_label(train_cols, config))
    probs = model.predict_proba(raw_matrix(test_cols, config, vocabs))[:, 1]
    return {**score(raw_label(test_cols, config), probs), "rows": len(probs)}


# -- main ---------------------------------------------------------------------
def apply_overrides(config_path: str, overrides: Sequence[str]) -> PipelineConfig:
    """Load the YAML config with `section.key=yaml-value` overrides applied."""
    with open(config_path) as f:
        data = yaml.safe_load(f) or {}
    for item in overrides:
        key, _, value = item.partition("=")
        *sections, leaf = key.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = yaml.safe_load(value)
    data.setdefault("output_dir", os.getcwd())
    return configs.from_dict(data, source=config_path,
                             base_dir=os.path.dirname(os.path.abspath(config_path)))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=configs.DEFAULT_CONFIG, help="YAML pipeline config")
    parser.add_argument("--seeds", type=int, default=1, help="median over this many seeds")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (YAML syntax), e.g. model.generator_units=[32]")
    parser.add_argument("--no-gbt", action="store_true", help="skip the gradient-boosted trees")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain MLP")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    config = apply_overrides(args.config, args.set)
    if config.label.task != "binary":
        raise SystemExit("bench/quality.py scores binary labels only")
    # A benchmark compares cold starts: no blessed model's weights copied in.
    config = dataclasses.replace(config, training=dataclasses.replace(config.training,
                                                                       warm_start=False))
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        root = run_transform(config, tmp)
        art = find_artifacts(root)
        tft_output = tft.TFTransformOutput(art.transform_graph)
        layout = ModelLayout.from_transform(config, tft_output)
        accessor = data_accessor(art.transformed_examples)
        test_batches = split_arrays(accessor, split_files(art.transformed_examples, SCORED_SPLIT),
                                    tft_output, config)
        test_rows = sum(len(y) for _, y in test_batches)

        runs: dict[str, list[dict[str, Any]]] = {"hyper": [], "plain": [], "gbt": []}
        for i in range(args.seeds):
            seeded = dataclasses.replace(
                config, training=dataclasses.replace(config.training,
                                                     seed=config.training.seed + i))
            runs["hyper"].append(fit_and_score(seeded, art, tft_output, test_batches))
            print(f"seed {seeded.training.seed} hyper: {runs['hyper'][-1]}", file=sys.stderr)
            if not args.no_plain:
                runs["plain"].append(fit_and_score(
                    seeded, art, tft_output, test_batches,
                    build=lambda _scale, c=seeded: PlainMLP(c, layout, name="plain_mlp")))
                print(f"seed {seeded.training.seed} plain: {runs['plain'][-1]}", file=sys.stderr)
            if not args.no_gbt:
                runs["gbt"].append(gbt_scores(art, seeded, seeded.training.seed))
                print(f"seed {seeded.training.seed} gbt: {runs['gbt'][-1]}", file=sys.stderr)
                if runs["gbt"][-1]["rows"] != test_rows:
                    raise SystemExit(f"GBT scored {runs['gbt'][-1]['rows']} raw test rows, the "
                                     f"Keras models {test_rows} transformed ones")

    def med(kind: str, key: str) -> float | None:
        values = [r[key] for r in runs[kind]]
        return round(float(statistics.median(values)), 4) if values else None

    result = {
        "bench": "quality", "dataset": config.name.removeprefix("hypernet-"),
        "split": SCORED_SPLIT, "test_rows": test_rows,
        "accuracy": med("hyper", "accuracy"), "auc": med("hyper", "auc"),
        "plain_mlp_accuracy": med("plain", "accuracy"), "plain_mlp_auc": med("plain", "auc"),
        "gbt_accuracy": med("gbt", "accuracy"), "gbt_auc": med("gbt", "auc"),
        "hyper_params": runs["hyper"][0]["params"],
        "plain_params": runs["plain"][0]["params"] if runs["plain"] else None,
        "steps": config.training.train_steps,
        "seeds": args.seeds,
        "hyper_pooling": med("hyper", "pooling"),  # the strength eval chose (median)
        "hyper_train_seconds": med("hyper", "seconds"),
        "plain_train_seconds": med("plain", "seconds"),
        **cpu_info(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
