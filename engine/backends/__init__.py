"""Backend registry: each backend implements :class:`~engine.backends.protocol.Backend`.

The backends are ``torch`` (the plain PyTorch reference), ``cpu`` (fused C++ kernels),
``triton`` (fused Triton kernels) and ``cuda`` (fused CUDA C++ kernels); each is a module
of functions, loaded on first use and adapted by
:class:`~engine.backends.protocol.ModuleBackend`. Those with a fused scan also implement
:class:`~engine.backends.protocol.ExactTopK`.

An automatic choice (``backend="auto"``) takes the first available backend in
``AUTO_ORDER`` for the tensors' device and falls back quietly; on a CUDA device with more
than one runnable backend it is the measured choice
(:class:`~engine.backends.auto.MeasuredAuto`, named ``"auto"``) unless
``HYPENCODER_AUTOTUNE=0``. A backend named explicitly that cannot run raises
``RuntimeError`` with the real reason. The environment variable ``HYPENCODER_BACKEND``
overrides the automatic choice.
"""

from __future__ import annotations

import os

import torch

from ..quant import is_quantized
from .auto import MeasuredAuto, auto_choices
from .protocol import Backend, ExactTopK, ModuleBackend

__all__ = ["BACKENDS", "AUTO_ORDER", "Backend", "ExactTopK", "auto_choices", "availability",
           "available_backends", "backend_name", "get_backend", "resolve_name"]

BACKENDS = ("torch", "cpu", "triton", "cuda")
_MODULES = {
    "torch": "engine.backends.torch_ref",
    "cpu": "engine.backends.cpu",
    "triton": "engine.backends.triton",
    "cuda": "engine.backends.cuda",
}
# Fastest first, per device type.
AUTO_ORDER = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}

_loaded: dict[str, Backend | Exception] = {}
_measured: dict[tuple, MeasuredAuto] = {}


def _load(name: str) -> Backend:
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS} or 'auto'")
    be = _loaded.get(name)
    if be is None:
        try:
            be = ModuleBackend.load(name, _MODULES[name])
        except Exception as e:  # an optional dependency missing, a failed build
            be = e
        _loaded[name] = be
    if isinstance(be, Exception):
        raise RuntimeError(f"backend {name!r} failed to load: {be}") from be
    return be


def availability(name: str) -> tuple[bool, str]:
    """``(available, reason)`` for backend ``name``."""
    try:
        be = _load(name)
    except RuntimeError as e:
        return False, str(e)
    return be.availability()


def available_backends() -> dict[str, str]:
    """Every backend with ``"ok"`` or the reason it cannot run here."""
    out = {}
    for name in BACKENDS:
        ok, why = availability(name)
        out[name] = "ok" if ok else why
    return out


def _measuring_enabled() -> bool:
    return os.environ.get("HYPENCODER_AUTOTUNE", "1") != "0"


def get_backend(name: str, device: torch.device) -> Backend:
    """Resolve ``name`` ("auto" or a backend name) for tensors on ``device``."""
    device = torch.device(device)
    if name == "auto":
        forced = os.environ.get("HYPENCODER_BACKEND", "").strip()
        if forced and forced != "auto":
            return get_backend(forced, device)
        names = tuple(c for c in AUTO_ORDER.get(device.type, ("torch",))
                      if availability(c)[0] and _load(c).supports(device))
        if device.type == "cuda" and len(names) > 1 and _measuring_enabled():
            auto = _measured.get(names)
            if auto is None:
                auto = _measured[names] = MeasuredAuto(tuple(_load(n) for n in names))
            return auto
        return _load(names[0]) if names else _load("torch")
    ok, why = availability(name)
    if not ok:
        raise RuntimeError(f"backend {name!r} is not available: {why}")
    be = _load(name)
    if not be.supports(device):
        raise RuntimeError(f"backend {name!r} cannot run on {device.type} tensors")
    return be


def backend_name(be: Backend) -> str:
    """The name of a resolved backend ("cpu", "torch", ..., "auto" for the measured choice)."""
    return be.name


def resolve_name(name: str, device) -> str:
    """The name of the backend that ``name`` resolves to on ``device`` (``"auto"`` for the
    measured choice, which picks per shape)."""
    return get_backend(name, device).name


def takes_scales(be) -> bool:
    """Whether backend ``be`` reads int8 / float8_e4m3 vectors (its scoring functions take the
    ``scales=`` keyword of the storage contract)."""
    import inspect

    try:
        return all("scales" in inspect.signature(getattr(be, f)).parameters
                   for f in ("score_dense", "score_gather") + (("exact_topk",) if hasattr(be, "exact_topk") else ()))
    except (TypeError, ValueError):
        return False


def check_storage(be, dtype) -> None:
    """Refuse (``ValueError``) a backend that cannot read vectors of ``dtype`` rather than
    let it misread them: int8 / float8_e4m3 rows need a backend that takes ``scales=``."""
    if is_quantized(dtype) and not takes_scales(be):
        raise ValueError(f"backend {backend_name(be)!r} cannot search {dtype} vectors yet; use backend 'cpu' "
                         "or 'torch', or an index of float storage (index.to(dtype=torch.float16))")
