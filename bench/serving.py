"""Serving latency: the hypernetwork's model vs one materialized target network vs a plain MLP.

    python bench/serving.py [--pipeline-root tfx_pipeline_output/hypernet-taxi] [--repeats 300]

All three are SavedModels called through `serving_default` on serialized raw taxi
tf.Examples, with the same Transform graph in front: the pushed hypernetwork, the
pushed target network of the most frequent context (from a finished run, e.g. `make
run`), and a plain Keras MLP of the same target architecture (random weights, same
serving wrapper). One process; medians of many calls after warm-up; one JSON line per
batch size (1 and 256).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import tensorflow as tf
import tensorflow_transform as tft

from bench.machine import TAXI_CSV, cpu_info, median_ms
from pipeline import configs
from pipeline.configs import MANIFEST_FILE
from trainer.examples import read_csv, to_example
from trainer.hypernet.materialize import build_target_model
from trainer.model import ConfiguredHyperModel, ModelLayout, target_spec
from trainer.target_export import TargetNetworkServing


def newest(pattern: str) -> str:
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise SystemExit(f"nothing matches {pattern}: run the pipeline first (make run)")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=configs.DEFAULT_CONFIG)
    parser.add_argument("--pipeline-root", default=None)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    config = configs.load(args.config)
    root = args.pipeline_root or config.pipeline_root
    hyper_dir = newest(os.path.join(root, "serving_model", "*"))
    targets_dir = newest(os.path.join(root, "serving_target_networks", "*"))
    with open(os.path.join(targets_dir, MANIFEST_FILE)) as f:
        manifest = json.load(f)
    network = max(manifest["networks"], key=lambda n: (n.get("metrics") or {}).get(
        "example_count", 0))
    transform_dir = newest(os.path.join(root, "Transform", "transform_graph", "*"))
    tft_output = tft.TFTransformOutput(transform_dir)

    # The plain MLP: the target architecture with its own (random) weights, same wrapper.
    layout = ModelLayout.from_transform(config, tft_output)
    composite = ConfiguredHyperModel(config, layout)
    plain = build_target_model(target_spec(config, layout), name="plain_mlp")
    plain_module = TargetNetworkServing(plain, composite, tft_output, config)
    plain_dir = tempfile.mkdtemp(prefix="plain-mlp-")
    tf.saved_model.save(plain_module, plain_dir, signatures={"serving_default": plain_module.serve})

    models = {
        "hyper": tf.saved_model.load(hyper_dir).signatures["serving_default"],
        "target": tf.saved_model.load(os.path.join(targets_dir, network["path"]))
        .signatures["serving_default"],
        "plain": tf.saved_model.load(plain_dir).signatures["serving_default"],
    }
    rows, dtypes = read_csv(TAXI_CSV, limit=256)
    label_only = set(config.label_only_columns)
    examples = [to_example({k: v for k, v in r.items() if k not in label_only}, dtypes)
                for r in rows]
    for batch in (1, 256):
        serialized = tf.constant(examples[:batch])
        result = {"bench": "serving", "batch": batch}
        for name, fn in models.items():
            result[f"{name}_ms"] = round(median_ms(lambda f=fn, s=serialized: f(examples=s),
                                                   args.repeats), 3)
        result.update({"target_context": network["context"], "repeats": args.repeats,
                       "target_params": network["num_params"], **cpu_info()})
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
