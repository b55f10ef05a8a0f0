"""Benchmark: one compiled training step of the HyperNetwork vs a plain Keras MLP.

Both models share the target architecture (taxi-like default: 48 -> 64 -> 32 -> 1
sigmoid), the batch, the loss (binary cross-entropy) and the optimizer (Adam); each
step is a `tf.function` that computes gradients and calls `apply_gradients`. The two
steps are timed alternately in the same process, after warm-up, and the medians are
reported as one JSON line.

Generator FLOPs: multiply-adds of the generator forward (trunk layers + head) per
distinct context, times the distinct contexts in the batch; FLOPs = 2 * MACs and a
training step (forward + backward) ~ 3x the forward. The GFLOP/s figure divides that
by the whole hypernetwork step time, so it is a lower bound on what the generator
achieves.

    python bench/train_step.py [--batch 256] [--steps 200] [--warmup 20] [--seed 0]
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # before TensorFlow is imported: Keras 2
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.functional_target import build_target_model  # noqa: E402
from trainer.generator import ContextSpec, GeneratorConfig  # noqa: E402
from trainer.hypernetwork import FEATURES, HyperNetwork  # noqa: E402
from trainer.target_spec import TargetSpec  # noqa: E402

TARGET = TargetSpec(48, (64, 32), 1, activation="relu", head="sigmoid")
CONTEXT = ContextSpec(categorical={"pickup_area": 90, "dropoff_area": 80}, embedding_dim=8)


def cpu_info() -> dict:
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpu_usable": usable, "cpu_model": model}


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
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tf.keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    features = tf.constant(rng.normal(size=(args.batch, TARGET.input_dim)), tf.float32)
    labels = tf.constant(rng.integers(0, 2, size=(args.batch, 1)), tf.float32)
    hyper_inputs = {FEATURES: features}
    for name, vocab in CONTEXT.categorical.items():
        hyper_inputs[name] = tf.constant(rng.integers(0, vocab, size=args.batch), tf.int64)
    distinct = len({tuple(int(hyper_inputs[n][i]) for n in CONTEXT.names)
                    for i in range(args.batch)})

    hyper = HyperNetwork(TARGET, CONTEXT, GeneratorConfig())
    hyper(hyper_inputs)
    plain = build_target_model(TARGET, name="plain_mlp")
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
        "target": list(TARGET.layer_widths),
        "target_params": TARGET.num_params,
        "plain_params": plain.count_params(),
        "generator_params": int(sum(np.prod(v.shape) for v in hyper.trainable_variables)),
        "contexts": dict(CONTEXT.categorical),
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
