"""The options of a q-net that are not tensors (the converter's flags).

Kept in a module of its own so that backends can import it without pulling in the
high-level API.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

ACTIVATIONS = ("relu", "identity")
FLAGS = ("layer_norm", "residual", "residual_on_last", "layer_norm_before_residual")


def check_flag(value, name: str) -> bool:
    """``value`` as a bool; anything but a bool (a string "false", 0, None) is a TypeError:
    a misread flag silently changes every score."""
    if isinstance(value, np.bool_):
        return bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (true/false), got {value!r}")
    return value


def check_eps(value, name: str = "eps") -> float:
    """``value`` as a finite positive float (the layer norm's epsilon)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return float(value)


def check_activation(value, name: str = "activation") -> str:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"{name} must be one of {ACTIVATIONS}, got {value!r}")
    return value


@dataclass(frozen=True)
class QNetConfig:
    """Flags of the reference converter (``converter_kwargs``).

    The defaults are the published configuration: relu, layer norm without affine
    parameters (eps 1e-5), a residual on every hidden layer except the last, and the
    layer norm applied before the residual is added.
    """

    activation: str = "relu"
    layer_norm: bool = True
    residual: bool = True
    residual_on_last: bool = False
    layer_norm_before_residual: bool = True
    eps: float = 1e-5

    def __post_init__(self) -> None:
        check_activation(self.activation)
        for name in FLAGS:
            object.__setattr__(self, name, check_flag(getattr(self, name), name))
        object.__setattr__(self, "eps", check_eps(self.eps))
        if self.residual_on_last and not self.residual:
            raise ValueError("residual_on_last=True needs residual=True (a residual on the last hidden "
                             "layer only is not a configuration of the reference converter)")

    def has_residual(self, layer: int, num_layers: int) -> bool:
        """Whether hidden layer ``layer`` (0-based, of ``num_layers``) adds its input.

        The layer's input and output widths must then be equal; ``QNet`` checks that.
        """
        if not self.residual:
            return False
        return self.residual_on_last or layer < num_layers - 1

    def layer_ops(self, layer: int, num_layers: int) -> tuple[bool, bool, bool]:
        """``(ln_before, residual, ln_after)`` of hidden layer ``layer``: the one rule every
        kernel follows. ``y = act(x W + b)``; ``ln_before``: ``y = layer_norm(y)``;
        ``residual``: ``y = y + x``; ``ln_after``: ``y = layer_norm(y)``."""
        res = self.has_residual(layer, num_layers)
        ln_before = self.layer_norm and (self.layer_norm_before_residual or not res)
        ln_after = self.layer_norm and res and not self.layer_norm_before_residual
        return ln_before, res, ln_after

    def kernel_flags(self) -> dict:
        """The flags as every native and GPU kernel takes them (one dict, one place):
        ``relu``, ``layer_norm``, ``residual``, ``residual_on_last``,
        ``layer_norm_before_residual`` (bools) and ``eps`` (float)."""
        return {
            "relu": self.activation == "relu",
            "layer_norm": bool(self.layer_norm),
            "residual": bool(self.residual),
            "residual_on_last": bool(self.residual_on_last),
            "layer_norm_before_residual": bool(self.layer_norm_before_residual),
            "eps": float(self.eps),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QNetConfig":
        """The inverse of :meth:`to_dict`; a key that is not a field is a ValueError (an
        unknown flag could change the q-net's math)."""
        if not isinstance(d, dict):
            raise TypeError(f"a q-net config must be a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(map(str, set(d) - names))
        if unknown:
            raise ValueError(f"unknown q-net config fields {unknown}; known: {sorted(names)}")
        return cls(**d)
