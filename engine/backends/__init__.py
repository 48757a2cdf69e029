"""Backend registry: one module per backend, each exposing the same functions.

Every backend module defines:

    is_available() -> tuple[bool, str]        # and the reason when it is not
    supports(device: torch.device) -> bool    # which tensors it can run on
    score_dense(weights, biases, config, vectors, out) -> Tensor (Q, n) float32
    score_gather(weights, biases, config, vectors, ids, out) -> Tensor (Q, m) float32

and optionally ``exact_topk(weights, biases, config, vectors, k, block_size)`` for a
fused scan with a running top-k. Inputs reach a backend already validated by
``engine.scoring``; backends never import the high-level API.

An automatic choice (``backend="auto"``) takes the first available backend in
``AUTO_ORDER`` for the tensors' device and falls back quietly; a backend named
explicitly that cannot run raises ``RuntimeError`` with the real reason. The environment
variable ``HYPENCODER_BACKEND`` overrides the automatic choice.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")
_MODULES = {
    "torch": "engine.backends.torch_ref",
    "cpu": "engine.backends.cpu",
    "triton": "engine.backends.triton",
    "cuda": "engine.backends.cuda",
}
# Fastest first, per device type.
AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}

_loaded: dict[str, ModuleType | Exception] = {}


def _load(name: str) -> ModuleType:
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS} or 'auto'")
    mod = _loaded.get(name)
    if mod is None:
        try:
            mod = importlib.import_module(_MODULES[name])
        except Exception as e:  # an optional dependency missing, a failed build
            mod = e
        _loaded[name] = mod
    if isinstance(mod, Exception):
        raise RuntimeError(f"backend {name!r} failed to load: {mod}") from mod
    return mod


def availability(name: str) -> tuple[bool, str]:
    """``(available, reason)`` for backend ``name``."""
    try:
        mod = _load(name)
    except RuntimeError as e:
        return False, str(e)
    return mod.is_available()


def available_backends() -> dict[str, str]:
    """Every backend with ``"ok"`` or the reason it cannot run here."""
    out = {}
    for name in BACKENDS:
        ok, why = availability(name)
        out[name] = "ok" if ok else why
    return out


def get_backend(name: str, device: torch.device) -> ModuleType:
    """Resolve ``name`` ("auto" or a backend name) for tensors on ``device``."""
    device = torch.device(device)
    if name == "auto":
        forced = os.environ.get("HYPENCODER_BACKEND", "").strip()
        if forced and forced != "auto":
            return get_backend(forced, device)
        for cand in AUTO_ORDER.get(device.type, ("torch",)):
            ok, _ = availability(cand)
            if ok and _load(cand).supports(device):
                return _load(cand)
        return _load("torch")
    ok, why = availability(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    mod = _load(name)
    if not mod.supports(device):
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} tensors")
    return mod


def resolve_name(name: str, device) -> str:
    """The backend name that ``name`` resolves to on ``device``."""
    mod = get_backend(name, device)
    for k, v in _MODULES.items():
        if v == mod.__name__:
            return k
    raise AssertionError(mod.__name__)
