"""Benchmark: the data components at scale on one machine (Beam DirectRunner, multi-processing).

For each size N, a synthetic taxi-shaped CSV of N rows is generated from the taxi sample
(same columns; categorical values resampled from the sample's; numeric columns resampled
from the sample's empirical distribution plus a small jitter, 1% of the column's standard
deviation, clipped to the sample's range; integers stay integers; gaps stay gaps at the
sample's rate). Then ExampleGen -> StatisticsGen -> SchemaGen -> Transform of the
project's pipeline (create_pipeline's DAG up to Transform, the default config's
preprocessing, SchemaGen inferring the schema) runs with LocalDagRunner in a temporary
folder. One JSON line per N on stdout (logs go to stderr):

    {"bench": "scale", "rows": N, "seconds": ..., "rows_per_s": ..., "components": {...}, ...}

`seconds` is the pipeline run (not the CSV generation); `components` are each
component's execution times from ML Metadata.

    python bench/scale.py [--rows 15000,150000,1500000] [--workers 0] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

from bench.machine import TAXI_CSV, cpu_info
from pipeline import configs

DEFAULT_ROWS = (15_000, 150_000, 1_500_000)
CHUNK = 100_000


def _kind(values: list[str]) -> str:
    present = [v for v in values if v != ""]
    for kind, parse in (("int", int), ("float", float)):
        try:
            for v in present:
                parse(v)
            return kind
        except ValueError:
            continue
    return "string"


def column_samplers(sample_csv: str, config: configs.PipelineConfig) -> tuple[list[str], dict]:
    """Per column: ("resample", values) or ("jitter", values, present mask, kind, std, lo, hi)."""
    with open(sample_csv, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        columns = list(zip(*reader))
    numeric = {*config.features.numeric, *config.features.log_numeric, *config.label.raw_columns}
    samplers = {}
    for name, values in zip(header, columns):
        kind = _kind(list(values))
        if name in numeric and kind != "string":
            present = np.array([v != "" for v in values])
            nums = np.array([float(v) if v else 0.0 for v in values])
            real = nums[present]
            samplers[name] = ("jitter", nums, present, kind, float(real.std()),
                              float(real.min()), float(real.max()))
        else:  # categorical, identifiers, timestamps: the sample's values as they are
            samplers[name] = ("resample", np.array(values, dtype=object))
    return header, samplers


def sample_column(sampler: tuple, n: int, rng: np.random.Generator) -> np.ndarray:
    if sampler[0] == "resample":
        values = sampler[1]
        return values[rng.integers(len(values), size=n)]
    _, nums, present, kind, std, lo, hi = sampler
    idx = rng.integers(len(nums), size=n)
    x = np.clip(nums[idx] + rng.normal(0.0, 0.01 * std, size=n), lo, hi)
    text = (np.char.mod("%d", np.rint(x).astype(np.int64)) if kind == "int"
            else np.char.mod("%.6f", x)).astype(object)
    text[~present[idx]] = ""
    return text


def generate(path: str, rows: int, sample_csv: str, config: configs.PipelineConfig,
             seed: int) -> None:
    header, samplers = column_samplers(sample_csv, config)
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for start in range(0, rows, CHUNK):
            n = min(CHUNK, rows - start)
            writer.writerows(zip(*(sample_column(samplers[c], n, rng) for c in header)))


# -- the pipeline -------------------------------------------------------------------------
def run_data_components(config: configs.PipelineConfig, workers: int) -> dict[str, float]:
    """create_pipeline's DAG up to Transform; returns each component's seconds."""
    from ml_metadata import metadata_store
    from tfx import v1 as tfx
    from tfx.orchestration.pipeline import RunOptions

    from pipeline import in_process_beam
    from pipeline.pipeline import create_pipeline

    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    beam_args = configs.BeamConfig("multi_processing", workers).pipeline_args()
    dag = create_pipeline(config, metadata_connection_config=connection,
                          beam_pipeline_args=beam_args)
    in_process_beam.tune(beam_args)  # as pipeline.local_runner does
    with contextlib.redirect_stdout(sys.stderr):
        tfx.orchestration.LocalDagRunner().run(dag, run_options=RunOptions(to_nodes=["Transform"]))
    store = metadata_store.MetadataStore(connection)
    types = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
    return {types[e.type_id]: (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1e3
            for e in store.get_executions()}


def bench_one(rows: int, workers: int, seed: int, workdir: str | None) -> dict:
    base = configs.load(configs.DEFAULT_CONFIG)
    tmp = tempfile.mkdtemp(prefix=f"hypernet-scale-{rows}-", dir=workdir)
    try:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        start = time.perf_counter()
        generate(os.path.join(data, "data.csv"), rows, TAXI_CSV, base, seed)
        generate_s = time.perf_counter() - start
        config = dataclasses.replace(
            base, name="hypernet-scale", data_root=data, output_dir=tmp, schema_file=None,
            enable_cache=False, gates=dataclasses.replace(base.gates, anomaly_severity=None))
        start = time.perf_counter()
        components = run_data_components(config, workers)
        seconds = time.perf_counter() - start
        return {
            "bench": "scale", "rows": rows, "seconds": round(seconds, 2),
            "rows_per_s": round(rows / seconds, 1),
            "components": {k: round(v, 2) for k, v in sorted(components.items())},
            # Components that read the rows; SchemaGen (no Beam, ~0.02 s) would show millions.
            "component_rows_per_s": {k: round(rows / v, 1) for k, v in sorted(components.items())
                                     if v >= 1.0},
            "csv_mb": round(os.path.getsize(os.path.join(data, "data.csv")) / 2**20, 1),
            "generate_seconds": round(generate_s, 2),
            "runner": "DirectRunner", "direct_running_mode": "multi_processing",
            "direct_num_workers": workers, **cpu_info(),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(map(str, DEFAULT_ROWS)),
                        help="comma-separated sizes (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0,
                        help="Beam DirectRunner worker processes (0: one per CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="parent of the temporary folders")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    for rows in (int(r) for r in args.rows.split(",") if r.strip()):
        print(json.dumps(bench_one(rows, args.workers, args.seed, args.workdir)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
