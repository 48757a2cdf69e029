"""Backend "cpu": fused C++ q-net kernels (csrc/cpu) for tensors on the CPU.

One build runs on any x86-64: the kernel's instruction set (portable, avx2, avx512,
avx512_bf16, amx) is chosen at run time from the CPU, or forced with the environment
variable ``HYPENCODER_CPU_ISA`` (read at import; a name the CPU cannot run makes the
backend unavailable with that reason) or :func:`set_isa`. The automatic choice skips
``avx512_bf16`` on Intel CPUs, whose vdpbf16ps is slower than the fp32 FMA kernel (on AMD
Zen 4 it is twice as fast); there bf16 is AMX's. ``amx`` needs AMX-TILE and
AMX-BF16 and, on Linux, the kernel's permission for tile data, which the first use asks
for. ``amx_emulated`` (by name only) runs the AMX kernel with its tile instructions in
C++, to test it on CPUs without AMX. Threads: the engine-wide number
(:func:`engine.set_num_threads`, see :mod:`engine.threads`) unless a call gives
``num_threads``; the kernels split a call over threads only when its work pays for it.

Precision: :func:`set_precision` / ``HYPENCODER_CPU_PRECISION`` (``auto``, ``fp32``,
``bf16``; see :mod:`engine.native_args`). By default float32 q-nets over float32 vectors
are exact, and half-precision inputs take the bfloat16 kernel (AMX or AVX512-BF16) where
the CPU has one. Accumulation and scores are float32 always.

Tensors travel to C++ as numpy views (bfloat16 as uint16), copied only when they are not
contiguous.

Packed weights are cached: the kernels need each query's weights converted to float32 and
laid out in column panels, which costs a pass over all of them (186 us for a d = 384, L = 2
q-net, 4 ms for d = 768, L = 6, a quarter of the compute of a 256-document call with 8
such queries). Calls that score the same weight tensors again (graph search over one
q-net, benchmarks, repeated scoring of a batch) reuse the packing. An entry is found by the
weight and bias tensor objects themselves (through weak references: an entry goes when its
q-net's tensors are freed, so a service scoring a new q-net per request holds no packing
beyond the requests in flight) and is valid while each tensor's version counter, shape,
dtype and storage pointer are unchanged, i.e. until an in-place change such as
``w.add_(1)`` or ``w.copy_(...)``. Writes that bypass the version counter (through
``w.data``, a numpy view of the same memory) are not seen: call :func:`clear_pack_cache`
after them. The cache holds at most ``HYPENCODER_CPU_PACK_CACHE_MB`` (default 256) MiB,
least recently used out.
Threads that miss the same entry at once wait for one packing (:class:`engine.once.KeyedBuilds`);
a packing made for an ISA that has been switched since is not used by the kernels.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref

import numpy as np
import torch

from .. import native_args
from .. import threads as _threads_mod
from ..native_args import qnet_args, to_numpy
from ..once import KeyedBuilds

try:
    from .. import _C

    _IMPORT_ERROR = None if hasattr(_C, "cpu_score_dense") else "engine._C was built without the CPU kernels"
except ImportError as e:  # the extension is not built
    _C = None
    _IMPORT_ERROR = f"engine._C is not built ({e}); run pip install -e ."

_ISA_ERROR = None
if _C is not None and _IMPORT_ERROR is None:
    _env = os.environ.get("HYPENCODER_CPU_ISA", "").strip()
    if _env:
        try:
            _C.cpu_set_isa(_env)
        except ValueError as e:
            _ISA_ERROR = f"HYPENCODER_CPU_ISA={_env!r}: {e}"


def is_available() -> tuple[bool, str]:
    if _IMPORT_ERROR:
        return False, _IMPORT_ERROR
    if _ISA_ERROR:
        return False, _ISA_ERROR
    if native_args.precision_error():
        return False, native_args.precision_error()
    return True, "ok"


def supports(device: torch.device) -> bool:
    return torch.device(device).type == "cpu"


def fma_peak_gflops(num_threads=None, seconds: float = 1.0) -> float:
    """This machine's fp32 FMA peak in GFLOP/s on ``num_threads`` threads (a register-only
    FMA loop in the widest vectors the CPU runs; best of five rounds)."""
    return float(_C.cpu_fma_peak_gflops(_threads(num_threads), float(seconds)))


def isa() -> str:
    """The instruction set the kernels use now (e.g. ``"avx2"``)."""
    return _C.cpu_isa()


def supported_isas() -> list[str]:
    """Instruction sets this CPU can run, weakest first."""
    return list(_C.cpu_supported_isas())


def set_isa(name: str) -> None:
    """Force ``name`` (``"auto"``: the best this CPU supports); ValueError if it cannot.

    Safe while other threads search: it waits until the native calls in flight have ended
    and holds new ones back meanwhile, so every call runs on one ISA from start to end."""
    _C.cpu_set_isa(name)


def isa_status(name: str) -> str:
    """``"ok"``, or why this process cannot run instruction set ``name`` (e.g. ``"amx"``)."""
    return _C.cpu_isa_status(name)


precision = native_args.precision
set_precision = native_args.set_precision


def uses_bf16(weight_dtype, vector_dtype) -> bool:
    """Whether a call with q-nets of ``weight_dtype`` over vectors of ``vector_dtype`` runs
    the bfloat16 kernel now (the precision policy asks for it and the active instruction
    set has one); False means exact float32."""
    return native_args.bf16_requested(weight_dtype, vector_dtype) and bool(_C.cpu_has_bf16_kernel())


def kernel_name(bf16: bool) -> str:
    """The kernel the active instruction set runs in bfloat16 (True) or float32 (False)."""
    return _C.cpu_kernel_name(bool(bf16))


_np = to_numpy
_qnet_args = qnet_args

_PACK_LOCK = threading.Lock()
_PACK_BUILDS = KeyedBuilds()
_DEAD_KEYS: list = []  # keys whose tensors were freed (appended by weakref callbacks)
_PACK_CACHE: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_pack_cache_limit = int(float(os.environ.get("HYPENCODER_CPU_PACK_CACHE_MB", "256")) * (1 << 20))


def clear_pack_cache() -> None:
    """Forget every cached packing of q-net weights."""
    with _PACK_LOCK:
        _PACK_CACHE.clear()


def set_pack_cache_limit(nbytes: int) -> None:
    """Bound the packed-weight cache to ``nbytes`` (0 disables it)."""
    global _pack_cache_limit
    with _PACK_LOCK:
        _pack_cache_limit = max(0, int(nbytes))
        _evict()


def pack_cache_info() -> dict:
    """``{"entries": ..., "bytes": ..., "limit": ...}`` of the packed-weight cache."""
    with _PACK_LOCK:
        _forget_dead()
        return {
            "entries": len(_PACK_CACHE),
            "bytes": sum(e[2].nbytes for e in _PACK_CACHE.values()),
            "limit": _pack_cache_limit,
        }


def _forget_dead() -> None:
    """Drop the entries whose tensors were freed (under _PACK_LOCK). A callback only
    records the key: it may run inside any allocation, even one made under this lock."""
    while _DEAD_KEYS:
        key = _DEAD_KEYS.pop()
        e = _PACK_CACHE.get(key)
        if e is not None and any(r() is None for r in e[0]):
            del _PACK_CACHE[key]


def _evict() -> None:
    _forget_dead()
    total = sum(e[2].nbytes for e in _PACK_CACHE.values())
    while _PACK_CACHE and total > _pack_cache_limit:
        _, e = _PACK_CACHE.popitem(last=False)
        total -= e[2].nbytes


def _state(t: torch.Tensor) -> tuple:
    # What an in-place change alters: the version counter (every in-place op and copy_),
    # and, for resize_/set_, the shape, dtype or storage.
    return (t._version, tuple(t.shape), t.dtype, t.data_ptr())


def _prepare(weights, biases, config, nt: int, vector_dtype):
    """(keyword arguments of the q-net for _C, its cached packing or None) for scoring
    vectors of ``vector_dtype``."""
    args = _qnet_args(weights, biases, config, vector_dtype)
    flags = tuple(args["flags"].items())
    # Packed panels take about as many bytes as the weights in fp32 (bf16 for the bfloat16
    # kernel); a q-net batch that would not fit is left to the call, which packs in bounded
    # groups of queries.
    width = 2 if args["flags"]["bf16"] and _C.cpu_has_bf16_kernel() else 4
    if _pack_cache_limit <= 0 or sum(w.numel() for w in weights) * width > _pack_cache_limit:
        return args, None
    tensors = tuple(weights) + tuple(biases)
    key = (tuple(id(t) for t in tensors), flags, _C.cpu_isa())
    state = tuple(_state(t) for t in tensors)

    def lookup():
        with _PACK_LOCK:
            _forget_dead()
            e = _PACK_CACHE.get(key)
            if e is not None and e[1] == state and all(r() is t for r, t in zip(e[0], tensors)):
                _PACK_CACHE.move_to_end(key)
                return e[2]
        return None

    packed = lookup()
    if packed is not None:
        return args, packed
    with _PACK_BUILDS.lock(key):
        packed = lookup()  # packed by another thread meanwhile
        if packed is not None:
            return args, packed
        packed = _C.cpu_pack_qnets(**args, num_threads=nt)
        refs = tuple(weakref.ref(t, lambda _, k=key: _DEAD_KEYS.append(k)) for t in tensors)
        with _PACK_LOCK:
            if packed.nbytes <= _pack_cache_limit:
                _PACK_CACHE[key] = (refs, state, packed)
                _PACK_CACHE.move_to_end(key)
                _evict()
    return args, packed


def _threads(num_threads) -> int:
    return _threads_mod.resolve(num_threads)


def _out(out, shape):
    """(tensor the caller gets, float32 contiguous tensor the kernel writes)."""
    if out is None:
        t = torch.empty(shape, dtype=torch.float32)
        return t, t
    if out.is_contiguous():
        return out, out
    return out, torch.empty(shape, dtype=torch.float32)


def _scales(scales):
    """The per-row scales of int8 / float8 e4m3 vectors as the kernels take them (None for
    float vectors; the C++ side requires them for quantised rows and refuses them otherwise)."""
    if scales is None:
        return None
    if isinstance(scales, np.ndarray):
        return scales if scales.flags.c_contiguous else np.ascontiguousarray(scales)
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32:
        raise TypeError("scales must be a float32 torch.Tensor")
    return _np(scales)


def _score(kernel, shape, weights, biases, config, vectors, out, num_threads, block_size, scales, **extra):
    """Run a scoring kernel into ``out`` (or a new (shape) float32 tensor)."""
    res, buf = _out(out, shape)
    nt = _threads(num_threads)
    args, packed = _prepare(weights, biases, config, nt, vectors.dtype)
    kernel(**args, vectors=_np(vectors), out=buf.numpy(), num_threads=nt,
           block_size=int(block_size or 0), packed=packed, scales=_scales(scales), **extra)
    if buf is not res:
        res.copy_(buf)
    return res


def score_dense(weights, biases, config, vectors, out=None, *, scales=None, num_threads=None, block_size=None):
    """``scales``: (n,) float32, required for int8 / float8_e4m3 ``vectors`` (row i stands
    for ``vectors[i].float() * scales[i]``, dequantised as it is read), refused otherwise."""
    shape = (weights[0].shape[0], vectors.shape[0])
    return _score(_C.cpu_score_dense, shape, weights, biases, config, vectors, out, num_threads, block_size,
                  scales)


def score_gather(weights, biases, config, vectors, ids, out=None, *, scales=None, num_threads=None,
                 block_size=None):
    """As :func:`score_dense`; row ``ids[q, j]`` takes scale ``scales[ids[q, j]]``."""
    return _score(_C.cpu_score_gather, tuple(ids.shape), weights, biases, config, vectors, out,
                  num_threads, block_size, scales, ids=_np(ids.to(torch.int64)))


def exact_topk(weights, biases, config, vectors, k, block_size=None, *, scales=None, num_threads=None):
    """Exact top-``k`` of every query over all of ``vectors`` (which may wrap an
    ``np.memmap``; it is streamed block by block, never copied when contiguous).
    ``scales`` as for :func:`score_dense`.

    Returns ``(scores float32 (Q, k), ids int64 (Q, k))``, best first, ties broken by the
    lower id; when ``k > n`` the missing slots hold score ``-inf`` and id ``-1``.
    """
    if isinstance(vectors, np.ndarray):
        vec = vectors if vectors.flags.c_contiguous else np.ascontiguousarray(vectors)
    else:
        vec = _np(vectors)
    nt = _threads(num_threads)
    args, packed = _prepare(weights, biases, config, nt, vectors.dtype)
    s, i = _C.cpu_exact_topk(
        **args,
        vectors=vec,
        k=int(k),
        num_threads=nt,
        block_size=int(block_size or 0),
        packed=packed,
        scales=_scales(scales),
    )
    return torch.from_numpy(s), torch.from_numpy(i)
