"""The gates: anomaly gate messages, curated schema, and the TFMA gate built from the config."""

import dataclasses

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from components.anomaly_gate import DataAnomalyError, blocking_anomalies, check
from pipeline import configs
from pipeline.eval_config import build_eval_config
from pipeline.schema_tool import curate


def anomalies(**features):
    """{feature: (severity, short description)} -> Anomalies proto."""
    proto = anomalies_pb2.Anomalies()
    for name, (severity, short) in features.items():
        info = proto.anomaly_info[name]
        info.severity = severity
        info.short_description = short
        info.reason.add(description=f"{short} in {name}")
    return proto


def write_split(tmp_path, split, proto):
    d = tmp_path / f"Split-{split}"
    d.mkdir()
    (d / "SchemaDiff.pb").write_bytes(proto.SerializeToString())


def test_gate_names_each_feature_and_anomaly_per_split(tmp_path):
    err, warn = anomalies_pb2.AnomalyInfo.ERROR, anomalies_pb2.AnomalyInfo.WARNING
    write_split(tmp_path, "train", anomalies(fare=(err, "Unexpected data type"),
                                             company=(warn, "Unexpected string values")))
    write_split(tmp_path, "eval", anomalies(tips=(err, "Column dropped")))
    with pytest.raises(DataAnomalyError) as e:
        check(str(tmp_path), ["train", "eval"], "ERROR")
    message = str(e.value)
    assert "2 anomalies at severity >= ERROR" in message
    assert "[train] fare: Unexpected data type" in message
    assert "[eval] tips: Column dropped" in message
    assert "company" not in message  # a warning is below the ERROR floor
    with pytest.raises(DataAnomalyError, match="company: Unexpected string values"):
        check(str(tmp_path), ["train"], "WARNING")


def test_clean_data_passes_the_gate(tmp_path):
    write_split(tmp_path, "train", anomalies_pb2.Anomalies())
    check(str(tmp_path), ["train"], "ERROR")
    assert blocking_anomalies(anomalies_pb2.Anomalies(), "WARNING") == []
    with pytest.raises(ValueError, match="min_severity 'FATAL'"):
        blocking_anomalies(anomalies_pb2.Anomalies(), "FATAL")


def test_curation_opens_large_string_domains_and_keeps_small_ones():
    schema = schema_pb2.Schema()
    for name, size in (("company", 61), ("payment_type", 7)):
        schema.feature.add(name=name, type=schema_pb2.BYTES, domain=name)
        schema.string_domain.add(name=name, value=[f"v{i}" for i in range(size)])
    curated = curate(schema, max_closed_domain=20)
    features = {f.name: f for f in curated.feature}
    assert not features["company"].HasField("domain")
    assert features["payment_type"].domain == "payment_type"
    assert [d.name for d in curated.string_domain] == ["payment_type"]


def test_committed_taxi_schema_is_curated_and_declares_no_shapes():
    config = configs.load(configs.DEFAULT_CONFIG)
    from google.protobuf import text_format

    schema = text_format.Parse(open(config.schema_file).read(), schema_pb2.Schema())
    names = {f.name for f in schema.feature}
    assert set(config.raw_columns) <= names
    assert all(not f.HasField("shape") for f in schema.feature)  # every column optional
    assert [d.name for d in schema.string_domain] == ["payment_type"]


def test_eval_config_gates_the_overall_slice_and_reports_context_slices():
    config = configs.load(configs.DEFAULT_CONFIG)
    eval_config = build_eval_config(config)
    spec = eval_config.model_specs[0]
    assert (spec.label_key, spec.prediction_key) == ("big_tipper", "probabilities")
    assert list(spec.preprocessing_function_names) == ["transform_features"]
    assert [list(s.feature_keys) for s in eval_config.slicing_specs] == [
        [], *([c] for c in config.context)]
    [auc] = [m for m in eval_config.metrics_specs[0].metrics if m.class_name == "AUC"]
    [overall] = auc.per_slice_thresholds
    assert list(overall.slicing_specs) == [eval_config.slicing_specs[0]]
    assert overall.threshold.value_threshold.lower_bound.value == pytest.approx(0.90)
    assert overall.threshold.change_threshold.absolute.value == pytest.approx(-0.01)
    others = [m for m in eval_config.metrics_specs[0].metrics if m.class_name != "AUC"]
    assert all(not m.per_slice_thresholds and not m.HasField("threshold") for m in others)


def test_regression_gate_is_lower_is_better():
    config = configs.load(configs.DEFAULT_CONFIG)
    config = dataclasses.replace(
        config, label=configs.LabelConfig("trip_total", "regression", column="tips"),
        gates=configs.GatesConfig(metric="mse", lower_bound=None, upper_bound=4.0))
    [mse] = [m for m in build_eval_config(config).metrics_specs[0].metrics
             if m.class_name == "MeanSquaredError"]
    threshold = mse.per_slice_thresholds[0].threshold
    assert threshold.value_threshold.upper_bound.value == 4.0
    assert threshold.change_threshold.absolute.value == pytest.approx(0.01)


def test_curation_marks_nearly_empty_columns_optional():
    schema = schema_pb2.Schema()
    schema.feature.add(name="tract", type=schema_pb2.INT).presence.min_fraction = 1.0
    curated = curate(schema, optional=("tract",))
    assert curated.feature[0].presence.min_fraction == 0.0
    with pytest.raises(ValueError, match="not in the schema: \\['nope'\\]"):
        curate(schema, optional=("nope",))
