"""The input files a run reads, and the checks that fail before a run on inputs that cannot work."""

from __future__ import annotations

import csv
import glob
import os

from pipeline.configs import ConfigError, PipelineConfig


def _fail(config: PipelineConfig, message: str) -> None:
    raise ConfigError(f"{config.source}: {message}")


def input_files(config: PipelineConfig) -> list[str]:
    """The CSV files this run reads: the selected spans', or data_root's top level."""
    if not config.uses_spans:
        return sorted(glob.glob(os.path.join(config.data_root, "*.csv")))
    files = []
    for span in config.spans()[-config.num_spans:]:
        pattern = config.span_pattern.replace("{SPAN}", str(span))
        files += sorted(glob.glob(os.path.join(config.data_root, pattern)))
    return files


def check_data(config: PipelineConfig) -> None:
    """Fail before running on inputs that cannot work, naming the file.

    Checked: the schema file exists; the newest span (or the plain folder) has a CSV
    with at least one row; in a plain folder, every configured column is in each
    header. Columns and types of scheduled spans are the anomaly gate's job (they
    are validated against the curated schema inside the pipeline).
    """
    if config.schema_file and not os.path.exists(config.schema_file):
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
        with open(path, newline="") as f:
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


def _role(config: PipelineConfig, column: str) -> str:
    if column in config.context:
        return "context feature"
    return "label" if column in config.label.raw_columns else "feature"
