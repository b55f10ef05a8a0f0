"""Shared test helpers: small real data, an in-process Transform, tf.Example builders."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer.examples import read_csv, to_example  # noqa: F401 - the tests build requests as a client does

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_CSV = os.path.join(ROOT, "data", "taxi", "data.csv")


def transform(tft_output, rows, dtypes, drop=()) -> dict[str, Any]:
    """Raw rows through Transform's serving layer: transformed features as NumPy arrays
    (`drop`: columns left out of the examples)."""
    layer = tft_output.transform_features_layer()
    spec = {k: v for k, v in tft_output.raw_feature_spec().items() if k not in drop}
    serialized = tf.constant([to_example({k: v for k, v in r.items() if k not in drop}, dtypes)
                              for r in rows])
    return {k: v.numpy() for k, v in layer(tf.io.parse_example(serialized, spec)).items()}


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
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    # The FnApiRunner, as TFX's components use: the bundle-based DirectRunner leaves
    # tft.bucketize's quantiles stage unexecuted ("watermark-pending bundles").
    with beam.Pipeline(runner=FnApiRunner()) as p, tft_beam.Context(temp_dir=os.path.join(output_dir, "tmp"),
                                                force_tf_compat_v1=False):
        raw = p | beam.Create(instances, reshuffle=False)
        transform_fn = (raw, metadata) | tft_beam.AnalyzeDataset(fn)
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


def pipeline_env(**extra: str) -> dict[str, str]:
    """Environment for a pipeline subprocess: Keras 2, no cloud probe, the project on the path."""
    env = dict(os.environ)
    env.update(TF_USE_LEGACY_KERAS="1", NO_GCE_CHECK="true", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def write_config(path: str, base: str | None = None, **overrides: Any) -> str:
    """A YAML config: the base file (or nothing) with top-level/section keys overridden."""
    import yaml

    data: dict[str, Any] = {}
    if base:
        with open(base) as f:
            data = yaml.safe_load(f)
        for key in ("data_root", "schema_file"):  # relative to the base file: make absolute
            if data.get(key):
                data[key] = os.path.normpath(os.path.join(os.path.dirname(base), data[key]))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return path


def load_in_fresh_process(model_dir: str, examples: list[bytes], signature: str = "serving_default") -> dict:
    """Run a SavedModel signature in a new Python process (nothing shared with the test's)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys, base64, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "ex = [base64.b64decode(e) for e in json.load(sys.stdin)]\n"
        "out = m.signatures[sys.argv[2]](examples=tf.constant(ex))\n"
        "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n"
    )
    import base64

    payload = json.dumps([base64.b64encode(e).decode() for e in examples])
    done = subprocess.run([sys.executable, "-c", code, model_dir, signature], input=payload,
                          capture_output=True, text=True, env=pipeline_env(), check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
