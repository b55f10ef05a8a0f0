"""Grouped-data benchmark: the hypernetwork must win where partial pooling is the answer.

    python bench/grouped.py [--datasets chem97,star,...] [--seeds 3] [--l2 0,1e-5,...,1e-1] [--quick]

For each table of bench/grouped_data.py (chem97, chem97_school, star, insteval,
bikeshare, and the repo's taxi sample) the CSV and a config naming only its columns
(label, features, context; every other setting is the pipeline's default, identical
across tables) go through ExampleGen -> StatisticsGen -> SchemaGen -> Transform of the
real pipeline (a partial run of create_pipeline's DAG, in a temporary directory), so
train/eval/test are ExampleGen's hash splits (3:1:1).

Models, all scored on the same Split-test rows (MSE; binary: ROC AUC and accuracy at 0.5):
- hypernet: trainer.task.fit_hypernetwork, as the Trainer calls it (its candidates, each
  early-stopped on eval and given its per-context intercepts; the lowest eval loss with
  them kept), on Transform's output.
- onehot_mlp: trainer.model.PlainMLP (the same target architecture, the context one-hot)
  through the same fit_hypernetwork loop and budget. It gets the hypernetwork's last step
  too: per-context output intercepts fitted on train, their strength chosen on eval
  (trainer/context_intercepts.py, the config's model.intercept_strengths). Its L2 is
  picked as ours' candidates are, by the eval loss with the intercepts (--l2, in the
  standardised label's units like ours' shared L2), never on test. Its seconds include
  the whole L2 grid.
- hgb, linear (ridge / logistic, one-hot groups), mixedlm (regression: random intercept
  + slope of the main numeric feature): bench/grouped_data.py's anchors, fit on the raw
  Split-train columns read back from ExampleGen's TFRecords (their own CV / early
  stopping inside train; eval is not given to them).

Seeds: the split is fixed; a seed changes initialisation, shuffling and the anchors'
randomness; figures are medians over seeds. linear and mixedlm are deterministic, so
they are fit once ("seeds": 1, "deterministic": true).

stdout: one JSON line per table and model, then one summary line per table:
{"bench": "grouped", "dataset", "metric", "ours", "best_anchor", "best_anchor_value",
"ratio", "wins"} with ratio = ours / best anchor for MSE, best anchor / ours for AUC:
below 1 means the hypernetwork is better in both, and "wins" is ratio < 1. Logs go to
stderr. `--quick`: one seed, bikeshare and taxi (a smoke run, not figures to quote).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_transform as tft
from threadpoolctl import threadpool_limits

from bench import grouped_data as gd
from bench.machine import cpu_info
from bench.quality import find_artifacts, read_raw, run_transform, split_files
from pipeline import configs
from pipeline.configs import PipelineConfig
from trainer.context_intercepts import score_splits
from trainer.hypernet.intercepts import fit_intercepts, offsets
from trainer.model import ModelLayout, PlainMLP
from trainer.task import DATA_LOSS, fit_hypernetwork, scoring_dataset

SPLITS = ("train", "eval", "test")
QUICK_DATASETS = ("bikeshare", "taxi")
# The one-hot MLP's L2 grid, picked on eval, in the standardised label's units (section 17
# of docs/grouped-defaults.md). It must reach past the strength eval picks (section 10:
# shorter grids had eval take their top on every Chem97, Chem97-school and InstEval seed).
DEFAULT_L2 = (0.0, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def log(message: str) -> None:
    print(f"grouped: {message}", file=sys.stderr, flush=True)


# -- one table through the pipeline's first components --------------------------------------
@dataclasses.dataclass
class Table:
    """One dataset after ExampleGen..Transform: its config, Transform output and splits."""

    name: str
    spec: gd.Spec
    config: PipelineConfig
    tft_output: tft.TFTransformOutput
    files: dict[str, list[str]]  # transformed examples by split
    frames: dict[str, pd.DataFrame]  # raw ExampleGen columns (+ the label) by split
    transform_seconds: float

    @property
    def metric(self) -> str:
        return "mse" if self.spec.task == "regression" else "auc"


def raw_frame(columns: dict[str, list], spec: gd.Spec, config: PipelineConfig) -> pd.DataFrame:
    """An ExampleGen split's raw columns as the anchors take them, the label as Transform
    makes it (a rule over raw columns, or the column itself)."""
    n = len(next(iter(columns.values())))
    out: dict[str, Any] = {}
    for c in (spec.context, *spec.numeric, *spec.categorical):
        values = columns.get(c, [None] * n)
        if c in spec.numeric:
            out[c] = np.array([np.nan if v is None else float(v) for v in values])
        else:
            out[c] = [v.decode() if isinstance(v, bytes) else v for v in values]

    def number(name: str) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in columns[name]])

    rule = config.label.rule
    if rule is not None:
        out[spec.label] = gd.rule_label(rule, number(rule.lhs),
                                        number(rule.rhs) if isinstance(rule.rhs, str) else rule.rhs)
    elif config.label.task == "regression":
        out[spec.label] = number(config.label.column)
    else:
        raise SystemExit(f"{spec.label}: only regression labels and label rules are benched")
    return pd.DataFrame(out)


def prepare(name: str, tmp: str) -> Table:
    spec = gd.DATASETS[name]
    start = time.time()
    config = configs.load(gd.write_csv_and_config(name, tmp))
    root = run_transform(config, os.path.join(tmp, "out"))
    art = find_artifacts(root)
    files = {s: split_files(art.transformed_examples, s) for s in SPLITS}
    for s in SPLITS:
        if not os.path.isdir(os.path.join(art.transformed_examples, f"Split-{s}")):
            raise RuntimeError(f"Transform wrote no Split-{s} under {art.transformed_examples}")
    frames = {s: raw_frame(read_raw(art.raw_examples, s), spec, config) for s in SPLITS}
    return Table(name, spec, config, tft.TFTransformOutput(art.transform_graph), files, frames,
                 time.time() - start)


# -- Keras models through the Trainer's loop --------------------------------------------------
def seeded(config: PipelineConfig, seed: int) -> PipelineConfig:
    return dataclasses.replace(config, training=dataclasses.replace(config.training, seed=seed))


def predict(model: tf.keras.Model, table: Table) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) over the whole transformed test split."""
    preds, labels = [], []
    for x, y in scoring_dataset(table.files["test"], table.tft_output, table.config):
        preds.append(np.reshape(model(x, training=False).numpy(), [-1]))
        labels.append(np.reshape(y.numpy(), [-1]))
    return np.concatenate(preds).astype(np.float64), np.concatenate(labels).astype(np.float64)


def check_same_rows(table: Table, labels: np.ndarray) -> None:
    """The transformed test split holds the rows the anchors are scored on."""
    raw = table.frames["test"][table.spec.label].to_numpy(np.float64)
    if len(raw) != len(labels):
        raise RuntimeError(f"{table.name}: the transformed test split has {len(labels)} rows, "
                           f"ExampleGen's {len(raw)}")
    off = int(np.sum(~np.isclose(np.sort(raw), np.sort(labels), rtol=1e-5)))
    if off:
        raise RuntimeError(f"{table.name}: {off} of {len(raw)} test labels differ between "
                           "Transform's output and the raw columns the anchors get")


def fit_keras(table: Table, seed: int,
              make: Callable[[PipelineConfig, ModelLayout, float], tf.keras.Model] | None = None
              ) -> tuple[tf.keras.Model, dict[str, list[float]]]:
    """fit_hypernetwork as the Trainer calls it, with the seed set; `make(config, layout,
    loss_scale)` builds an anchor instead of the hypernetwork (one fit; loss_scale is
    fit_hypernetwork's, for a strength in ours' units)."""
    config = seeded(table.config, seed)
    build = None
    if make is not None:
        layout = ModelLayout.from_transform(config, table.tft_output)

        def build(loss_scale: float) -> tf.keras.Model:
            return make(config, layout, loss_scale)
    with contextlib.redirect_stdout(sys.stderr):  # Keras' epoch lines
        return fit_hypernetwork(config, table.tft_output, table.files["train"],
                                table.files["eval"], build=build)


def history_facts(history: dict[str, list[float]]) -> dict[str, Any]:
    val = history[f"val_{DATA_LOSS}"]
    return {"epochs": len(val), "best_epoch": int(np.argmin(val)) + 1,
            "eval_data_loss": round(float(min(val)), 6)}


def run_hypernet(table: Table, seed: int, model_settings: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The configured hypernetwork; `model_settings` override the config's model section
    (a variant of the defaults, for choosing them: --variant)."""
    start = time.time()
    if model_settings:  # read and checked as the YAML's model section would be
        data = configs.serialize(table.config)
        data["model"] = {**data["model"], **model_settings}
        table = dataclasses.replace(table, config=configs.deserialize(data))
    model, history = fit_keras(table, seed)
    preds, labels = predict(model, table)
    check_same_rows(table, labels)
    return {**gd.score(table.spec, labels, preds), **history_facts(history),
            "pooling": history["pooling"][0], "shared_l2": history["shared_l2"][0],
            "shift_pooling": history["shift_pooling"][0],
            "generator": history["generator"][0],
            "intercept_strength": history["intercept_strength"][0],
            "eval_loss_with_intercepts": round(history["eval_loss_with_intercepts"][0], 6),
            "seconds": time.time() - start}


def run_onehot_mlp(table: Table, seed: int, l2s: Sequence[float]) -> dict[str, Any]:
    """PlainMLP per L2 through fit_hypernetwork, each given its per-context intercepts; the
    lowest eval loss with them is scored (ours' candidates are chosen the same way).

    Each L2 is in the standardised label's units, as ours' pooling and shared L2 are
    (fit_hypernetwork passes its loss_scale): in raw units the grid's top, 1e-1, is 2e-5
    of STAR's label variance, no regularisation at all there."""
    start = time.time()
    best: tuple[float, dict, tuple[np.ndarray, np.ndarray, float | None, float]] | None = None
    for l2 in l2s:
        model, history = fit_keras(table, seed, lambda config, layout, scale, l2=l2: PlainMLP(
            config, layout, l2=l2 * scale, name="onehot_mlp"))
        scored = predict_with_intercepts(model, table)
        log(f"{table.name} onehot_mlp seed {seed} l2 {l2}: eval {DATA_LOSS} "
            f"{min(history[f'val_{DATA_LOSS}']):.6g}, with intercepts {scored[3]:.6g}")
        if best is None or scored[3] < best[2][3]:
            best = (l2, history, scored)
    assert best is not None
    l2, history, (preds, labels, strength, loss) = best
    check_same_rows(table, labels)
    return {**gd.score(table.spec, labels, preds), **history_facts(history), "l2": l2,
            "intercept_strength": strength, "eval_loss_with_intercepts": round(loss, 6),
            "seconds": time.time() - start}


def predict_with_intercepts(model: tf.keras.Model, table: Table
                            ) -> tuple[np.ndarray, np.ndarray, float | None, float]:
    """An anchor's test (predictions, labels) after the hypernetwork's closing step:
    per-context intercepts fitted on its train outputs, the strength chosen on eval; then
    that strength and the eval loss with it."""
    binary = table.spec.task != "regression"

    def logits(x: dict[str, tf.Tensor]) -> tf.Tensor:
        out = tf.reshape(model(x, training=False), [-1])
        if not binary:
            return out
        p = tf.clip_by_value(out, 1e-7, 1.0 - 1e-7)
        return tf.math.log(p) - tf.math.log1p(-p)

    context = table.spec.context
    scored = dict(zip(SPLITS, score_splits(
        logits, [scoring_dataset(table.files[s], table.tft_output, table.config) for s in SPLITS],
        [context])))
    layout = ModelLayout.from_transform(table.config, table.tft_output)
    fit = fit_intercepts(scored["train"], scored["eval"], binary,
                         {context: layout.vocab_sizes[context]},
                         strengths=table.config.model.intercept_strengths,
                         oov_ids={context: layout.oov_id(context)})
    test = scored["test"]
    z = test.logits + offsets(fit.tables, test)
    return ((1.0 / (1.0 + np.exp(-z)) if binary else z), test.labels, fit.strength,
            fit.eval_losses[fit.strength])


def run_anchor(table: Table, name: str, seed: int) -> dict[str, Any]:
    start = time.time()
    # One OpenMP thread: sklearn's spinning OpenMP workers on a shared 2-core box made
    # HistGradientBoosting 3-70x slower (bikeshare 54 s vs 0.8 s); the results are the same.
    with threadpool_limits(1, user_api="openmp"):
        out = gd.ANCHORS[name](table.frames["train"], table.frames["test"], table.spec, seed)
    return {**out, "seconds": time.time() - start}


# -- one table, every model -------------------------------------------------------------------
def models_of(spec: gd.Spec) -> list[str]:
    anchors = [a for a in gd.ANCHORS if a != "mixedlm" or spec.task == "regression"]
    return ["hypernet", "onehot_mlp", *anchors]


def model_line(table: Table, model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over seeds, every seed's figure, and per-seed facts (epochs, L2, ...)."""
    keys = ["mse"] if table.spec.task == "regression" else ["auc", "accuracy"]
    line: dict[str, Any] = {"bench": "grouped", "dataset": table.name, "model": model,
                            "task": table.spec.task}
    for k in keys:
        line[k] = round(float(statistics.median(r[k] for r in runs)), 6)
        line[f"{k}_per_seed"] = [round(float(r[k]), 6) for r in runs]
    line["seeds"] = len(runs)
    line["deterministic"] = model in gd.DETERMINISTIC
    for k in sorted({k for r in runs for k in r} - {*keys, "seconds"}):
        values = [r.get(k) for r in runs]
        line[k] = values[0] if len(values) == 1 else values
    frames = table.frames
    line.update(
        test_rows=len(frames["test"]), train_rows=len(frames["train"]),
        eval_rows=len(frames["eval"]),
        contexts=int(pd.concat([f[table.spec.context] for f in frames.values()]).nunique()),
        seconds=round(float(statistics.median(r["seconds"] for r in runs)), 1),
        machine=cpu_info())
    if model in ("hypernet", "onehot_mlp"):
        m = table.config.model
        line.update(model_candidates=[dataclasses.astuple(c) for c in m.candidate_models()],
                    hidden_units=list(m.hidden_units))
    return line


def summary_line(table: Table, lines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ratio < 1: ours better (MSE: ours / best anchor; AUC: best anchor / ours)."""
    metric, higher = table.metric, table.metric == "auc"
    anchors = {m: line[metric] for m, line in lines.items() if not m.startswith("hypernet")}
    best = (max if higher else min)(anchors, key=anchors.__getitem__)
    ours = lines["hypernet"][metric]
    ratio = anchors[best] / ours if higher else ours / anchors[best]
    return {"bench": "grouped", "dataset": table.name, "task": table.spec.task,
            "metric": metric, "ours": ours, "best_anchor": best,
            "best_anchor_value": anchors[best], "ratio": round(ratio, 4), "wins": ratio < 1,
            "anchors": anchors, "seeds": lines["hypernet"]["seeds"],
            "transform_seconds": round(table.transform_seconds, 1)}


def run_table(name: str, seeds: Sequence[int], l2s: Sequence[float],
              emit: Callable[[dict[str, Any]], None],
              variants: dict[str, dict[str, Any]] | None = None,
              models: Sequence[str] | None = None) -> bool:
    """Every model on one table; a model that fails gets an error line, the others go on.
    Returns whether all ran."""
    with tempfile.TemporaryDirectory(prefix=f"grouped-{name}-") as tmp:
        log(f"{name}: ExampleGen..Transform")
        table = prepare(name, tmp)
        log(f"{name}: splits {[len(table.frames[s]) for s in SPLITS]} rows, "
            f"Transform done in {table.transform_seconds:.0f} s")
        lines: dict[str, dict[str, Any]] = {}
        variants = variants or {}
        todo = [*(m for m in models_of(table.spec) if not models or m in models),
                *(f"hypernet:{v}" for v in variants)]
        for model in todo:
            runs = []
            try:
                for seed in seeds[:1] if model in gd.DETERMINISTIC else seeds:
                    if model.startswith("hypernet:"):
                        run = run_hypernet(table, seed, variants[model.split(":", 1)[1]])
                    elif model == "hypernet":
                        run = run_hypernet(table, seed)
                    elif model == "onehot_mlp":
                        run = run_onehot_mlp(table, seed, l2s)
                    else:
                        run = run_anchor(table, model, seed)
                    log(f"{name} {model} seed {seed}: " + json.dumps(
                        {k: round(v, 5) if isinstance(v, float) else v for k, v in run.items()}))
                    runs.append(run)
            except Exception as e:  # noqa: BLE001 - reported; the other models still run
                traceback.print_exc()
                emit({"bench": "grouped", "dataset": name, "model": model,
                      "error": f"{name} {model}: {type(e).__name__}: {e}"})
                continue
            lines[model] = model_line(table, model, runs)
            emit(lines[model])
        if "hypernet" in lines and any(not m.startswith("hypernet") for m in lines):
            emit(summary_line(table, lines))
        return len(lines) == len(todo)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=None,
                        help=f"comma-separated, of {','.join(gd.DATASETS)} (default: all; "
                             f"--quick: {','.join(QUICK_DATASETS)})")
    parser.add_argument("--seeds", type=int, default=None, help="median over this many seeds "
                        "(default 3; --quick: 1)")
    parser.add_argument("--l2", default=",".join(map(str, DEFAULT_L2)),
                        help="the one-hot MLP's L2 strengths, picked on eval")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 2 tables")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                        help='also a hypernetwork with these model settings, e.g. '
                             '\'lam1={"pooling": [1]}\' (repeatable; for choosing defaults)')
    parser.add_argument("--models", default=None,
                        help="only these of hypernet,onehot_mlp,hgb,linear,mixedlm")
    args = parser.parse_args(argv)
    names = args.datasets.split(",") if args.datasets else list(
        QUICK_DATASETS if args.quick else gd.DATASETS)
    unknown = sorted(set(names) - set(gd.DATASETS))
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; known: {sorted(gd.DATASETS)}")
    args.names = names
    args.seeds = args.seeds or (1 if args.quick else 3)
    args.l2s = [float(v) for v in args.l2.split(",")]
    args.variants = {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in args.variant}
    args.models = args.models.split(",") if args.models else None
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    stdout = sys.stdout

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line), file=stdout, flush=True)

    base = configs.TrainingConfig().seed  # every config here keeps the default seed
    seeds = [base + i for i in range(args.seeds)]
    tf.config.experimental.enable_op_determinism()  # as the Trainer does
    failed = False
    for name in args.names:
        start = time.time()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                failed = not run_table(name, seeds, args.l2s, emit, args.variants,
                                       args.models) or failed
        except Exception as e:  # noqa: BLE001 - one table's failure must not hide the others
            traceback.print_exc()
            emit({"bench": "grouped", "dataset": name, "error": f"{name}: {type(e).__name__}: {e}"})
            failed = True
        log(f"{name}: {time.time() - start:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
