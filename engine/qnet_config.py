"""The options of a q-net that are not tensors (the converter's flags).

Kept in a module of its own so that backends can import it without pulling in the
high-level API.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ACTIVATIONS = ("relu", "identity")


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
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not (self.eps > 0):
            raise ValueError(f"eps must be positive, got {self.eps}")

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
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
