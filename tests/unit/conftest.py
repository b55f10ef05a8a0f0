"""Shared unit fixtures: Transform of real taxi rows (in process) and an exported model."""

import pytest

from pipeline import configs
from tests.support import TAXI_CSV, read_csv, run_transform
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.task import export

ROWS = 400


@pytest.fixture(scope="session")
def taxi(tmp_path_factory):
    """(config, rows, dtypes, TFTransformOutput) for the first ROWS rows of the taxi CSV."""
    config = configs.load(configs.DEFAULT_CONFIG)
    rows, dtypes = read_csv(TAXI_CSV, limit=ROWS)
    tft_output = run_transform(config, rows, dtypes, str(tmp_path_factory.mktemp("tft")))
    return config, rows, dtypes, tft_output


@pytest.fixture(scope="session")
def exported(taxi, tmp_path_factory):
    """(SavedModel dir, in-memory model): an untrained taxi hypernetwork, exported as run_fn does."""
    config, rows, dtypes, tft_output = taxi
    model = ConfiguredHyperModel(config, ModelLayout.from_transform(config, tft_output))
    path = str(tmp_path_factory.mktemp("model"))
    export(model, config, tft_output, path)
    return path, model
