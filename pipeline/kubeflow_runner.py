"""Compile the same pipeline for Kubeflow Pipelines (v2 pipeline spec JSON).

    python -m pipeline.kubeflow_runner --output hypernet.json --image REGISTRY/hypernet-tfx:TAG \
        --output-dir gs://BUCKET/hypernet --data-root gs://BUCKET/data/taxi [--config FILE] \
        [--beam_arg=--runner=DataflowRunner --beam_arg=--project=P ...] [--train-workers N]

Every component runs in the image built from this repository's Dockerfile, which
installs this package: the Trainer's run_fn and Transform's preprocessing_fn are
referenced as dotted paths into it (no local file is baked into the spec). The
pipeline root is <output-dir>/tfx_pipeline_output/<name>; pushed models go to its
serving_model/ folder.

With training.workers > 1 (or --train-workers N) the Trainer task submits a Vertex AI
CustomJob: a chief and N - 1 workers of the same image (training.vertex_* in the config),
each replica running run_fn under the $TF_CONFIG Vertex gives it.
"""

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import argparse
import dataclasses
import os
import sys

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import configs
from pipeline.pipeline import create_pipeline

DEFAULT_IMAGE = "hypernet-tfx:latest"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Compile the pipeline for Kubeflow (v2 spec)")
    parser.add_argument("--config", default=None, help="YAML config (default: $HYPERNET_CONFIG "
                        "or pipeline/taxi.yaml)")
    parser.add_argument("--output", default="hypernet.json", help="pipeline spec JSON to write")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="container image for every step")
    parser.add_argument("--output-dir", default=None,
                        help="where pipeline outputs go (gs://... accepted); default: the config's")
    parser.add_argument("--data-root", default=None,
                        help="CSV folder as the cluster sees it (gs://... accepted)")
    parser.add_argument("--beam_arg", action="append", default=[], metavar="--NAME=VALUE",
                        help="an extra Beam pipeline option for every component, repeatable, "
                        "written with '=': --beam_arg=--runner=DataflowRunner (added to the "
                        "config's beam.extra_args; README, 'Scale out')")
    parser.add_argument("--train-workers", type=int, default=None, metavar="N",
                        help="train on N Vertex AI replicas (sets training.workers and "
                        "training.distribution: multi_worker_mirrored)")
    return parser.parse_args(argv)


def compile_pipeline(argv: list[str]) -> dict:
    """Compile and write the spec; returns it as a dict."""
    args = parse_args(argv)
    config = configs.load(args.config)
    overrides = {k: v for k, v in (("output_dir", args.output_dir), ("data_root", args.data_root))
                 if v}
    # No path of this machine goes into the spec: the config's file name only, and the
    # curated schema's content (CuratedSchemaGen's parameter), not its path.
    config = dataclasses.replace(config, source=os.path.basename(config.source), **overrides)
    if args.train_workers is not None:
        config = configs.with_workers(config, args.train_workers)
    beam = dataclasses.replace(config.beam, extra_args=(*config.beam.extra_args, *args.beam_arg))
    beam_args = dataclasses.replace(config, beam=beam).beam.pipeline_args()  # replace() validates
    pipeline = create_pipeline(config, beam_pipeline_args=beam_args, vertex_image=args.image)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=args.image),
        output_dir=os.path.dirname(os.path.abspath(args.output)),
        output_filename=os.path.basename(args.output))
    return runner.run(pipeline, write_out=True)


if __name__ == "__main__":
    compile_pipeline(sys.argv[1:])
    print(f"wrote {parse_args(sys.argv[1:]).output}")
