"""Benchmark: one training step of the configured hypernetwork vs a plain MLP.

Both models share the target architecture and input layout of the taxi config
(pipeline/taxi.yaml; input width from the embedded CSV's vocabularies as Transform would
build them) and the batch; both are compiled by the Trainer's own `compile_model` (loss,
optimizer, metrics) and each step is that model's Keras `train_step` (gradients,
`apply_gradients`, metrics; for the hypernetwork also the pooling penalty, which Keras
adds to the loss), wrapped in one `tf.function`. The two steps are timed alternately in
the same process, after warm-up, over the same few batches, and the medians are
reported as one JSON line.

Contexts: without --contexts, the taxi context (payment_type) with ids drawn from the
CSV's own rows, so the distinct contexts per batch are the real ones. With --contexts N,
the context is a synthetic categorical column of N values (plus Transform's
out-of-vocabulary id) drawn uniformly; the rest of the input layout is the taxi one. The
plain MLP sees the same dense features and no context.

Generator FLOPs are reported for the "full" kind only: trunk + head multiply-adds per
conditioning row, times the rows it runs on (every possible context when they are few,
else the batch's distinct ones); FLOPs = 2 * MACs and a training step ~ 3x the forward;
the GFLOP/s figure divides that by the whole step time (a lower bound). A pooled kind
("film", "lowrank") has no such generator: its work is the shared target network plus a
bias-free linear map from conditioning to deviation, so a GFLOP/s figure would mean
nothing. The line reports that map's forward MFLOPs instead, on the step's conditioning
rows and on the pooling penalty's rows (one per context value, every step).

`contexts` is the number of context values the batches draw from (taxi: the distinct
ids of the CSV's rows, the out-of-vocabulary one included).

`--kind` times another generator kind than the first candidate's, at the pooling and
shared L2 of the config's first candidate of that kind (`lowrank`: two of the three
default candidates, the one eval keeps on taxi).

    python bench/train_step.py [--contexts N] [--kind KIND] [--config pipeline/taxi.yaml]
                               [--batch 256] [--steps 200]
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

from bench.machine import ROOT, TAXI_CSV, cpu_info
from pipeline import configs
from pipeline.configs import Candidate, PipelineConfig
from trainer.features import (
    OOV_BUCKETS,
    bucket_name,
    own_vocabulary_columns,
    shared_vocabulary_columns,
)
from trainer.hypernet.context import ContextSpec
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.kinds import GENERATOR_KINDS
from trainer.hypernet.materialize import build_target_model
from trainer.model import ModelLayout, context_spec, generator_config, target_spec
from trainer.task import compile_model

SYNTHETIC = "synthetic_context"  # --contexts N: the context column's name


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


def generator_macs_per_row(model: HyperNetwork) -> int | None:
    """Multiply-adds of a "full" generator's trunk + head for one conditioning row (chunked:
    all its chunks); None for other kinds (no trunk or head to count)."""
    config, spec = model.generator_config, model.target
    if config.kind != "full":
        return None
    width, rows = model.encoder.output_dim, 1
    if config.chunk_size:
        rows = math.ceil(spec.num_params / config.chunk_size)
        width += config.chunk_embedding_dim
    macs = 0
    for units in config.trunk_units:
        macs += width * units
        width = units
    macs += width * (config.chunk_size or spec.num_params)
    return rows * macs


def conditioning_rows(model: HyperNetwork, distinct: int) -> int:
    """Rows the generator runs on per step: every possible context, or the batch's distinct."""
    if model.enumerates_contexts:
        return int(model.context.max_distinct or 1)
    return distinct if not model.context.is_static else 1


def train_examples(config: PipelineConfig, csv_path: str) -> int:
    """The train split's expected rows (the CSV's share of train hash buckets): sets the
    pooling penalty's weight, as in the Trainer (its size does not change the work)."""
    with open(csv_path, newline="") as f:
        rows = sum(1 for _ in f) - 1
    buckets = config.splits.buckets()
    return max(1, rows * buckets["train"] // sum(buckets.values()))


def make_step(model: tf.keras.Model):
    """The model's Keras train_step as one graph (compiled by the Trainer's compile_model)."""
    return tf.function(model.train_step, autograph=False)


def timed(step, batch) -> float:
    start = time.perf_counter()
    step(batch)["loss"].numpy()  # .numpy() waits for the result
    return (time.perf_counter() - start) * 1e3


def timed_candidate(config: PipelineConfig, kind: str | None) -> Candidate:
    """The config's first candidate of `kind` (None: the first candidate); a kind none of
    them has: the first candidate's pooling (unused by the unpooled "full"), no shared L2.
    Strengths go in as they stand: taxi is binary, its loss has no units to scale by."""
    models = config.model.candidate_models()
    of_kind = [c for c in models if kind is None or c.generator == kind]
    return of_kind[0] if of_kind else Candidate(kind, models[0].pooling, 0.0)


def synthetic_context(config: PipelineConfig, n: int) -> ContextSpec:
    """A categorical context of n values plus the out-of-vocabulary id, as Transform gives."""
    return ContextSpec({SYNTHETIC: n + OOV_BUCKETS}, (), config.model.context_embedding_dim,
                       oov_ids={SYNTHETIC: n})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contexts", type=int, default=None,
                        help="a synthetic context of N uniformly drawn values "
                             "(default: the taxi context, drawn as in the CSV)")
    parser.add_argument("--config", default=configs.DEFAULT_CONFIG)
    parser.add_argument("--kind", choices=sorted(GENERATOR_KINDS), default=None,
                        help="the generator kind timed (default: the first candidate's)")
    parser.add_argument("--csv", default=TAXI_CSV)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per model")
    parser.add_argument("--batches", type=int, default=8,
                        help="distinct batches the steps cycle through")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.contexts is not None and args.contexts < 1:
        parser.error("--contexts must be >= 1")

    tf.keras.utils.set_random_seed(args.seed)
    config = configs.load(args.config)
    layout, context_ids = taxi_shapes(config, args.csv)
    target = target_spec(config, layout)
    if args.contexts is None:
        context = context_spec(config, layout)
        population = len(next(iter(context_ids.values()), [0]))  # CSV rows
        drawn = len({tuple(r) for r in zip(*context_ids.values())}) if context_ids else 1
    else:
        context = synthetic_context(config, args.contexts)
        context_ids = {SYNTHETIC: np.arange(args.contexts)}  # uniform: each value once
        population = drawn = args.contexts
    rng = np.random.default_rng(args.seed)
    hyper_batches, plain_batches, distinct = [], [], []
    for _ in range(args.batches):
        features = tf.constant(rng.normal(size=(args.batch, target.input_dim)), tf.float32)
        labels = tf.constant(rng.integers(0, 2, size=(args.batch, 1)), tf.float32)
        picked = rng.integers(0, population, size=args.batch)
        inputs = {FEATURES: features}
        inputs.update({n: tf.constant(ids[picked], tf.int64) for n, ids in context_ids.items()})
        hyper_batches.append((inputs, labels))
        plain_batches.append((features, labels))
        distinct.append(len({tuple(int(ids[i]) for ids in context_ids.values())
                             for i in picked}))

    candidate = timed_candidate(config, args.kind)
    hyper = HyperNetwork(target, context,
                         generator_config(config, candidate.pooling, train_examples(config, args.csv),
                                          kind=candidate.generator,
                                          shared_l2=candidate.shared_l2,
                                          shift_pooling=candidate.shift_pooling),
                         name="hypernetwork")
    plain = build_target_model(target, name="plain_mlp")
    for model, batch in ((hyper, hyper_batches[0]), (plain, plain_batches[0])):
        model(batch[0])
        compile_model(model, config)
    hyper_step, plain_step = make_step(hyper), make_step(plain)

    for i in range(args.warmup):
        plain_step(plain_batches[i % args.batches])["loss"].numpy()
        hyper_step(hyper_batches[i % args.batches])["loss"].numpy()
    plain_ms, hyper_ms = [], []
    for i in range(args.steps):  # alternate, so drift hits both alike
        plain_ms.append(timed(plain_step, plain_batches[i % args.batches]))
        hyper_ms.append(timed(hyper_step, hyper_batches[i % args.batches]))

    plain_med, hyper_med = statistics.median(plain_ms), statistics.median(hyper_ms)
    mean_distinct = statistics.mean(distinct)
    rows_per_step = conditioning_rows(hyper, round(mean_distinct))
    gen = hyper.generator
    result = {
        "bench": "train_step",
        "contexts": drawn,
        "context_source": "taxi" if args.contexts is None else "synthetic_uniform",
        "context_vocab": {n: int(v) for n, v in context.categorical.items()},
        "generator_kind": hyper.generator_config.kind,
        "pooling": candidate.pooling,
        "shared_l2": candidate.shared_l2,
        "shift_pooling": candidate.shift_pooling,
        "batch": args.batch,
        "plain_ms": round(plain_med, 3),
        "hyper_ms": round(hyper_med, 3),
        "ratio": round(hyper_med / plain_med, 2),
        "plain_ms_p10_p90": [round(float(np.percentile(plain_ms, q)), 3) for q in (10, 90)],
        "hyper_ms_p10_p90": [round(float(np.percentile(hyper_ms, q)), 3) for q in (10, 90)],
        "steps": args.steps,
        "warmup": args.warmup,
        "config": os.path.relpath(os.path.abspath(args.config), ROOT),
        "target": list(target.layer_widths),
        "target_params": target.num_params,
        "plain_params": plain.count_params(),
        "hyper_params": int(sum(np.prod(v.shape) for v in hyper.trainable_variables)),
        "distinct_contexts": round(mean_distinct, 1),  # per batch, mean over the batches
        "conditioning_rows": rows_per_step,  # rows the generator runs on per step
        "enumerates_contexts": hyper.enumerates_contexts,
        **cpu_info(),
        "tf": tf.__version__,
    }
    macs = generator_macs_per_row(hyper)
    if macs is not None:
        gflop_step = 3 * 2 * macs * rows_per_step / 1e9
        result.update(generator_mflop_fwd=round(2 * macs * rows_per_step / 1e6, 2),
                      generator_gflop_train_step=round(gflop_step, 4),
                      generator_gflops=round(gflop_step / (hyper_med / 1e3), 2))
    else:
        penalty = hyper.generator_config.shrinkage > 0 and not context.is_static
        penalty_rows = int(hyper.encoder.pooling_rows().shape[0]) if penalty else 0
        width = hyper.encoder.output_dim * int(sum(gen.sizes))  # MACs per row
        result.update(deviation_width=int(sum(gen.sizes)), penalty_rows=penalty_rows,
                      deviation_mflop_fwd=round(2 * width * rows_per_step / 1e6, 3),
                      penalty_mflop_fwd=round(2 * width * penalty_rows / 1e6, 3))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
