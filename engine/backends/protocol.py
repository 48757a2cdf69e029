"""The interface of a scoring backend, and the adapter that gives it to a module of functions.

Shapes and dtypes, for every backend: ``weights`` is the list of ``L + 1`` tensors
``(Q, d_i, d_{i+1})`` (the last one ``(Q, h, 1)``), ``biases`` the ``L`` tensors
``(Q, d_{i+1})``, all of one dtype (float32, float16 or bfloat16); ``config`` a
:class:`~engine.qnet_config.QNetConfig`; ``vectors`` ``(n, d)`` on the weights' device;
``ids`` ``(Q, m)`` int32/int64 rows of ``vectors``; ``out`` an optional float32 tensor of
the result's shape to write into. Scores are float32, accumulated in float32. Inputs reach
a backend validated once by ``engine.scoring``; backends never import the high-level API.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Backend(Protocol):
    """What the registry hands to ``engine.scoring`` and the searches."""

    name: str

    def availability(self) -> tuple[bool, str]:
        """``(True, "ok")``, or ``(False, reason)`` when it cannot run on this machine."""

    def supports(self, device: torch.device) -> bool:
        """Whether it runs on tensors of ``device``."""

    def score_dense(self, weights, biases, config, vectors, out=None) -> torch.Tensor:
        """``(Q, n)`` float32: every q-net's score of every row of ``vectors``."""

    def score_gather(self, weights, biases, config, vectors, ids, out=None) -> torch.Tensor:
        """``(Q, m)`` float32: ``out[q, j]`` is q-net ``q``'s score of row ``ids[q, j]``."""


@runtime_checkable
class ExactTopK(Protocol):
    """Optional capability: an exact top-k scan fused with the scoring."""

    def exact_topk(self, weights, biases, config, vectors, k: int, block_size=None):
        """``(scores (Q, k) float32, ids (Q, k) int64)`` best first, ties to the lower id,
        ``(-inf, -1)`` in the slots beyond ``n``."""


class ModuleBackend:
    """A backend written as a module of functions: ``is_available() -> (bool, str)``,
    ``supports(device)``, ``score_dense``, ``score_gather`` and optionally ``exact_topk``,
    with the signatures of :class:`Backend` (extra keyword arguments pass through). The
    methods are the module's own functions: no wrapper on the call path."""

    def __init__(self, name: str, module) -> None:
        self.name = name
        self.module = module
        self.availability = module.is_available
        self.supports = module.supports
        self.score_dense = module.score_dense
        self.score_gather = module.score_gather
        if hasattr(module, "exact_topk"):
            self.exact_topk = module.exact_topk

    @classmethod
    def load(cls, name: str, module_name: str) -> "ModuleBackend":
        return cls(name, importlib.import_module(module_name))

    def __repr__(self) -> str:
        return f"<backend {self.name!r} ({self.module.__name__})>"
