"""The registry of generator kinds: the one place a new kind is named.

Apart from generator.py (the contract) and pooled.py (the pooled kinds) so that each
kind's module imports only the contract, and the registry imports every kind.
"""

from __future__ import annotations

from trainer.hypernet.generator import FullGenerator, GeneratorConfig, ParameterGenerator
from trainer.hypernet.pooled import FilmGenerator, LowRankGenerator
from trainer.hypernet.target_spec import TargetSpec

GENERATOR_KINDS: dict[str, type[ParameterGenerator]] = {
    "full": FullGenerator,
    "lowrank": LowRankGenerator,
    "film": FilmGenerator,
}


def make_generator(kind: str, spec: TargetSpec, config: GeneratorConfig,
                   name: str = "weight_generator") -> ParameterGenerator:
    """A new generator of the registered `kind` for `spec`, configured by `config`."""
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"unknown generator kind {kind!r}; known kinds: {sorted(GENERATOR_KINDS)}")
    return GENERATOR_KINDS[kind](spec, config, name=name)
