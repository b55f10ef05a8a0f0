"""Shared test helpers: small real data, an in-process Transform, tf.Example builders."""

from __future__ import annotations

import csv
import functools
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_CSV = os.path.join(ROOT, "data", "taxi", "data.csv")


def read_csv(path: str, limit: int | None = None) -> tuple[list[dict[str, str]], dict[str, tf.dtypes.DType]]:
    """Rows as strings ('' = missing) and each column's dtype as CsvExampleGen infers it."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    dtypes: dict[str, tf.dtypes.DType] = {}
    for column in rows[0]:
        values = [r[column] for r in rows if r[column] != ""]
        dtypes[column] = _infer(values)
    return rows[:limit] if limit else rows, dtypes


def _infer(values: list[str]) -> tf.dtypes.DType:
    for dtype, parse in ((tf.int64, int), (tf.float32, float)):
        try:
            for v in values:
                parse(v)
            return dtype
        except ValueError:
            continue
    return tf.string


def to_example(row: Mapping[str, Any], dtypes: Mapping[str, tf.dtypes.DType] | None = None) -> bytes:
    """A serialized tf.Example; '' and None values are left out (missing)."""
    example = tf.train.Example()
    for key, value in row.items():
        if value in ("", None):
            continue
        dtype = dtypes[key] if dtypes else (
            tf.string if isinstance(value, str) else tf.int64 if isinstance(value, int) else tf.float32)
        feature = example.features.feature[key]
        if dtype == tf.string:
            feature.bytes_list.value.append(str(value).encode())
        elif dtype == tf.int64:
            feature.int64_list.value.append(int(value))
        else:
            feature.float_list.value.append(float(value))
    return example.SerializeToString()


def raw_feature_spec(dtypes: Mapping[str, tf.dtypes.DType]) -> dict[str, tf.io.VarLenFeature]:
    return {k: tf.io.VarLenFeature(v) for k, v in dtypes.items()}


def run_transform(config, rows, dtypes, output_dir: str | None = None):
    """Analyze and apply the project's preprocessing_fn in-process; returns TFTransformOutput."""
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io

    from pipeline.configs import serialize
    from trainer.preprocessing import preprocessing_fn

    output_dir = output_dir or tempfile.mkdtemp(prefix="tft-")
    spec = raw_feature_spec(dtypes)
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(spec)
    instances = [{k: ([] if v == "" else [_cast(v, dtypes[k])]) for k, v in r.items()} for r in rows]
    fn = functools.partial(preprocessing_fn, custom_config=serialize(config))
    with tft_beam.Context(temp_dir=os.path.join(output_dir, "tmp"), force_tf_compat_v1=False):
        (_, _), transform_fn = (instances, metadata) | tft_beam.AnalyzeAndTransformDataset(
            fn, output_record_batches=True)
        _ = transform_fn | tft_beam.WriteTransformFn(output_dir)
    # TFX's Transform also records the raw schema; TFTransformOutput.raw_feature_spec() reads it.
    metadata_io.write_metadata(metadata, os.path.join(output_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
    return tft.TFTransformOutput(output_dir)


def _cast(value: str, dtype: tf.dtypes.DType):
    if dtype == tf.int64:
        return int(value)
    if dtype == tf.float32:
        return float(value)
    return value.encode()
