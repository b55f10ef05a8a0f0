"""The input files a run reads, and the checks that fail before a run on inputs that cannot work."""

from __future__ import annotations

import csv
import os

import tensorflow as tf

from pipeline.configs import ConfigError, PipelineConfig


def _fail(config: PipelineConfig, message: str) -> None:
    raise ConfigError(f"{config.source}: {message}")


def input_files(config: PipelineConfig) -> list[str]:
    """The CSV files this run reads: the selected spans', or data_root's top level.

    Through tf.io.gfile, as CsvExampleGen reads them: data_root may be gs://."""
    if not config.uses_spans:
        return sorted(tf.io.gfile.glob(os.path.join(config.data_root, "*.csv")))
    files = []
    for span in config.spans()[-config.num_spans:]:
        pattern = config.span_pattern.replace("{SPAN}", str(span))
        files += sorted(tf.io.gfile.glob(os.path.join(config.data_root, pattern)))
    return files


def check_data(config: PipelineConfig) -> None:
    """Fail before running on inputs that cannot work, naming the file.

    Checked: the schema file exists; the newest span (or the plain folder) has a CSV
    with at least one row; in a plain folder, every configured column is in each
    header. Columns and types of scheduled spans are the anomaly gate's job (they
    are validated against the curated schema inside the pipeline).
    """
    if config.schema_file and not tf.io.gfile.exists(config.schema_file):
        _fail(config, f"schema_file {config.schema_file!r} does not exist")
    if config.uses_spans:
        latest = config.span_pattern.split("/")[0].replace("{SPAN}", str(config.spans()[-1]))
        where = os.path.join(config.data_root, latest)
    else:
        where = config.data_root
    files = [f for f in input_files(config) if os.path.dirname(f) == where] \
        if config.uses_spans else input_files(config)
    if not files:
        _fail(config, f"no CSV file in {where!r}" + (" (an empty span)" if config.uses_spans else ""))
    for path in files:
        with tf.io.gfile.GFile(path) as f:  # no newline translation, as newline=""
            reader = csv.reader(f)
            header, first_row = next(reader, None), next(reader, None)
        if not header:
            raise ConfigError(f"{path}: empty file (no CSV header)")
        if first_row is None:
            raise ConfigError(f"{path}: a header and no rows")
        missing = [c for c in config.raw_columns if c not in header]
        if missing and not config.uses_spans:
            what = ", ".join(f"{c!r} ({_role(config, c)})" for c in missing)
            raise ConfigError(f"{path}: column(s) {what} named in {config.source} "
                              f"are not in the CSV header {header}")
    if config.label.column:
        check_label(config, files)


def check_label(config: PipelineConfig, files: list[str]) -> None:
    """Fail on a label column the task cannot read, naming the column and a few values.

    Regression needs numbers; a binary label needs 0/1 values or `label.positive`, which
    must occur in the column. Checked on every row before the run, where Transform would
    fail a minute in ("StringToNumberOp could not correctly convert string: N").
    """
    label, column = config.label, str(config.label.column)
    values: dict[str, str] = {}  # distinct value -> where first seen (file:row), a bounded few
    non_numeric: dict[str, str] = {}
    for path in files:
        with tf.io.gfile.GFile(path) as f:  # no newline translation, as newline=""
            for row_number, row in enumerate(csv.DictReader(f), start=2):
                value = (row.get(column) or "").strip()
                if value == "":
                    continue
                if len(values) < 100:
                    values.setdefault(value, f"{path}:{row_number}")
                if len(non_numeric) < 5 and not _is_number(value):
                    non_numeric.setdefault(value, f"{path}:{row_number}")
    seen = sorted(values)[:8]
    where = f"{config.source}: label column {column!r}"
    if label.task == "regression" and non_numeric:
        first = next(iter(non_numeric.items()))
        raise ConfigError(f"{where} holds values that are not numbers, e.g. "
                          f"{sorted(non_numeric)} (first at {first[1]}): a regression "
                          "label must be numeric")
    if label.task != "binary":
        return
    if label.positive is not None:
        if label.positive not in values and len(values) < 100:
            raise ConfigError(f"{where}: label.positive {label.positive!r} never occurs; "
                              f"the column holds {seen}")
        return
    not_binary = [v for v in values if not _is_number(v) or float(v) not in (0.0, 1.0)]
    if not_binary:
        raise ConfigError(f"{where} holds {seen}{' ...' if len(values) > 8 else ''}, not "
                          f"0 and 1 (e.g. {not_binary[0]!r} at {values[not_binary[0]]}): name "
                          "the value that means 1 with label.positive (one of these values)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _role(config: PipelineConfig, column: str) -> str:
    if column in config.context:
        return "context feature"
    return "label" if column in config.label.raw_columns else "feature"
