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


def backend_name(be) -> str:
    """The registry name of a resolved backend ("cpu", "torch", ...)."""
    name = getattr(be, "name", None)
    if isinstance(name, str):
        return name
    mod = getattr(be, "__name__", "")
    for key, path in _MODULES.items():
        if path == mod:
            return key
    return mod.rsplit(".", 1)[-1]


def get_backend(name: str, device: torch.device) -> ModuleType:
    """Resolve ``name`` ("auto" or a backend name) for tensors on ``device``."""
    device = torch.device(device)
    if name == "auto":
        forced = os.environ.get("HYPENCODER_BACKEND", "").strip()
        if forced and forced != "auto":
            return get_backend(forced, device)
        names = [c for c in AUTO_ORDER.get(device.type, ("torch",))
                 if availability(c)[0] and _load(c).supports(device)]
        if device.type == "cuda" and len(names) > 1 and _measuring_enabled():
            return _measured_auto(tuple(names))
        return _load(names[0]) if names else _load("torch")
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
    if isinstance(mod, _MeasuredAuto):  # chosen per shape; name the first in order
        return mod.names[0]
    for k, v in _MODULES.items():
        if v == mod.__name__:
            return k
    raise AssertionError(mod.__name__)


# --------------------------------------------------------------------------------------
# Measured automatic choice on CUDA (issue 5). Which of the fused backends is fastest
# depends on the shape (width, depth, dtype, number of documents), so instead of a fixed
# order, "auto" on a CUDA device times every runnable backend once per shape on the
# call's own inputs and remembers the winner. HYPENCODER_AUTOTUNE=0 turns this off (the
# first runnable backend in AUTO_ORDER is taken, as on CPU).


def _measuring_enabled() -> bool:
    return os.environ.get("HYPENCODER_AUTOTUNE", "1") != "0"


_AUTO_CHOICES: dict = {}  # shape key -> (winner name, {name: seconds})
_AUTO_PROXIES: dict = {}


def auto_choices() -> dict:
    """The measured choices so far: ``{shape key: (backend, {backend: seconds})}``."""
    return dict(_AUTO_CHOICES)


def _bucket(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()  # next power of two: one measurement per octave


def _shape_key(op, weights, config, vectors, extent, k=None):
    dims = (int(weights[0].shape[1]),) + tuple(int(w.shape[2]) for w in weights)
    return (op, str(vectors.device), str(weights[0].dtype), str(vectors.dtype), dims, config,
            int(weights[0].shape[0]), _bucket(extent), None if k is None else _bucket(k))


def _time_call(fn) -> float:
    fn()  # warm-up: builds, compiles and autotunes on first use
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


class _MeasuredAuto:
    """Backend-shaped dispatcher over several runnable backends: the first call of each
    shape times them all and keeps the fastest; a backend that fails is left out."""

    __name__ = "engine.backends.auto"

    def __init__(self, names: tuple):
        self.names = names

    def is_available(self):
        return True, "ok"

    def supports(self, device) -> bool:
        return torch.device(device).type == "cuda"

    def _choose(self, key, names, run):
        hit = _AUTO_CHOICES.get(key)
        if hit is not None:
            return hit[0]
        times, last_err = {}, None
        for name in names:
            try:
                times[name] = _time_call(lambda: run(_load(name)))
            except Exception as e:  # e.g. the CUDA build failed: measure the others
                last_err = e
        if not times:
            raise RuntimeError(f"no backend could run {key[0]}: {last_err}") from last_err
        best = min(times, key=times.get)
        _AUTO_CHOICES[key] = (best, times)
        return best

    def score_dense(self, weights, biases, config, vectors, out=None):
        run = lambda be: be.score_dense(weights, biases, config, vectors, out)  # noqa: E731
        key = _shape_key("dense", weights, config, vectors, vectors.shape[0])
        return run(_load(self._choose(key, self.names, run)))

    def score_gather(self, weights, biases, config, vectors, ids, out=None):
        run = lambda be: be.score_gather(weights, biases, config, vectors, ids, out)  # noqa: E731
        key = _shape_key("gather", weights, config, vectors, ids.numel())
        return run(_load(self._choose(key, self.names, run)))

    def exact_topk(self, weights, biases, config, vectors, k, block_size=None):
        names = tuple(n for n in self.names if hasattr(_load(n), "exact_topk"))
        run = lambda be: be.exact_topk(weights, biases, config, vectors, k, block_size)  # noqa: E731
        key = _shape_key("topk", weights, config, vectors, vectors.shape[0], k)
        return run(_load(self._choose(key, names, run)))


def _measured_auto(names: tuple) -> _MeasuredAuto:
    proxy = _AUTO_PROXIES.get(names)
    if proxy is None:
        proxy = _AUTO_PROXIES[names] = _MeasuredAuto(names)
    return proxy
