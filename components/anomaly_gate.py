"""AnomalyGate: fail the run when ExampleValidator found anomalies at or above a severity.

TFX's ExampleValidator records anomalies and lets the run go on. Placed between
ExampleValidator and Transform, this component stops it, with a message naming
every anomalous feature, so no model is trained (or pushed) on data that broke
the schema.
"""


import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

ANOMALIES_FILE = "SchemaDiff.pb"
SEVERITIES = {"WARNING": anomalies_pb2.AnomalyInfo.WARNING,
              "ERROR": anomalies_pb2.AnomalyInfo.ERROR}


class DataAnomalyError(RuntimeError):
    """The data broke the schema; the message lists feature and anomaly per split."""


def blocking_anomalies(anomalies: anomalies_pb2.Anomalies, min_severity: str) -> list[str]:
    """'feature: short description (reason)' for each anomaly at or above min_severity."""
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity {min_severity!r} is not one of {sorted(SEVERITIES)}")
    floor = SEVERITIES[min_severity]
    found = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        if info.severity >= floor:
            reasons = "; ".join(r.description for r in info.reason) or info.description
            found.append(f"{feature}: {info.short_description} ({reasons})")
    if anomalies.HasField("dataset_anomaly_info") and \
            anomalies.dataset_anomaly_info.severity >= floor:
        info = anomalies.dataset_anomaly_info
        found.append(f"<dataset>: {info.short_description} ({info.description})")
    return found


def check(anomalies_uri: str, split_names: list[str], min_severity: str) -> None:
    problems = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        anomalies = anomalies_pb2.Anomalies()
        with tf.io.gfile.GFile(path, "rb") as f:  # the pipeline root may be gs://
            anomalies.ParseFromString(f.read())
        problems += [f"[{split}] {p}" for p in blocking_anomalies(anomalies, min_severity)]
    if problems:
        raise DataAnomalyError(
            f"data validation failed ({len(problems)} anomal{'y' if len(problems) == 1 else 'ies'} "
            f"at severity >= {min_severity}):\n  " + "\n  ".join(problems))


@component
def AnomalyGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
    min_severity: Parameter[str] = "ERROR",
) -> None:
    """Raise DataAnomalyError (failing the run) on anomalies at or above min_severity."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    check(anomalies.uri, splits, min_severity)
