"""TFX components that ship the materialized target networks of a blessed hypernetwork.

TargetNetworkExporter (after the Evaluator) writes one SavedModel per context value
plus manifest.json; TargetNetworkPusher copies them next to the pushed hypernetwork,
under the same version number, only when the Pusher pushed it. (TFX's own Pusher
cannot do this: it skips every `saved_model.pb` below the top level of the model.)
"""

import json
import os
from collections.abc import Iterator

import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import (
    Model,
    ModelBlessing,
    ModelEvaluation,
    PushedModel,
    TransformGraph,
)

from pipeline.configs import MANIFEST_FILE, deserialize
from trainer.target_export import export_target_networks

SERVING_DIR = "Format-Serving"  # where TFX's path_utils look for a Model artifact's files
SAVED_MODEL_FILE = "saved_model.pb"


def _tree(top: str) -> Iterator[tuple[str, list[str]]]:
    """(folder relative to top, its file names) of every folder below top, via tf.io.gfile.

    Not os.walk / os.path.relpath: those take a URI for a local path (relpath resolves
    "gs://b/x" against the working directory)."""
    top = top.rstrip("/")
    for root, _, files in tf.io.gfile.walk(top):
        yield root.rstrip("/")[len(top):].lstrip("/"), files


def copy_tree(source: str, target: str) -> None:
    """Copy every folder and file below source to the same place below target."""
    for rel, files in _tree(source):
        tf.io.gfile.makedirs(os.path.join(target, rel))
        for name in files:
            tf.io.gfile.copy(os.path.join(source, rel, name), os.path.join(target, rel, name),
                             overwrite=True)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def publish(staging: str, destination: str) -> None:
    """Move the staged folder to destination.

    A local directory rename is atomic. Object stores have no directory rename (GCS
    moves object by object; TF's ram:// renames only the folder entry and loses the
    files below it), so there the files are moved one by one, each SavedModel's
    saved_model.pb and the manifest last: a loader keyed on them never finds a network
    whose variables are still missing.
    """
    if _is_local(staging) and _is_local(destination):
        tf.io.gfile.rename(staging, destination)
        return
    moves = []
    for rel, files in _tree(staging):
        tf.io.gfile.makedirs(os.path.join(destination, rel))
        moves += [(os.path.join(staging, rel, n), os.path.join(destination, rel, n)) for n in files]
    last = (SAVED_MODEL_FILE, MANIFEST_FILE)
    for source, target in sorted(moves, key=lambda m: os.path.basename(m[0]) in last):
        tf.io.gfile.rename(source, target)
    tf.io.gfile.rmtree(staging)


@component
def TargetNetworkExporter(
    model: InputArtifact[Model],
    transform_graph: InputArtifact[TransformGraph],
    blessing: InputArtifact[ModelBlessing],
    evaluation: InputArtifact[ModelEvaluation],
    target_networks: OutputArtifact[Model],
    config: Parameter[str],
) -> None:
    """Materialize the blessed hypernetwork's target network for every context value."""
    out = os.path.join(target_networks.uri, SERVING_DIR)
    tf.io.gfile.makedirs(out)
    if not blessing.get_int_custom_property("blessed"):
        with tf.io.gfile.GFile(os.path.join(out, MANIFEST_FILE), "w") as f:
            json.dump({"hypernetwork": model.uri, "blessed": False, "networks": []}, f)
        logging.info("TargetNetworkExporter: the model is not blessed; nothing exported")
        return
    manifest = export_target_networks(
        deserialize(json.loads(config)), os.path.join(model.uri, SERVING_DIR),
        tft.TFTransformOutput(transform_graph.uri), out, evaluation.uri)
    logging.info("TargetNetworkExporter: %d target networks in %s",
                 len(manifest["networks"]), out)


@component
def TargetNetworkPusher(
    target_networks: InputArtifact[Model],
    pushed_model: InputArtifact[PushedModel],
    pushed_target_networks: OutputArtifact[PushedModel],
    base_directory: Parameter[str],
) -> None:
    """Copy the target networks to base_directory/<the hypernetwork's pushed version>.

    Files go to a hidden staging folder that is moved into place at the end (`publish`),
    so a crash never leaves a half-written version where a server would look; an
    existing version is never overwritten.
    """
    pushed_target_networks.set_int_custom_property("pushed", 0)
    if not pushed_model.get_int_custom_property("pushed"):
        logging.info("TargetNetworkPusher: the hypernetwork was not pushed; nothing to push")
        return
    version = pushed_model.get_string_custom_property("pushed_version")
    destination = os.path.join(base_directory, version)
    if tf.io.gfile.exists(destination):
        raise FileExistsError(f"{destination} already exists; refusing to overwrite it")
    staging = os.path.join(base_directory, f".{version}.incomplete")
    if tf.io.gfile.exists(staging):
        tf.io.gfile.rmtree(staging)
    copy_tree(os.path.join(target_networks.uri, SERVING_DIR), staging)
    publish(staging, destination)
    pushed_target_networks.set_int_custom_property("pushed", 1)
    pushed_target_networks.set_string_custom_property("pushed_destination", destination)
    pushed_target_networks.set_string_custom_property("pushed_version", version)
    logging.info("TargetNetworkPusher: target networks pushed to %s", destination)
