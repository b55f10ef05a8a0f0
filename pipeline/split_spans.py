"""Split a CSV into time-ordered spans, to replay scheduled retraining on real data.

    python -m pipeline.split_spans [--csv data/taxi/data.csv] [--spans 3]
        [--time-column trip_start_timestamp] [--out data/taxi-spans]

Writes <out>/span-1/data.csv ... span-N/data.csv (oldest first, equal row counts), read by
pipeline/taxi-spans.yaml (`make retrain`). The spans get a folder of their own: next to
CSV files they would turn a config on that folder from reading the files into reading only
the newest span, so writing them there is refused.
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import sys

from pipeline.configs import PACKAGE_DIR

DATA_DIR = os.path.join(os.path.dirname(PACKAGE_DIR), "data")
TAXI_CSV = os.path.join(DATA_DIR, "taxi", "data.csv")
SPANS_DIR = os.path.join(DATA_DIR, "taxi-spans")  # pipeline/taxi-spans.yaml's data_root
SPAN_GLOB = "span-*"


def stale_spans(folder: str) -> list[str]:
    """Span folders sitting next to top-level CSV files in `folder` (what `make split-spans`
    wrote into data/taxi before spans had their own folder): a config on `folder` would read
    only the newest span and ignore the CSVs."""
    if not glob.glob(os.path.join(folder, "*.csv")):
        return []
    return sorted(p for p in glob.glob(os.path.join(folder, SPAN_GLOB)) if os.path.isdir(p))


def stale_spans_message(folder: str, spans: list[str]) -> str:
    names = ", ".join(os.path.basename(p) for p in spans)
    return (f"{folder} holds CSV files and span folders ({names}): a config on it reads only "
            f"the newest span and ignores the CSVs. Spans now go to their own folder "
            f"(make split-spans writes data/taxi-spans/, read by pipeline/taxi-spans.yaml); "
            f"remove these: rm -r {os.path.join(folder, SPAN_GLOB)}")


def split_spans(csv_path: str, out_dir: str, spans: int = 3,
                time_column: str = "trip_start_timestamp") -> list[str]:
    """Write `spans` time-ordered spans of csv_path under out_dir; their paths, oldest first."""
    if spans < 1:
        raise ValueError(f"spans must be >= 1, got {spans}")
    if glob.glob(os.path.join(out_dir, "*.csv")):
        raise ValueError(f"{out_dir} holds CSV files: spans written next to them would make a "
                         "config on that folder read only the newest span; choose another --out")
    with open(csv_path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    if time_column not in header:
        raise ValueError(f"{csv_path}: no column {time_column!r} to order the spans by")
    t = header.index(time_column)
    rows.sort(key=lambda r: float(r[t]) if r[t] else float("-inf"))
    paths = []
    for i in range(spans):
        chunk = rows[i * len(rows) // spans:(i + 1) * len(rows) // spans]
        path = os.path.join(out_dir, f"span-{i + 1}", "data.csv")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(chunk)
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv", default=TAXI_CSV)
    parser.add_argument("--spans", type=int, default=3)
    parser.add_argument("--time-column", default="trip_start_timestamp")
    parser.add_argument("--out", default=SPANS_DIR)
    args = parser.parse_args(argv)
    try:
        paths = split_spans(args.csv, args.out, args.spans, args.time_column)
    except ValueError as e:
        print(f"split_spans: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    old = stale_spans(os.path.dirname(os.path.abspath(args.csv)))
    if old:
        print(f"warning: {stale_spans_message(os.path.dirname(os.path.abspath(args.csv)), old)}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
