"""After training: each categorical context value's output intercept, fitted on train in
closed form and its strength chosen on eval (trainer/hypernet/intercepts.py says why).

The benchmarks give the one-hot MLP anchor the same step through `score_splits` and
`fit_intercepts` on its own outputs, so the comparison stays like with like.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from trainer.features import transformed_name
from trainer.hypernet.intercepts import InterceptFit, Scored, fit_intercepts
from trainer.hypernet.keras_env import without_autograph

Logits = Callable[[dict[str, tf.Tensor]], tf.Tensor]


def score_splits(logits: Logits, datasets: Sequence[tf.data.Dataset],
                 contexts: Sequence[str]) -> list[Scored]:
    """One pass over each finite dataset of (transformed features, label): each row's output
    on the logit scale (`logits`), label, and id of every context column in `contexts`.

    `logits` is traced once, from the first dataset's element spec (batched without
    dropping a remainder, so any batch size fits), and without AutoGraph
    (keras_env.without_autograph): its rewriting of our layers' source and a trace per
    batch shape and split made this step 7.5 s of taxi's Trainer, the passes 0.4 s.
    """
    if not datasets:
        return []
    step = tf.function(without_autograph(logits), input_signature=[datasets[0].element_spec[0]])
    return [_score(step, dataset, contexts) for dataset in datasets]


def _score(step: Logits, dataset: tf.data.Dataset, contexts: Sequence[str]) -> Scored:
    out, labels = [], []
    ids: dict[str, list[np.ndarray]] = {c: [] for c in contexts}
    for x, y in dataset:
        out.append(np.reshape(step(x).numpy(), [-1]))
        labels.append(np.reshape(y.numpy(), [-1]))
        for c in contexts:
            ids[c].append(np.reshape(x[transformed_name(c)].numpy(), [-1]))
    if not out:
        raise ValueError("no rows to fit context intercepts on")
    return Scored({c: np.concatenate(v) for c, v in ids.items()},
                  np.concatenate(out).astype(np.float64), np.concatenate(labels).astype(np.float64))


def fit_model_intercepts(model: tf.keras.Model, task: str, strengths: Sequence[float],
                         train_ds: tf.data.Dataset, eval_ds: tf.data.Dataset) -> InterceptFit | None:
    """Fit and set a ConfiguredHyperModel's context intercepts; None when it has none to fit
    (no categorical context, no strengths, or a multiclass label)."""
    hyper = model.hyper
    if not hyper.intercepts or not strengths or task == "multiclass":
        return None
    contexts = list(hyper.intercepts)

    def logits(x: dict[str, tf.Tensor]) -> tf.Tensor:
        return hyper(model.hyper_inputs(x), return_logits=True)

    sizes = {c: int(hyper.intercepts[c].shape[0]) for c in contexts}
    hyper.set_intercepts({c: np.zeros(size) for c, size in sizes.items()})  # fit from none
    train, evaluation = score_splits(logits, [train_ds, eval_ds], contexts)
    fit = fit_intercepts(train, evaluation, task == "binary", sizes,
                         strengths=strengths, oov_ids=hyper.context.oov_ids)
    hyper.set_intercepts(fit.tables)
    logging.info("context intercepts: strength %s chosen on eval (eval loss %.6g, without %.6g)",
                 fit.strength, fit.eval_losses[fit.strength], fit.eval_losses[None])
    return fit
