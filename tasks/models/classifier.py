"""What the MLP and CNN classifiers share: a static description of `depth` layers of `width`
units (or channels) and a mu-P readout over `num_classes`."""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import flax.linen as nn

from tasks.models.activations import get_activation
from tasks.models.mup import check_parametrization, param_roles


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(abc.ABC):
    """Static description of a classifier; hashable, so it can be a static field of a Task.

    Abstract: `MLPConfig` and `CNNConfig` say which network (`module`). `base_width` is the width
    at which mu-P and standard parametrization are the same model (see `mup`).
    """

    width: int
    depth: int
    num_classes: int
    activation: str = "relu"
    parametrization: str = "mup"
    base_width: int = 64

    kind: ClassVar[str]  # the network's short name, the prefix of `name`: "mlp", "cnn"

    def __post_init__(self):
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"{self.kind.upper()} width and depth must be >= 1, got "
                             f"width={self.width}, depth={self.depth}.")
        check_parametrization(self.parametrization)
        get_activation(self.activation)

    @property
    def name(self) -> str:
        return f"{self.kind}_w{self.width}_d{self.depth}_{self.activation}_{self.parametrization}"

    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The flax module this config describes."""

    def param_roles(self, params):
        """The mu-P role of each tensor, by layer name (`mup.param_roles`)."""
        return param_roles(params)
