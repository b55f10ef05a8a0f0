"""Split a CSV into time-ordered spans, to replay scheduled retraining on real data.

    python -m pipeline.split_spans [--csv data/taxi/data.csv] [--spans 3]
        [--time-column trip_start_timestamp] [--out data/taxi]

Writes <out>/span-1/data.csv ... span-N/data.csv (oldest first, equal row counts).
With spans present, the default config reads the newest one.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from pipeline.configs import PACKAGE_DIR

TAXI_CSV = os.path.join(os.path.dirname(PACKAGE_DIR), "data", "taxi", "data.csv")


def split_spans(csv_path: str, out_dir: str, spans: int = 3,
                time_column: str = "trip_start_timestamp") -> list[str]:
    if spans < 1:
        raise ValueError(f"spans must be >= 1, got {spans}")
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
    parser.add_argument("--out", default=os.path.dirname(TAXI_CSV))
    args = parser.parse_args(argv)
    for path in split_spans(args.csv, args.out, args.spans, args.time_column):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
