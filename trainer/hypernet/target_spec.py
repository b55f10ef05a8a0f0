"""The target network's shape: which parameter tensors the hypernetwork must generate."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

HEADS = ("sigmoid", "softmax", "linear")
ACTIVATIONS = ("relu", "elu", "gelu", "tanh", "swish", "linear")
# He (gain 2) for rectifier-like activations, LeCun (gain 1) otherwise.
_GAIN = {"relu": 2.0, "elu": 2.0, "gelu": 2.0, "swish": 2.0, "tanh": 1.0, "linear": 1.0}


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor of the target, in `tf.keras.Model.get_weights()` order."""

    name: str
    shape: tuple[int, ...]
    fan_in: int
    is_bias: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """An MLP: input_dim -> hidden_units... -> output_dim, with an output head."""

    input_dim: int
    hidden_units: tuple[int, ...]
    output_dim: int
    activation: str = "relu"
    head: str = "sigmoid"

    def __post_init__(self) -> None:
        widths = {"input_dim": self.input_dim, "output_dim": self.output_dim}
        widths.update({f"hidden_units[{i}]": u for i, u in enumerate(self.hidden_units)})
        for name, width in widths.items():
            if isinstance(width, bool) or not float(width).is_integer() or width <= 0:
                raise ValueError(f"target spec: {name} must be a positive integer, got {width!r}")
        object.__setattr__(self, "input_dim", int(self.input_dim))
        object.__setattr__(self, "output_dim", int(self.output_dim))
        object.__setattr__(self, "hidden_units", tuple(int(u) for u in self.hidden_units))
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"target spec: unknown activation {self.activation!r}; choose one of {ACTIVATIONS}"
            )
        if self.head not in HEADS:
            raise ValueError(f"target spec: unknown head {self.head!r}; choose one of {HEADS}")
        if self.head == "softmax" and self.output_dim < 2:
            raise ValueError("target spec: a softmax head needs output_dim >= 2")

    @property
    def layer_widths(self) -> tuple[int, ...]:
        return (self.input_dim, *self.hidden_units, self.output_dim)

    @property
    def num_layers(self) -> int:
        return len(self.hidden_units) + 1

    @property
    def gain(self) -> float:
        """Variance gain of He/LeCun initialisation for this spec's activation."""
        return _GAIN[self.activation]

    def params(self) -> list[ParamSpec]:
        widths = self.layer_widths
        out: list[ParamSpec] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            out.append(ParamSpec(f"dense_{i}/kernel", (fan_in, fan_out), fan_in, False))
            out.append(ParamSpec(f"dense_{i}/bias", (fan_out,), fan_in, True))
        return out

    @property
    def num_params(self) -> int:
        return sum(p.size for p in self.params())

    def shapes(self) -> list[tuple[int, ...]]:
        return [p.shape for p in self.params()]

    @classmethod
    def from_layers(cls, widths: Sequence[int], **kwargs: str) -> TargetSpec:
        """`TargetSpec.from_layers([100, 128, 10], head="softmax")`."""
        if len(widths) < 2:
            raise ValueError("target spec: need at least input and output widths")
        return cls(int(widths[0]), tuple(widths[1:-1]), int(widths[-1]), **kwargs)
