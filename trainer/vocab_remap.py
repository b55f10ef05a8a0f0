"""Index maps from a base model's vocabularies to this run's, and its variables through them.

Warm start's arithmetic (trainer/warm_start.py says what it copies and why). A
vocabulary-indexed variable is seen as leading axes kept as they are, then a flat
concatenation of blocks (one per generated parameter tensor, or per part of a deviation
map), each with an index map on its vocabulary-indexed axes; one gather per variable
moves every row. Knows how each generator kind lays out its variables.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from trainer.features import SHARED_VOCAB, vocab_filename
from trainer.hypernet.generator import FullGenerator, hyperfan_in_scale
from trainer.hypernet.pooled import FilmGenerator, LowRankGenerator, PooledGenerator
from trainer.hypernet.target_spec import TargetSpec
from trainer.preprocessing import LABEL_VOCAB

FRESH, ZERO = -1, -2  # source ids: keep this model's initial value; start at zero
IndexMap = npt.NDArray[np.int64]  # [new size] -> an old id, FRESH or ZERO


def read_vocabulary(path: str) -> list[bytes]:
    """A TFT vocabulary file's tokens by id: one per line, id = line number.

    Our vocabularies are written without frequencies (`store_frequency` off); the
    out-of-vocabulary ids come after the last line.
    """
    with tf.io.gfile.GFile(path, "rb") as f:
        lines: list[bytes] = f.read().split(b"\n")
    return lines[:-1] if lines and lines[-1] == b"" else lines


@dataclasses.dataclass(frozen=True)
class VocabMap:
    """One vocabulary's new ids -> the base model's (FRESH / ZERO: a token it lacked)."""

    name: str
    source: IndexMap  # over the tokens and the OOV ids after them
    old_size: int  # the base model's ids: its tokens and OOV ids
    kept: int
    new: int
    dropped: int
    new_as: str  # what a new token's row starts as

    @property
    def changed(self) -> bool:
        return self.new > 0 or self.dropped > 0 or bool(
            np.any(self.source != np.arange(len(self.source))))

    def describe(self) -> str:
        return (f"{self.name}: {self.kept} rows copied, {self.new} new ({self.new_as}), "
                f"{self.dropped} dropped")


def token_map(name: str, old: Sequence[bytes], new: Sequence[bytes], oov: int,
              new_source: Callable[[bytes], int] | int, new_as: str) -> VocabMap:
    """Tokens by id, then `oov` OOV ids copied in order. `new_source`: a new token's source
    id (or a function of the token giving it)."""
    old_ids = {t: i for i, t in enumerate(old)}
    source = [old_ids[t] if t in old_ids else
              new_source if isinstance(new_source, int) else new_source(t) for t in new]
    source += [len(old) + k for k in range(oov)]
    kept = sum(t in old_ids for t in new)
    return VocabMap(name, np.asarray(source, np.int64), len(old) + oov, kept, len(new) - kept,
                    len(old) - kept, new_as)


def identity(size: int) -> IndexMap:
    return np.arange(size, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Remap:
    """Which vocabulary maps this run's model to the base model's ids, in which axis."""

    old_spec: TargetSpec
    inputs: IndexMap  # the target's input positions
    outputs: IndexMap  # the target's output units
    context: dict[str, VocabMap]  # a context feature's ids, where they changed
    vocabs: list[VocabMap]
    # Every categorical context's (base model's, this run's) tokens by id, changed or not.
    context_tokens: dict[str, tuple[list[bytes], list[bytes]]]


def build_remap(hyper: tf.keras.Model, vocabularies: Mapping[str, str], base_model_dir: str,
                shared_columns: Sequence[str] | None) -> Remap | str:
    """Index maps from this run's vocabulary files to the base model's assets, or why not.

    The shared categorical vocabulary's ids are the last block of the target's input
    (trainer/model.py's FeatureAssembler): its tokens, then one OOV id per column in
    `shared_columns` order.
    """
    spec: TargetSpec = hyper.target
    inputs, outputs = identity(spec.input_dim), identity(spec.output_dim)
    context: dict[str, VocabMap] = {}
    vocabs: list[VocabMap] = []
    context_tokens: dict[str, tuple[list[bytes], list[bytes]]] = {}
    old_in, old_out = spec.input_dim, spec.output_dim
    oov_ids = hyper.context.oov_ids
    by_file = {vocab_filename(c): c for c in hyper.context.categorical}
    for name, path in sorted(vocabularies.items()):
        filename = os.path.basename(path)
        base = os.path.join(base_model_dir, "assets", filename)
        if not tf.io.gfile.exists(base):
            return f"the base model has no vocabulary {filename}"
        old, new = read_vocabulary(base), read_vocabulary(path)
        if filename in by_file:
            context_tokens[by_file[filename]] = (old, new)
        if old == new:
            continue
        if filename in by_file:
            column = by_file[filename]
            has_oov = column in oov_ids
            vocab = token_map(name, old, new, int(has_oov), ZERO if has_oov else FRESH,
                              "as OOV: zero" if has_oov else "initialised")
            context[column] = vocab
        elif filename == SHARED_VOCAB:
            if shared_columns is None:
                return f"vocabulary of {name} changed and its columns are unknown"
            columns = list(shared_columns)
            shared = token_map(name, old, new, len(columns), functools.partial(
                _column_oov, columns=columns, old_size=len(old)), "as their column's OOV")
            offset = spec.input_dim - len(new) - len(columns)
            inputs = np.concatenate([identity(offset), offset + shared.source])
            old_in = offset + len(old) + len(columns)
            vocab = shared
        elif filename == LABEL_VOCAB:
            extra = spec.output_dim - len(new)  # classes beyond the vocabulary (num_classes)
            vocab = token_map(name, old, new, 0, FRESH, "initialised")
            outputs = np.concatenate([vocab.source, len(old) + identity(extra)])
            old_out = len(old) + extra
        else:
            return f"vocabulary of {name} changed and nothing maps its ids"
        vocabs.append(vocab)
    old_spec = dataclasses.replace(spec, input_dim=old_in, output_dim=old_out)
    return Remap(old_spec, inputs, outputs, context, vocabs, context_tokens)


def _column_oov(token: bytes, columns: list[str], old_size: int) -> int:
    """A new "column=value" token starts as its column's OOV id did in the base model."""
    column = token.split(b"=", 1)[0].decode("utf-8", "replace")
    return old_size + columns.index(column) if column in columns else FRESH


# -- variables as blocks of vocabulary-indexed axes ----------------------------------------
Block = tuple[tuple[int, ...], tuple[int, ...], tuple[IndexMap | None, ...]]  # new, old shape, maps


def _param_blocks(remap: Remap, spec: TargetSpec, old: TargetSpec) -> list[Block]:
    """The target's parameter tensors, in flat order: input rows of the first kernel and
    output units of the last layer are vocabulary-indexed."""
    blocks: list[Block] = []
    last = spec.num_layers - 1
    for p, q in zip(spec.params(), old.params()):
        layer = int(p.name.split("/")[0].rsplit("_", 1)[1])
        if p.is_bias:
            blocks.append((p.shape, q.shape, (remap.outputs if layer == last else None,)))
        else:
            blocks.append((p.shape, q.shape, (remap.inputs if layer == 0 else None,
                                              remap.outputs if layer == last else None)))
    return blocks


def _deviation_blocks(generator: PooledGenerator, remap: Remap, spec: TargetSpec,
                      old: TargetSpec) -> list[Block]:
    """The deviation map's output columns, part by part (pooled.py's deviation_sizes)."""
    ins, outs, last = remap.inputs, remap.outputs, spec.num_layers - 1
    blocks: list[Block] = []
    if isinstance(generator, LowRankGenerator):
        r = generator.config.rank
        for layer in range(spec.num_layers):
            fan_in, fan_out = spec.layer_widths[layer:layer + 2]
            old_in, old_out = old.layer_widths[layer:layer + 2]
            out_map = outs if layer == last else None
            if layer < generator.ranked_layers:
                blocks += [((r, fan_in), (r, old_in), (None, ins if layer == 0 else None)),
                           ((r, fan_out), (r, old_out), (None, out_map))]
            blocks.append(((fan_out,), (old_out,), (out_map,)))
        return blocks
    assert isinstance(generator, FilmGenerator)
    blocks += [((2 * u,), (2 * u,), (None,)) for u in spec.hidden_units]
    last_in, old_last_in = spec.layer_widths[-2], old.layer_widths[-2]
    in_map = ins if not spec.hidden_units else None
    blocks += [((last_in, spec.output_dim), (old_last_in, old.output_dim), (in_map, outs)),
               ((spec.output_dim,), (old.output_dim,), (outs,))]
    return blocks


def _block_source(blocks: list[Block]) -> tuple[npt.NDArray[Any], int]:
    """Per new flat position, the old flat position (or FRESH / ZERO); the old length."""
    parts, offset = [], 0
    for new_shape, old_shape, maps in blocks:
        full = [identity(n) if m is None else m for n, m in zip(new_shape, maps)]
        if any(m is None and n != o for n, o, m in zip(new_shape, old_shape, maps)):
            raise ValueError(f"a block of shape {new_shape} was {old_shape}")
        grids = np.meshgrid(*full, indexing="ij")
        flat = np.ravel_multi_index([np.maximum(g, 0) for g in grids], old_shape) + offset
        code = np.zeros_like(flat)
        for g in grids:
            code = np.where((code == 0) & (g < 0), g, code)
        parts.append(np.where(code < 0, code, flat).ravel())
        offset += int(np.prod(old_shape))
    return np.concatenate(parts), offset


@dataclasses.dataclass(frozen=True)
class VariableRemap:
    lead: int  # leading axes copied as they are
    blocks: list[Block]  # the flattened trailing axes
    factor: npt.NDArray[Any] | None = None  # per new flat position, applied to copied values


def variable_remaps(hyper: tf.keras.Model, remap: Remap) -> dict[int, VariableRemap] | str:
    """id(variable) -> how its base value maps to it, for every vocabulary-indexed variable."""
    spec, old = hyper.target, remap.old_spec
    out: dict[int, VariableRemap] = {}
    for name, vocab in remap.context.items():
        table = hyper.encoder.embeddings[name].embeddings
        width = int(table.shape[1])
        out[id(table)] = VariableRemap(0, [((len(vocab.source), width), (vocab.old_size, width),
                                            (vocab.source, None))])
    for name, table in hyper.shifts.items():  # [vocab, first hidden width]
        rows, old_rows = _context_rows(remap, name, table)
        old_width = old.hidden_units[0] if old.hidden_units else 0
        out[id(table)] = VariableRemap(0, [((len(rows), int(table.shape[1])),
                                            (old_rows, old_width), (rows, None))])
    for name, table in hyper.intercepts.items():  # [vocab, output_dim], like the embedding
        rows, old_rows = _context_rows(remap, name, table)
        out[id(table)] = VariableRemap(0, [((len(rows), spec.output_dim),
                                            (old_rows, old.output_dim), (rows, remap.outputs))])
    generator = hyper.generator
    if spec == old and np.array_equal(remap.inputs, identity(spec.input_dim)) and \
            np.array_equal(remap.outputs, identity(spec.output_dim)):
        return {k: how for k, how in out.items() if not _is_copy(how)}
    if isinstance(generator, (FilmGenerator, LowRankGenerator)):
        for variable, block in zip(generator.shared, _param_blocks(remap, spec, old)):
            out[id(variable)] = VariableRemap(0, [block])
        out[id(generator.to_deviation.kernel)] = VariableRemap(
            1, _deviation_blocks(generator, remap, spec, old))
    elif isinstance(generator, FullGenerator) and not generator.config.chunk_size:
        blocks = _param_blocks(remap, spec, old)
        factor = None
        if generator.scale is not None:  # keep the generated values: rescale by fan-in
            source, _ = _block_source(blocks)
            old_scale = hyperfan_in_scale(old)[np.maximum(source, 0)]
            factor = np.where(source >= 0, old_scale / hyperfan_in_scale(spec), 1.0)
        out[id(generator.head.kernel)] = VariableRemap(1, blocks, factor)
        out[id(generator.head.bias)] = VariableRemap(0, blocks, factor)
    else:
        return (f"the {type(generator).__name__}'s weights cannot be remapped to new "
                "vocabularies")
    return {k: how for k, how in out.items() if not _is_copy(how)}


def _context_rows(remap: Remap, name: str, table: tf.Variable) -> tuple[npt.NDArray[Any], int]:
    """A context-indexed table's old row per new row, and the old row count (unchanged
    where the context's vocabulary is)."""
    if name in remap.context:
        return remap.context[name].source, remap.context[name].old_size
    return identity(table.shape[0]), int(table.shape[0])


def _is_copy(how: VariableRemap) -> bool:
    """A plain copy: every block's ids unchanged and no rescaling."""
    return (how.factor is None or bool(np.all(how.factor == 1.0))) and all(
        new == old and all(m is None or np.array_equal(m, identity(n)) for n, m in zip(new, maps))
        for new, old, maps in how.blocks)


def remapped_value(fresh: npt.NDArray[Any], base: npt.NDArray[Any], how: VariableRemap) -> npt.NDArray[Any] | str:
    """The base value mapped onto this model's ids, or why the shapes do not fit."""
    try:
        source, old_length = _block_source(how.blocks)
    except ValueError as e:
        return f"does not map by the vocabularies: {e}"
    lead = fresh.shape[:how.lead]
    if base.shape[:how.lead] != lead or int(np.prod(base.shape[how.lead:])) != old_length \
            or int(np.prod(fresh.shape[how.lead:])) != len(source):
        return (f"has shape {tuple(base.shape)} in the base model, which does not map onto "
                f"{tuple(fresh.shape)} by the vocabularies")
    old, new = base.reshape(*lead, -1), fresh.reshape(*lead, -1).copy()
    copied = source >= 0
    values = old[..., source[copied]]
    if how.factor is not None:
        values = values * how.factor[copied].astype(values.dtype)
    new[..., copied] = values
    new[..., source == ZERO] = 0.0
    return new.reshape(fresh.shape)
