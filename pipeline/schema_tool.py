"""Curate an inferred schema into the one the pipeline validates new data against.

    python -m pipeline.schema_tool INFERRED_SCHEMA.pbtxt OUTPUT.pbtxt [--max-closed-domain 20]
        [--optional FEATURE ...]

SchemaGen's inferred schema closes every string domain: a new taxi company in next
week's data would then be an anomaly and stop the run, although the model handles
unseen values (out-of-vocabulary bucket). Curation keeps small domains closed (a new
payment type *is* a drift worth stopping for) and opens large ones. Columns that are
almost always empty (taxi: pickup_census_tract, 1 value in 15,002 rows) are marked
optional, or a span where they happen to be empty would count as "column dropped".
"""

from __future__ import annotations

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import argparse
import sys

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

HEADER = ("# Curated schema (pipeline/schema_tool.py): inferred by SchemaGen from the taxi sample,\n"
          "# string domains with more than {n} values opened, optional: {optional}.\n"
          "# Regenerate: see README, 'The schema'.\n")


def curate(schema: schema_pb2.Schema, max_closed_domain: int = 20,
           optional: tuple[str, ...] = ()) -> schema_pb2.Schema:
    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    unknown = set(optional) - {f.name for f in out.feature}
    if unknown:
        raise ValueError(f"--optional names features not in the schema: {sorted(unknown)}")
    for feature in out.feature:
        if feature.name in optional:
            feature.presence.min_fraction = 0.0
            feature.presence.min_count = 0
    large = {d.name for d in out.string_domain if len(d.value) > max_closed_domain}
    for feature in out.feature:
        if feature.WhichOneof("domain_info") == "domain" and feature.domain in large:
            feature.ClearField("domain")
    kept = [d for d in out.string_domain if d.name not in large]
    del out.string_domain[:]
    out.string_domain.extend(kept)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inferred")
    parser.add_argument("output")
    parser.add_argument("--max-closed-domain", type=int, default=20)
    parser.add_argument("--optional", nargs="*", default=["pickup_census_tract"])
    args = parser.parse_args(argv)
    schema = schema_pb2.Schema()
    with open(args.inferred) as f:
        text_format.Parse(f.read(), schema)
    curated = curate(schema, args.max_closed_domain, tuple(args.optional))
    with open(args.output, "w") as f:
        f.write(HEADER.format(n=args.max_closed_domain, optional=", ".join(args.optional) or "none")
                + text_format.MessageToString(curated))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
