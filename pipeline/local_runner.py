"""Run the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

    python -m pipeline.local_runner [--config FILE] [--direct_running_mode multi_processing
                                     --direct_num_workers 0] [--beam_arg=--NAME=VALUE ...]
    tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
    tfx run create --engine local --pipeline_name hypernet-taxi

The TFX CLI runs this file as a script with no arguments: it reads the config
from $HYPERNET_CONFIG (default pipeline/taxi.yaml).
"""

import os
import sys

# Run as a script (the TFX CLI does), this file's folder comes first on sys.path and its
# pipeline.py would shadow the `pipeline` package: the project root takes its place.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import argparse
import dataclasses

from absl import logging
from tfx import v1 as tfx

from pipeline import configs, in_process_beam
from pipeline.inputs import check_data
from pipeline.pipeline import create_pipeline


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: $HYPERNET_CONFIG "
                        "or pipeline/taxi.yaml)")
    parser.add_argument("--direct_running_mode", default=None,
                        choices=["in_memory", "multi_threading", "multi_processing"])
    parser.add_argument("--direct_num_workers", type=int, default=None,
                        help="Beam DirectRunner workers (0: one per CPU)")
    parser.add_argument("--beam_arg", action="append", default=[], metavar="--NAME=VALUE",
                        help="an extra Beam pipeline option, repeatable, written with '=': "
                        "--beam_arg=--runner=FlinkRunner (added to the config's beam.extra_args)")
    parser.add_argument("--retrain", action="store_true",
                        help="scheduled retraining: require spans, train on the newest, print "
                        "the verdict (exit 0 even when the model is rejected)")
    return parser.parse_args(argv)


def build(argv: list[str]) -> tfx.dsl.Pipeline:
    args = parse_args(argv)
    config = configs.load(args.config)
    if args.retrain and not config.uses_spans:
        raise configs.ConfigError(
            f"--retrain needs spans matching {config.span_pattern!r} under {config.data_root} "
            "(make split-spans makes them from the taxi sample)")
    check_data(config)
    return create_pipeline(
        config,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        beam_pipeline_args=beam_pipeline_args(config, args),
    )


def beam_pipeline_args(config: configs.PipelineConfig, args: argparse.Namespace) -> list[str]:
    """The config's Beam settings with the command line's applied on top, validated.

    The flags only change how this run executes: the config that travels in the pipeline
    (custom_config, part of the components' cache keys) stays the file's.
    """
    beam = config.beam
    beam = dataclasses.replace(
        beam,
        direct_running_mode=getattr(args, "direct_running_mode", None) or beam.direct_running_mode,
        direct_num_workers=beam.direct_num_workers
        if getattr(args, "direct_num_workers", None) is None else args.direct_num_workers,
        extra_args=(*beam.extra_args, *args.beam_arg))
    return dataclasses.replace(config, beam=beam).beam.pipeline_args()  # replace() validates


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.INFO)
    pipeline = build(argv)
    in_process_beam.tune(pipeline.beam_pipeline_args)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    if parse_args(argv).retrain:
        from pipeline import summary

        summary.main(["--config", configs.load(parse_args(argv).config).source])


if __name__ == "__main__":
    main(sys.argv[1:])
