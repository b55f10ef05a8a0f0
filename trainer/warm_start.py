"""Warm start: begin retraining from the last blessed model's generator weights.

A new span reorders and grows the vocabularies, and an id indexes weights: a context
id a row of the context embedding, a categorical token a row of the target's first
kernel, a class a column of its last layer. So the base model's weights are mapped to
this run's vocabularies *by token*: a token in both keeps its row wherever its id
moved; a token the base model did not know starts as the base model treated it, as
out-of-vocabulary (its categorical input row = its column's OOV row; its context
embedding and intercept = zero, the OOV context's, i.e. the shared network); a class it did not
know keeps this model's initialisation; a dropped token's row is gone. Every other
variable is copied as it is, the context intercepts included (they are fitted again after
training), but not the label scaling, which this run's labels set. The warm-started model
thus computes, before its first step, what the base model computed for every token it knew.

Any other difference (another variable, another shape, a generator whose weights
cannot be remapped) means training from scratch, with the reason logged: never a
half-copied model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import saved_model_pb2, trackable_object_graph_pb2

from trainer.vocab_remap import Remap, VariableRemap, build_remap, remapped_value, variable_remaps


def _key(variable: tf.Variable | SavedVariable) -> str:
    # Drop the model's own name scope: "hyper_model/hypernetwork/..." -> "hypernetwork/...".
    return variable.name.split("/", 1)[-1]


def mismatch(model_vars: list[tf.Variable], base_vars: Sequence[tf.Variable | SavedVariable],
             remapped: Mapping[int, Any] | None = None) -> str | None:
    """Why the base variables cannot initialise the model's, or None when they can
    (`remapped`: ids of variables whose shape may differ, being remapped)."""
    ours = {_key(v): (tuple(v.shape), id(v)) for v in model_vars}
    theirs = {_key(v): tuple(v.shape) for v in base_vars}
    if ours.keys() != theirs.keys():
        missing, extra = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
        return f"different variables (new: {missing[:3]}, gone: {extra[:3]})"
    for name, (shape, ident) in ours.items():
        if theirs[name] != shape and ident not in (remapped or {}):
            return f"{name} has shape {theirs[name]} in the base model, {shape} now"
    return None


def variables_under(root: Any, trainable: bool = True) -> list[tf.Variable]:
    """Every trainable (or every non-trainable) variable reachable from a restored object,
    each once.

    A restored Keras layer has no `trainable_variables` unless it was saved with Keras's
    traces (trainer/hypernet/keras_env.without_keras_traces); walking the object graph reads both.
    """
    found, stack, seen = [], [root], {id(root)}
    while stack:
        node = stack.pop()
        if isinstance(node, tf.Variable):
            if node.trainable == trainable:
                found.append(node)
            continue
        for child in tf.train.TrackableView(node).children(node).values():
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return found


@dataclasses.dataclass(frozen=True)
class SavedVariable:
    """A variable of an exported model, read from its checkpoint only when asked."""

    name: str  # as tf.Variable.name gives it: "<scope>/<name>:0"
    shape: tuple[int, ...]
    trainable: bool
    reader: Any  # a checkpoint reader (tf.compat.v1.train.NewCheckpointReader)
    checkpoint_key: str

    def numpy(self) -> Any:
        return self.reader.get_tensor(self.checkpoint_key)


def saved_variables(model_dir: str, child: str = "hyper") -> list[SavedVariable]:
    """Every variable under the exported root's `child`, each once, read from the
    SavedModel's object graph and checkpoint without loading the model.

    Why: `tf.saved_model.load` rebuilds every traced function of the model (the serving
    signature, Transform's graph) to hand back variables that are only read: 1.1 s of
    each target-network export and each warm start here, against milliseconds for this.
    The checkpoint's object graph numbers its nodes as the SavedModel's does, which is
    how TensorFlow's own loader restores them.
    """
    with tf.io.gfile.GFile(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
        saved = saved_model_pb2.SavedModel.FromString(f.read())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    # The reader by prefix: tf.train.load_checkpoint takes a prefix that is also a folder
    # (ram://, some object stores) for a folder of checkpoints and finds none.
    reader = tf.compat.v1.train.NewCheckpointReader(
        os.path.join(model_dir, "variables", "variables"))
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    if len(graph.nodes) != len(nodes):
        raise ValueError(f"its checkpoint has {len(graph.nodes)} objects, its object graph "
                         f"{len(nodes)}")
    root = next((c.node_id for c in nodes[0].children if c.local_name == child), None)
    if root is None:
        raise ValueError(f"it has no {child!r}")
    found, stack, seen = [], [root], {root}
    while stack:
        node = stack.pop()
        if nodes[node].WhichOneof("kind") == "variable":
            v = nodes[node].variable
            key = next(a.checkpoint_key for a in graph.nodes[node].attributes
                       if a.name == "VARIABLE_VALUE")
            found.append(SavedVariable(f"{v.name}:0", tuple(d.size for d in v.shape.dim),
                                       v.trainable, reader, key))
            continue
        for ref in nodes[node].children:
            if ref.node_id not in seen:
                seen.add(ref.node_id)
                stack.append(ref.node_id)
    return found


def _load_base(model_dir: str) -> list[SavedVariable] | str:
    """The base model's hypernetwork variables, or why they cannot be read."""
    try:
        return saved_variables(model_dir)
    except (OSError, ValueError, StopIteration, tf.errors.OpError) as e:
        return f"cannot read the base model at {model_dir}: {e}"


def copy_hypernetwork_weights(hyper: tf.keras.Model, model_dir: str,
                              with_fitted: bool = False) -> str | None:
    """Set `hyper`'s variables (built) from an exported model's; None, or why not.

    `with_fitted`: also what was set after or outside training, the label scaling and
    the context intercepts (rebuilding that model); a warm start must not take them
    (this run's labels set its own, and its intercepts are fitted again).
    """
    saved = _load_base(model_dir)
    if isinstance(saved, str):
        return saved
    ours = list(hyper.trainable_variables)
    if with_fitted:  # one assignment: all of it or none
        ours += hyper.non_trainable_variables
    return assign_from_base(ours, [v for v in saved if v.trainable or with_fitted])


def assign_from_base(ours: list[tf.Variable], base_vars: Sequence[tf.Variable | SavedVariable],
                     hows: Mapping[int, VariableRemap] | None = None) -> str | None:
    """Each variable from the base variable of its name, through its remap in `hows` (by
    id) if it has one; None, or why not. Every value is computed before any is assigned:
    a mismatch found late must not leave a half copy."""
    hows = hows or {}
    if (reason := mismatch(ours, base_vars, hows)) is not None:
        return reason
    by_key = {_key(v): v for v in base_vars}
    values = []
    for variable in ours:
        base = by_key[_key(variable)].numpy()
        value = base if id(variable) not in hows else remapped_value(
            variable.numpy(), base, hows[id(variable)])
        if isinstance(value, str):
            return f"{_key(variable)} {value}"
        values.append(value)
    for variable, value in zip(ours, values):
        variable.assign(value)
    return None


def warm_start(hyper: tf.keras.Model, base_model_dir: str | None,
               vocabularies: Mapping[str, str],
               shared_columns: Sequence[str] | None = None) -> str | None:
    """Copy the base model's hypernetwork weights into `hyper` (already built), by token.

    `vocabularies`: this run's vocabulary files by what they encode (model.vocabulary_files);
    `shared_columns`: the columns of the shared categorical vocabulary, in id order
    (ModelLayout.shared_columns). Returns None when warm-started, else the reason not.
    """
    reason = _warm_start(hyper, base_model_dir, vocabularies, shared_columns) \
        if base_model_dir else "no blessed model yet"
    if reason is not None:
        logging.warning("warm start skipped, training from scratch: %s", reason)
    return reason


def _warm_start(hyper: tf.keras.Model, base_model_dir: str, vocabularies: Mapping[str, str],
                shared_columns: Sequence[str] | None) -> str | None:
    remap = build_remap(hyper, vocabularies, base_model_dir, shared_columns)
    if isinstance(remap, str):
        return remap
    hows = variable_remaps(hyper, remap)
    if isinstance(hows, str):
        return hows
    saved = _load_base(base_model_dir)
    if isinstance(saved, str):
        return saved
    ours = list(hyper.trainable_variables)
    base_vars = [v for v in saved if v.trainable]
    base_intercepts = [v for v in saved
                       if not v.trainable and _key(v).split("/")[-1].startswith("intercept_")]
    if base_intercepts:  # a base model from before them computed with none: ours are zero
        ours += hyper.intercepts.values()
        base_vars = base_vars + base_intercepts
    if (reason := assign_from_base(ours, base_vars, hows)) is not None:
        return reason
    remapped = sum(id(v) in hows for v in ours)
    logging.info("warm start from %s: %d variables copied, %d remapped by vocabulary (%s), "
                 # none initialised: a variable the base model lacks is a mismatch
                 "0 initialised", base_model_dir, len(ours) - remapped, remapped,
                 "; ".join(v.describe() for v in remap.vocabs) or "vocabularies unchanged")
    _log_context_rows(hyper, remap)
    return None


def _log_context_rows(hyper: tf.keras.Model, remap: Remap) -> None:
    """One shared token per context vocabulary (one whose id moved, if any) with its
    warm-started embedding row: a check against the base model, before the first step."""
    for column, (old, new) in remap.context_tokens.items():
        old_ids = {t: i for i, t in enumerate(old)}
        shared = [(i, old_ids[t], t) for i, t in enumerate(new) if t in old_ids]
        if not shared:
            continue
        new_id, old_id, token = next((s for s in shared if s[0] != s[1]), shared[0])
        row = hyper.encoder.embeddings[column].embeddings.numpy()[new_id]
        logging.info("warm start check: %s token %r id %d (base id %d) embedding row %s",
                     column, token.decode("utf-8", "replace"), new_id, old_id,
                     [float(x) for x in row])
