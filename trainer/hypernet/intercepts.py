"""Per-context output intercepts, fitted after training in closed form (random intercepts).

Why: a context's offset on the output is the simplest and most common way groups
differ, and gradient training is slow to find it: early stopping ends training when
the eval loss stops improving, before the small per-context offsets have converged
(measured: docs/grouped-defaults.md, section 5). A mixed-effects model estimates
them in closed form, shrunk toward zero by group size; so does this, on the trained
model's own residuals:

    offset_g = sum_{i in g} r_i / (sum_{i in g} h_i + k)

regression: r = label - output, h = 1 (the shrunk mean residual: a random
intercept's BLUP, k its noise-to-group variance ratio); binary: r = y - p, h = p(1-p)
on the logit (one Newton step from 0 under a Gaussian prior of precision k). The
strength k is chosen on eval from a grid that includes "none". Each categorical
context feature has its own table, fitted in turn on what the earlier ones left
(one backfitting pass); its out-of-vocabulary id keeps offset 0, so an unseen context
still gets exactly the shared network.

Pure NumPy on (ids, logits, labels) arrays: the model holds the tables
(`HyperNetwork.set_intercepts`) and folds them into the materialized output bias.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class Scored:
    """One split through the trained model: per categorical context feature each row's id,
    the output on the logit scale (regression: the standardised output) and the label in
    the same units (binary: 0/1)."""

    ids: Mapping[str, NDArray[Any]]
    logits: NDArray[np.float64]
    labels: NDArray[np.float64]

    def __post_init__(self) -> None:
        n = len(self.logits)
        bad = {k: len(v) for k, v in self.ids.items() if len(v) != n}
        if len(self.labels) != n or bad:
            raise ValueError(f"scored split: {n} logits, {len(self.labels)} labels, ids {bad}")


@dataclasses.dataclass(frozen=True)
class InterceptFit:
    """The chosen tables (all zero when none won), the strength (None: none won) and the
    eval loss of every candidate, by strength (None: no intercepts)."""

    tables: dict[str, NDArray[np.float64]]
    strength: float | None
    eval_losses: dict[float | None, float]


def loss(logits: NDArray[Any], labels: NDArray[Any], binary: bool) -> float:
    """Mean log loss on the logit (binary), else mean squared error."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if not binary:
        return float(np.mean((z - y) ** 2))
    p = np.clip(1.0 / (1.0 + np.exp(-z)), _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def shrunk_offsets(ids: NDArray[Any], logits: NDArray[Any], labels: NDArray[Any], size: int,
                   strength: float, binary: bool, oov_id: int | None = None) -> NDArray[np.float64]:
    """[size] offsets: each id's residual sum over (its curvature sum + strength);
    ids without rows, and `oov_id`, get 0."""
    z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if binary:
        p = 1.0 / (1.0 + np.exp(-z))
        residual, curvature = y - p, p * (1.0 - p)
    else:
        residual, curvature = y - z, np.ones_like(z)
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"context ids must lie in [0, {size}), got {ids.min()}..{ids.max()}")
    sums = np.bincount(ids, residual, minlength=size)
    weights = np.bincount(ids, curvature, minlength=size)
    out = np.divide(sums, weights + strength, out=np.zeros(size), where=weights > 0)
    if oov_id is not None:
        out[oov_id] = 0.0
    return out


def offsets(tables: Mapping[str, NDArray[Any]], split: Scored) -> NDArray[np.float64]:
    """Each row of `split`: its offsets summed over the context features' tables."""
    out = np.zeros(len(split.logits))
    for name, table in tables.items():
        out += table[np.asarray(split.ids[name], np.int64)]
    return out


def fit_intercepts(train: Scored, eval_split: Scored, binary: bool, sizes: Mapping[str, int],
                   *, strengths: Sequence[float],
                   oov_ids: Mapping[str, int] | None = None) -> InterceptFit:
    """Tables fitted on `train` at each strength k (in rows' worth of evidence: regression
    rows, binary Fisher information), the one with the lowest `eval_split` loss kept; no
    intercepts (all zero) unless some strength beats none."""
    oov_ids = oov_ids or {}
    zero = {name: np.zeros(int(size)) for name, size in sizes.items()}
    losses: dict[float | None, float] = {None: loss(eval_split.logits, eval_split.labels, binary)}
    best: tuple[float, float | None, dict[str, NDArray[np.float64]]] = (losses[None], None, zero)
    for k in strengths:
        if k < 0:
            raise ValueError(f"intercept strengths must be >= 0, got {k}")
        tables: dict[str, NDArray[np.float64]] = {}
        for name, size in sizes.items():  # each on what the earlier ones left
            shifted = train.logits + offsets(tables, train)
            tables[name] = shrunk_offsets(train.ids[name], shifted, train.labels, int(size),
                                          float(k), binary, oov_ids.get(name))
        losses[float(k)] = loss(eval_split.logits + offsets(tables, eval_split),
                                eval_split.labels, binary)
        if losses[float(k)] < best[0]:
            best = (losses[float(k)], float(k), tables)
    return InterceptFit(best[2], best[1], losses)
