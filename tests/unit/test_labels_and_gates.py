"""Labels as users have them, gates that point the metric's way, splits that keep `test` honest."""

import json

import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import yaml
from tensorflow_model_analysis.proto import validation_result_pb2

from components.verdict import decide
from pipeline import configs
from pipeline.eval_config import REPORTED, build_eval_config
from pipeline.inputs import check_data
from tests.support import run_transform

BINARY = {
    "name": "toy",
    "data_root": "data",
    "label": {"name": "y", "task": "binary", "column": "y"},
    "features": {"numeric": ["a"], "categorical": ["seg"]},
    "context": ["seg"],
}
REGRESSION = {**BINARY, "label": {"name": "y", "task": "regression", "column": "y"}}


def write(tmp_path, data, labels):
    (tmp_path / "data").mkdir(exist_ok=True)
    rows = "".join(f"{i}.5,s{i % 3},{y}\n" for i, y in enumerate(labels))
    (tmp_path / "data" / "rows.csv").write_text("a,seg,y\n" + rows)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return configs.load(str(path))


def with_label(base, **label):
    return {**base, "label": {**base["label"], **label}}


def test_yes_no_label_without_positive_fails_before_the_run_naming_column_and_values(tmp_path):
    config = write(tmp_path, BINARY, ["Y", "N", "N", "Y"])
    with pytest.raises(configs.ConfigError) as err:
        check_data(config)
    text = str(err.value)
    assert "label column 'y'" in text and "['N', 'Y']" in text
    assert "label.positive" in text and "rows.csv:2" in text  # the file and row of 'Y'


def test_positive_value_makes_a_string_label_binary(tmp_path):
    config = write(tmp_path, with_label(BINARY, positive="Y"), ["Y", "N", "N", "Y"])
    check_data(config)
    assert config.label.positive == "Y"
    rows = [{"a": "1.5", "seg": "s1", "y": v} for v in ("Y", "N", "", "Y")]
    dtypes = {"a": tf.float32, "seg": tf.string, "y": tf.string}
    tft_output = run_transform(config, rows, dtypes, str(tmp_path / "tft"))
    examples = {k: tf.sparse.from_dense(tf.constant([[v.encode()] for v in [r[k] for r in rows]]))
                for k in ("seg", "y")}
    examples["a"] = tf.sparse.from_dense(tf.constant([[1.5]] * 4))
    labels = tft_output.transform_features_layer()(examples)["y"]
    assert labels.numpy().tolist() == [1, 0, 0, 1]


def test_yaml_yes_is_read_as_the_text_yes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(with_label(BINARY, positive=True)))
    assert configs.load(str(path)).label.positive == "True"


def test_positive_value_absent_from_the_column_is_named(tmp_path):
    config = write(tmp_path, with_label(BINARY, positive="yes"), ["Y", "N"])
    with pytest.raises(configs.ConfigError, match=r"label.positive 'yes' never occurs; the "
                       r"column holds \['N', 'Y'\]"):
        check_data(config)


def test_three_valued_binary_label_fails(tmp_path):
    config = write(tmp_path, BINARY, ["0", "1", "2"])
    with pytest.raises(configs.ConfigError, match=r"holds \['0', '1', '2'\], not 0 and 1"):
        check_data(config)


def test_zero_one_label_passes(tmp_path):
    check_data(write(tmp_path, BINARY, ["0", "1", "1.0", ""]))


def test_string_regression_label_fails_naming_values(tmp_path):
    config = write(tmp_path, REGRESSION, ["1.5", "high", "2", "low"])
    with pytest.raises(configs.ConfigError) as err:
        check_data(config)
    assert "label column 'y'" in str(err.value)
    assert "['high', 'low']" in str(err.value) and "must be numeric" in str(err.value)


def test_positive_needs_a_binary_label_column(tmp_path):
    with pytest.raises(configs.ConfigError, match="label.positive names the positive value"):
        write(tmp_path, with_label(REGRESSION, positive="Y"), ["1"])


def test_regression_gate_defaults_to_mse_with_no_bound(tmp_path):
    config = write(tmp_path, REGRESSION, ["1.5", "2"])
    assert (config.gates.metric, config.gates.lower_bound, config.gates.upper_bound) == (
        "mse", None, None)
    [gated] = [m for m in build_eval_config(config).metrics_specs[0].metrics
               if m.per_slice_thresholds]
    threshold = gated.per_slice_thresholds[0].threshold
    assert gated.class_name == "MeanSquaredError"
    # No bound: only "is a number" (>= 0 holds for any MSE), so a first run, which has no
    # baseline for the change threshold, still has a threshold to pass.
    assert threshold.value_threshold.lower_bound.value == 0.0
    assert not threshold.value_threshold.HasField("upper_bound")
    assert threshold.change_threshold.direction == tfma.MetricDirection.LOWER_IS_BETTER
    assert "Calibration" not in REPORTED["regression"]
    assert config.output_name == "predictions"


def test_binary_gate_defaults_to_auc(tmp_path):
    config = write(tmp_path, BINARY, ["0", "1"])
    assert config.gates.metric == "auc" and config.gate_metric.higher_is_better


@pytest.mark.parametrize("base, gates, message", [
    (REGRESSION, {"metric": "mse", "lower_bound": 0.9}, "where lower is better"),
    (REGRESSION, {"metric": "mae", "upper_bound": -1.0}, "is negative"),
    (BINARY, {"metric": "auc", "upper_bound": 0.9}, "where higher is better"),
    (BINARY, {"metric": "accuracy", "lower_bound": 90}, "outside [0, 1]"),
])
def test_a_bound_against_its_metric_is_a_config_error(tmp_path, base, gates, message):
    with pytest.raises(configs.ConfigError, match=message.replace("[", r"\[")):
        write(tmp_path, {**base, "gates": gates}, ["1"])


def test_splits_default_to_three_one_one_and_must_be_positive(tmp_path):
    assert configs.SplitsConfig().buckets() == {"train": 3, "eval": 1, "test": 1}
    with pytest.raises(configs.ConfigError, match="splits.test must be a positive number"):
        write(tmp_path, {**BINARY, "splits": {"test": 0}}, ["1"])


def test_evaluator_reads_only_the_test_split():
    from pipeline.pipeline import create_pipeline

    pipeline = create_pipeline(configs.load(configs.DEFAULT_CONFIG))
    nodes = {c.id: c for c in pipeline.components}
    assert json.loads(nodes["Evaluator"].exec_properties["example_splits"]) == ["test"]
    split_config = json.loads(nodes["CsvExampleGen"].exec_properties["output_config"])
    assert {s["name"]: s["hash_buckets"] for s in split_config["split_config"]["splits"]} == {
        "train": 3, "eval": 1, "test": 1}
    train_args = json.loads(nodes["Trainer"].exec_properties["train_args"])
    assert train_args["splits"] == ["train"]
    assert json.loads(nodes["Trainer"].exec_properties["eval_args"])["splits"] == ["eval"]


def test_a_verdict_that_does_not_bless_names_a_reason():
    empty = validation_result_pb2.ValidationResult(validation_ok=False)
    overall = {"overall": {"mean_squared_error": 2.0}}
    verdict = decide(empty, False, overall, {}, "mean_squared_error", higher_is_better=False)
    assert verdict["blessed"] is False and verdict["reasons"]
    assert "recorded no failed check" in verdict["reasons"][0]
    missing = validation_result_pb2.ValidationResult(validation_ok=False, missing_thresholds=True)
    verdict = decide(missing, False, {}, {}, "mean_squared_error", higher_is_better=False)
    assert any("did not compute" in r for r in verdict["reasons"])
    assert any("mean_squared_error is missing" in r for r in verdict["reasons"])
    blessed = decide(validation_result_pb2.ValidationResult(validation_ok=True), True, overall, {},
                     "mean_squared_error")
    assert blessed["blessed"] is True and blessed["reasons"] == []
