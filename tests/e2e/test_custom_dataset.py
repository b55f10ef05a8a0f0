"""Data-agnostic: a generated multiclass CSV runs through the whole pipeline from a config alone."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline import configs
from pipeline.summary import summarize
from tests.support import ROOT, load_in_fresh_process, pipeline_env, to_example, write_config

pytestmark = pytest.mark.e2e
REGIONS = ["north", "south", "east", "west"]
SPECIES = ["ash", "birch", "cedar"]


def generate(path: str, rows: int = 3000, seed: int = 0) -> None:
    """Each region maps the same features to the class by its own rule."""
    rng = np.random.default_rng(seed)
    rules = rng.normal(size=(len(REGIONS), 3, 3))
    with open(path, "w") as f:
        f.write("region,height,girth,soil,species\n")
        for _ in range(rows):
            r = rng.integers(len(REGIONS))
            x = rng.normal(size=2)
            soil = rng.choice(["clay", "sand", "loam"])
            z = rules[r] @ np.array([x[0], x[1], {"clay": -1, "sand": 0, "loam": 1}[soil]])
            girth = "" if rng.random() < 0.05 else f"{x[1]:.4f}"  # some gaps
            f.write(f"{REGIONS[r]},{x[0]:.4f},{girth},{soil},{SPECIES[int(np.argmax(z))]}\n")


@pytest.fixture(scope="module")
def multiclass_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trees")
    (tmp / "data").mkdir()
    generate(str(tmp / "data" / "trees.csv"))
    path = write_config(
        str(tmp / "trees.yaml"), name="trees", data_root=str(tmp / "data"), output_dir=str(tmp),
        label={"name": "species_id", "task": "multiclass", "column": "species"},
        features={"numeric": ["height", "girth"], "categorical": ["soil", "region"]},
        context=["region"],
        model={"hidden_units": [16]},
        training={"train_steps": 600, "epochs": 3, "eval_steps": 10, "batch_size": 64},
        gates={"metric": "accuracy", "lower_bound": 0.6})
    done = subprocess.run([sys.executable, "-m", "pipeline.local_runner", "--config", path],
                          cwd=ROOT, env=pipeline_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return configs.load(path)


def test_multiclass_model_is_blessed_and_pushed(multiclass_run):
    summary = summarize(multiclass_run)
    assert summary["blessed"] is True and summary["pushed"] is True
    assert summary["metrics"]["overall"]["sparse_categorical_accuracy"] >= 0.6
    assert {f"region={r}" for r in REGIONS} <= set(summary["metrics"])


def test_multiclass_serving_returns_one_probability_per_class(multiclass_run):
    model_dir = glob.glob(os.path.join(multiclass_run.serving_model_dir, "*"))[0]
    requests = [{"region": "north", "height": 0.3, "girth": -1.0, "soil": "clay"},
                {"region": "atlantis", "height": 1.0, "soil": "peat"}]  # unseen + missing
    out = load_in_fresh_process(model_dir, [to_example(r) for r in requests])
    p = np.array(out["probabilities"])
    assert p.shape == (2, len(SPECIES))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
