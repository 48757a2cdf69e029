"""``QNet``: a batch of Q per-query MLPs, as a Hypencoder query encoder emits them."""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import torch

from .devices import as_device
from .qnet_config import QNetConfig

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class QNet:
    """A batch of ``Q`` q-nets with ``vector_dimensions = [d, h_1, ..., h_L, 1]``.

    Tensors (all on one device, one floating dtype):
        weights[i]: ``(Q, in_i, out_i)`` for ``i = 0..L``; the last is ``(Q, h_L, 1)``.
        biases[i]:  ``(Q, out_i)`` for the hidden layers ``i = 0..L-1``; the output layer
                    has no bias.

    Applied to a document vector ``x`` of shape ``(d,)``::

        for i in 0..L-1:
            y = act(x @ W_i + b_i); y = layer_norm(y); if residual(i): y = y + x; x = y
        score = x @ W_L

    ``config`` holds the converter's flags (:class:`QNetConfig`). The object validates
    itself on construction: shapes chain, a residual only where ``in == out``, every value
    finite. It is immutable in spirit: methods return new objects.
    """

    __slots__ = ("weights", "biases", "config")

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        biases: Sequence[torch.Tensor],
        config: QNetConfig | None = None,
        *,
        check_finite: bool = True,
        **config_kwargs,
    ) -> None:
        if config is not None and config_kwargs:
            raise TypeError("pass either config= or converter flags as keywords, not both")
        if config is not None and not isinstance(config, QNetConfig):
            raise TypeError(f"config must be an engine.QNetConfig, got {type(config).__name__}")
        if isinstance(weights, torch.Tensor) or isinstance(biases, torch.Tensor):
            raise TypeError("weights and biases must be sequences of tensors (one per layer), not one tensor")
        self.config = config if config is not None else QNetConfig(**config_kwargs)
        self.weights = tuple(weights)
        self.biases = tuple(biases)
        self._validate(check_finite)

    # ------------------------------------------------------------------ validation
    def _validate(self, check_finite: bool) -> None:
        ws, bs = self.weights, self.biases
        if len(ws) < 1:
            raise ValueError("a q-net needs at least one weight matrix (the output layer)")
        if len(bs) != len(ws) - 1:
            raise ValueError(
                f"expected {len(ws) - 1} bias vectors (one per hidden layer) for "
                f"{len(ws)} weight matrices, got {len(bs)}"
            )
        for name, t in [(f"weights[{i}]", w) for i, w in enumerate(ws)] + [
            (f"biases[{i}]", b) for i, b in enumerate(bs)
        ]:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in SUPPORTED_DTYPES:
                raise TypeError(
                    f"{name} has unsupported dtype {t.dtype}; use float32, float16 or bfloat16"
                )
        dtype, device = ws[0].dtype, ws[0].device
        if device.type == "meta":
            raise ValueError("q-net tensors are on the meta device (no data)")
        Q = ws[0].shape[0] if ws[0].dim() == 3 else None
        for i, w in enumerate(ws):
            if w.dim() != 3:
                raise ValueError(f"weights[{i}] must be 3-D (Q, in, out), got shape {tuple(w.shape)}")
            if w.shape[0] != Q:
                raise ValueError(f"weights[{i}] has {w.shape[0]} queries, weights[0] has {Q}")
            if w.dtype != dtype or w.device != device:
                raise ValueError(
                    f"weights[{i}] is {w.dtype} on {w.device}; all tensors must match "
                    f"weights[0] ({dtype} on {device})"
                )
            if i > 0 and w.shape[1] != ws[i - 1].shape[2]:
                raise ValueError(
                    f"weights[{i}] takes {w.shape[1]} inputs but weights[{i - 1}] gives "
                    f"{ws[i - 1].shape[2]} outputs"
                )
        if ws[-1].shape[2] != 1:
            raise ValueError(f"the output layer must have 1 output, got {ws[-1].shape[2]}")
        L = len(bs)
        for i, b in enumerate(bs):
            if b.dim() != 2 or b.shape[0] != Q or b.shape[1] != ws[i].shape[2]:
                raise ValueError(
                    f"biases[{i}] must have shape ({Q}, {ws[i].shape[2]}), got {tuple(b.shape)}"
                )
            if b.dtype != dtype or b.device != device:
                raise ValueError(f"biases[{i}] is {b.dtype} on {b.device}; expected {dtype} on {device}")
            if self.config.has_residual(i, L) and ws[i].shape[1] != ws[i].shape[2]:
                raise ValueError(
                    f"hidden layer {i} has a residual but maps {ws[i].shape[1]} -> "
                    f"{ws[i].shape[2]}; a residual needs in == out (pass residual=False)"
                )
        if check_finite:
            for name, t in [(f"weights[{i}]", w) for i, w in enumerate(ws)] + [
                (f"biases[{i}]", b) for i, b in enumerate(bs)
            ]:
                if t.numel() and not bool(torch.isfinite(t).all()):
                    raise ValueError(f"q-net {name} contains NaN or Inf")

    # ------------------------------------------------------------------ properties
    @property
    def num_queries(self) -> int:
        return self.weights[0].shape[0]

    def __len__(self) -> int:
        return self.num_queries

    @property
    def num_layers(self) -> int:
        """Number of hidden layers ``L``."""
        return len(self.biases)

    @property
    def vector_dimensions(self) -> list[int]:
        return [int(self.weights[0].shape[1])] + [int(w.shape[2]) for w in self.weights]

    @property
    def dim(self) -> int:
        """Width ``d`` of the document vectors this q-net reads."""
        return int(self.weights[0].shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def flops_per_document(self) -> int:
        """About ``2 * sum(in_i * out_i)`` FLOPs per (query, document) pair."""
        dims = self.vector_dimensions
        return 2 * sum(a * b for a, b in zip(dims[:-1], dims[1:]))

    def __repr__(self) -> str:
        return (
            f"QNet(Q={self.num_queries}, vector_dimensions={self.vector_dimensions}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------------ transforms
    def _map(self, fn) -> "QNet":
        return QNet(
            [fn(w) for w in self.weights],
            [fn(b) for b in self.biases],
            self.config,
            check_finite=False,
        )

    def to(self, device=None, dtype: torch.dtype | None = None) -> "QNet":
        """Move to ``device`` and/or cast to ``dtype`` (float32, float16 or bfloat16).

        Raises ``ValueError`` for a device that is not available and when the cast
        overflows (a value beyond the narrower dtype's range becomes Inf)."""
        if dtype is not None and dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"unsupported q-net dtype {dtype}; use float32, float16 or bfloat16")
        if device is not None:
            device = as_device(device)
        out = self._map(lambda t: t.to(device=device, dtype=dtype))
        if dtype is not None and dtype != self.dtype:
            # A narrower dtype may overflow: keep the finiteness guarantee.
            out._validate(check_finite=True)
        return out

    def float(self) -> "QNet":
        return self.to(dtype=torch.float32)

    def contiguous(self) -> "QNet":
        return self._map(lambda t: t.contiguous())

    def __getitem__(self, idx) -> "QNet":
        """Select queries: an int, slice, list or tensor of indices, or a bool mask."""
        if isinstance(idx, bool):
            raise TypeError("select queries with an int, slice, index list/tensor or bool mask, not a bool")
        if isinstance(idx, int):
            if not -self.num_queries <= idx < self.num_queries:
                raise IndexError(f"query {idx} out of range for {self.num_queries} q-nets")
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return self._map(lambda t: t[idx])

    @staticmethod
    def cat(qnets: Iterable["QNet"]) -> "QNet":
        qnets = list(qnets)
        if not qnets:
            raise ValueError("QNet.cat needs at least one QNet")
        cfg = qnets[0].config
        if any(q.config != cfg for q in qnets):
            raise ValueError("QNet.cat: all q-nets must share the same config")
        if any(q.vector_dimensions != qnets[0].vector_dimensions for q in qnets):
            raise ValueError("QNet.cat: all q-nets must share vector_dimensions")
        L = qnets[0].num_layers
        return QNet(
            [torch.cat([q.weights[i] for q in qnets]) for i in range(L + 1)],
            [torch.cat([q.biases[i] for q in qnets]) for i in range(L)],
            cfg,
            check_finite=False,
        )

    # ------------------------------------------------------------------ I/O
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors under the names ``weight.i`` and ``bias.i`` (the names of the data set's
        ``qnets.*.safetensors`` files)."""
        d = {f"weight.{i}": w for i, w in enumerate(self.weights)}
        d.update({f"bias.{i}": b for i, b in enumerate(self.biases)})
        return d

    @classmethod
    def from_state_dict(
        cls, tensors: dict[str, torch.Tensor], config: QNetConfig | None = None, prefix: str = ""
    ) -> "QNet":
        """Build from ``{prefix}weight.i`` / ``{prefix}bias.i`` tensors."""
        n_w = 0
        while f"{prefix}weight.{n_w}" in tensors:
            n_w += 1
        if n_w == 0:
            raise ValueError(f"no '{prefix}weight.0' tensor found; keys: {sorted(tensors)[:8]}")
        weights = [tensors[f"{prefix}weight.{i}"] for i in range(n_w)]
        biases = []
        for i in range(n_w - 1):
            key = f"{prefix}bias.{i}"
            if key not in tensors:
                raise ValueError(f"missing tensor '{key}'")
            biases.append(tensors[key])
        return cls(weights, biases, config)

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write a safetensors file; the config goes into its metadata."""
        from safetensors.torch import save_file

        meta = dict(metadata or {})
        meta["qnet_config"] = json.dumps(self.config.to_dict())
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, os.fspath(path), metadata=meta)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device="cpu", dtype: torch.dtype | None = None,
        prefix: str = "",
    ) -> "QNet":
        """Read a safetensors file written by :meth:`save` (or the data set's ``qnets.*``
        files, whose metadata carries no config: the published defaults are used)."""
        from safetensors import SafetensorError, safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no q-net file at {path}")
        if dtype is not None and dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"unsupported q-net dtype {dtype}; use float32, float16 or bfloat16")
        device = as_device(device)
        tensors = {}
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
        cfg = None
        if "qnet_config" in meta:
            try:
                cfg = QNetConfig.from_dict(json.loads(meta["qnet_config"]))
            except (TypeError, ValueError, RecursionError) as e:
                raise ValueError(f"{path}: metadata 'qnet_config' is not a valid q-net config: {e}") from None
        if dtype is not None:  # cast first: a float64 file loads with dtype=torch.float32
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        q = cls.from_state_dict(tensors, cfg, prefix=prefix)
        return q.to(device=device, dtype=dtype)
