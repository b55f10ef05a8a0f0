"""Benchmark: one compiled training step of the HyperNetwork vs a plain Keras MLP.

Both models share the target architecture of the default taxi config (pipeline/taxi.yaml;
input width from the embedded CSV's vocabularies as Transform would build them), the
batch, the loss (binary cross-entropy) and the optimizer (Adam); each
step is a `tf.function` that computes gradients and calls `apply_gradients`. The two
steps are timed alternately in the same process, after warm-up, and the medians are
reported as one JSON line.

Generator FLOPs: multiply-adds of the generator forward (trunk layers + head) per
distinct context, times the distinct contexts in the batch; FLOPs = 2 * MACs and a
training step (forward + backward) ~ 3x the forward. The GFLOP/s figure divides that
by the whole hypernetwork step time, so it is a lower bound on what the generator
achieves.

The batch's context values are drawn from the CSV's own distribution of the context
column(s), so the number of distinct contexts per batch (what the generator runs on)
is the real one.

    python bench/train_step.py [--config pipeline/taxi.yaml] [--batch 256] [--steps 200]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import numpy as np
import tensorflow as tf

from bench.machine import ROOT, cpu_info
from pipeline import configs
from pipeline.configs import PipelineConfig
from trainer.features import (
    OOV_BUCKETS,
    bucket_name,
    own_vocabulary_columns,
    shared_vocabulary_columns,
)
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.materialize import build_target_model
from trainer.model import ModelLayout, context_spec, generator_config, target_spec


def taxi_shapes(config: PipelineConfig, csv_path: str) -> tuple[ModelLayout, dict[str, np.ndarray]]:
    """The layout Transform would give (vocabularies with min count + OOV; contexts their
    own, the other columns one shared) and, per context feature, the id of every CSV row
    (rare values: the OOV id)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    sizes, ids, shared_tokens = {}, {}, 0
    for name in config.features.categorical:
        counts = Counter(r[name] for r in rows)  # "" (a gap) is a token, as in Transform
        vocab = [v for v, c in counts.most_common() if c >= config.features.vocab_min_count]
        if name not in own_vocabulary_columns(config):
            shared_tokens += len(vocab)
            continue
        sizes[name] = len(vocab) + OOV_BUCKETS
        index = {v: i for i, v in enumerate(vocab)}
        ids[name] = np.array([index.get(r[name], len(vocab)) for r in rows])
    sizes.update({bucket_name(c): config.features.num_buckets for c in config.features.bucketized})
    layout = ModelLayout(sizes, tuple(shared_vocabulary_columns(config)), shared_tokens, 1)
    return layout, {c: ids[c] for c in config.context}


def generator_macs_per_context(model: HyperNetwork) -> int:
    """Multiply-adds of trunk + head for one distinct context (chunked: all its chunks)."""
    config, spec = model.generator_config, model.target
    width = model.context.embedding_dim * len(model.context.categorical) + len(
        model.context.numeric)
    if model.context.is_static:
        width = model.context.embedding_dim
    rows = 1
    if config.chunk_size:
        rows = math.ceil(spec.num_params / config.chunk_size)
        width += config.chunk_embedding_dim
    macs = 0
    for units in config.trunk_units:
        macs += width * units
        width = units
    macs += width * (config.chunk_size or spec.num_params)
    return rows * macs


def make_step(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer):
    bce = tf.keras.losses.BinaryCrossentropy()

    @tf.function
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            loss = bce(labels, model(inputs, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step


def timed(step, *args) -> float:
    start = time.perf_counter()
    step(*args).numpy()  # .numpy() waits for the result
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=configs.DEFAULT_CONFIG)
    parser.add_argument("--csv", default=os.path.join(ROOT, "data", "taxi", "data.csv"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(args.seed)
    config = configs.load(args.config)
    layout, context_ids = taxi_shapes(config, args.csv)
    target, context = target_spec(config, layout), context_spec(config, layout)
    rng = np.random.default_rng(args.seed)
    features = tf.constant(rng.normal(size=(args.batch, target.input_dim)), tf.float32)
    labels = tf.constant(rng.integers(0, 2, size=(args.batch, 1)), tf.float32)
    hyper_inputs = {FEATURES: features}
    picked = rng.integers(0, len(next(iter(context_ids.values()), [0])), size=args.batch)
    for name, ids in context_ids.items():
        hyper_inputs[name] = tf.constant(ids[picked], tf.int64)
    distinct = len({tuple(int(hyper_inputs[n][i]) for n in context.names)
                    for i in range(args.batch)})

    hyper = HyperNetwork(target, context, generator_config(config))
    hyper(hyper_inputs)
    plain = build_target_model(target, name="plain_mlp")
    hyper_step = make_step(hyper, tf.keras.optimizers.Adam(1e-3))
    plain_step = make_step(plain, tf.keras.optimizers.Adam(1e-3))

    for _ in range(args.warmup):
        plain_step(features, labels).numpy()
        hyper_step(hyper_inputs, labels).numpy()
    plain_ms, hyper_ms = [], []
    for _ in range(args.steps):  # alternate, so drift hits both alike
        plain_ms.append(timed(plain_step, features, labels))
        hyper_ms.append(timed(hyper_step, hyper_inputs, labels))

    plain_med, hyper_med = statistics.median(plain_ms), statistics.median(hyper_ms)
    gen_macs = generator_macs_per_context(hyper) * distinct
    gflop_step = 3 * 2 * gen_macs / 1e9
    result = {
        "bench": "train_step",
        "batch": args.batch,
        "plain_ms": round(plain_med, 3),
        "hyper_ms": round(hyper_med, 3),
        "ratio": round(hyper_med / plain_med, 2),
        "plain_ms_p10_p90": [round(float(np.percentile(plain_ms, q)), 3) for q in (10, 90)],
        "hyper_ms_p10_p90": [round(float(np.percentile(hyper_ms, q)), 3) for q in (10, 90)],
        "steps": args.steps,
        "warmup": args.warmup,
        "config": os.path.relpath(args.config, ROOT),
        "target": list(target.layer_widths),
        "target_params": target.num_params,
        "plain_params": plain.count_params(),
        "generator_params": int(sum(np.prod(v.shape) for v in hyper.trainable_variables)),
        "contexts": dict(context.categorical),
        "distinct_contexts": distinct,
        "generator_mflop_fwd": round(2 * gen_macs / 1e6, 2),
        "generator_gflop_train_step": round(gflop_step, 4),
        "generator_gflops": round(gflop_step / (hyper_med / 1e3), 2),
        **cpu_info(),
        "tf": tf.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
