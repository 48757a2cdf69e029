"""Property-based fuzzing of every engine._C entry point: arguments that start valid (the
document vectors float32, int8 or float8 e4m3 with row scales) and then take up to three
mutations (dtype, byte order, strides, shape, empty arrays, NaN/Inf,
out-of-range ids, huge or negative counts, wrong Python types, bad flag dicts). Every call
must return or raise ValueError / TypeError (MemoryError for an absurd size): never crash,
hang or raise anything else. The sanitizer job (.ci/sanitize.sh) runs this file under
AddressSanitizer and UndefinedBehaviorSanitizer, where a stray read or write also fails.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_C = pytest.importorskip("engine._C", reason="engine._C is not built")

ALLOWED = (ValueError, TypeError, MemoryError)
FLAGS = {"relu": True, "layer_norm": True, "residual": True, "residual_on_last": False,
         "layer_norm_before_residual": True, "eps": 1e-5, "bf16": False}
# Counts that must be refused or clamped, never allocated: none of them makes a (Q, k)
# output of more than a few MB.
HUGE = [-(2**63), -(2**31), -1, 0, 2**31, 2**40, 2**62, 2**63 - 1]
TOO_BIG = [2**63, 2**70, -(2**70)]  # beyond int64: TypeError from the binding
SETTINGS = settings(deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- valid arguments
def qnet(rng, Q, dims, dtype=np.float32):
    ws = [(rng.standard_normal((Q, a, b)) / math.sqrt(a)).astype(dtype) for a, b in zip(dims[:-1], dims[1:])]
    bs = [(rng.standard_normal((Q, b)) * 0.1).astype(dtype) for b in dims[1:-1]]
    return {"weights": ws, "biases": bs, "flags": dict(FLAGS)}


def codes_tuple(rng, n, d):
    nsub = 4
    r = min(d, 4)
    dims = np.full((nsub, 4), -1, np.int32)
    bits = np.zeros((nsub, 4), np.int32)
    for j in range(nsub):
        dims[j, 0], bits[j, 0] = j % r, 4
    first = (rng.integers(0, 256, ((n + 31) // 32, nsub // 2, 32), dtype=np.uint8),
             rng.standard_normal((d, r)).astype(np.float32), dims, bits,
             np.sort(rng.standard_normal((r, 16)).astype(np.float32), axis=1))
    if not rng.integers(2):
        return first
    rr = 8 * int(rng.integers(1, 3))  # the second level: residual bits, rotation, levels
    return first + (rng.integers(0, 256, (n, rr // 8), dtype=np.uint8), rng.standard_normal((d, rr)).astype(np.float32),
                    np.sort(rng.standard_normal((rr, 2)).astype(np.float32), axis=1))


@st.composite
def shape(draw):
    Q = draw(st.integers(0, 3))
    n = draw(st.integers(0, 70))
    d = draw(st.integers(1, 12))
    L = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2**16))
    return Q, n, d, L, np.random.default_rng(seed)


def quantized(vec, rng):
    """``vec`` as int8 or float8 e4m3 (its raw byte, uint8) rows and float32 row scales,
    or None to keep it float32 (a third of the draws each)."""
    kind = int(rng.integers(3))
    if kind == 0:
        return None
    import torch

    from engine import quant

    t = torch.from_numpy(np.ascontiguousarray(vec))
    data, scales = quant.quantize(t, torch.int8 if kind == 1 else torch.float8_e4m3fn)
    raw = data.numpy() if kind == 1 else data.view(torch.uint8).numpy()
    return raw, scales.numpy()


# Entry points that read document vectors (and take their row scales when quantised).
VECTOR_ENTRY_POINTS = ("cpu_score_dense", "cpu_score_gather", "cpu_exact_topk", "cpu_score_gather_query",
                       "graph_paper_search", "graph_default_search", "graph_linear_topk", "graph_rows_topk",
                       "graph_codes_topk")


def base_args(name, Q, n, d, L, rng):
    """Valid keyword arguments of entry point ``name`` for these sizes; vector-reading entry
    points get float32, int8 or float8 e4m3 rows (with ``scales``)."""
    args = _base_args(name, Q, n, d, L, rng)
    if name in VECTOR_ENTRY_POINTS:
        q = quantized(args["vectors"], rng)
        if q is not None:
            args["vectors"], args["scales"] = q
    return args


def _base_args(name, Q, n, d, L, rng):
    dims = [d] + [d] * L + [1]
    vec = rng.standard_normal((n, d)).astype(np.float32)
    ids = rng.integers(0, max(n, 1), (Q, 5)) if n else np.zeros((Q, 0), np.int64)
    graph = rng.integers(-1, max(n, 1), (n, 4)).astype(np.int32) if n else np.zeros((0, 4), np.int32)
    w = rng.standard_normal((max(Q, 1), d)).astype(np.float32)
    if name == "topk_merge":
        return {"block": rng.standard_normal((Q, 6)).astype(np.float32), "base": 3,
                "run_scores": np.full((Q, 4), -np.inf, np.float32), "run_ids": np.full((Q, 4), -1, np.int64)}
    if name == "cpu_set_isa":
        return {"name": str(rng.choice(_C.cpu_supported_isas() + ["auto"]))}
    if name == "cpu_kernel_name":
        return {"bf16": bool(rng.integers(2))}
    if name == "cpu_isa_status":
        return {"name": str(rng.choice(_C.cpu_supported_isas() + ["amx", "amx_emulated"]))}
    if name in ("cpu_isa", "cpu_supported_isas", "cpu_kernel_tables", "cpu_has_bf16_kernel"):
        return {}
    if name == "cpu_fma_peak_gflops":
        return {"num_threads": 2, "seconds": 0.002}
    if name == "CpuPackedQNets":
        return {}
    a = qnet(rng, Q, dims)
    if name == "cpu_pack_qnets":
        return dict(a, num_threads=2)
    if name == "cpu_score_dense":
        return dict(a, vectors=vec, out=np.zeros((Q, n), np.float32), num_threads=2, block_size=0,
                    packed=_C.cpu_pack_qnets(**a, num_threads=1))
    if name == "cpu_score_gather":
        ids = np.ascontiguousarray(ids) if n else np.zeros((Q, 0), np.int64)
        return dict(a, vectors=vec, ids=ids, out=np.zeros(ids.shape, np.float32), num_threads=2, block_size=0,
                    packed=None)
    if name == "cpu_exact_topk":
        return dict(a, vectors=vec, k=5, num_threads=2, block_size=0, packed=None)
    if name == "cpu_score_gather_query":
        a = qnet(rng, max(Q, 1), dims)
        one = rng.integers(0, max(n, 1), 5) if n else np.zeros(0, np.int64)
        return dict(a, q=0, vectors=vec, ids=one, out=np.zeros(one.shape, np.float32))
    # allow: None, one bitmap for all queries or one per query
    allow = [None, (rng.random((1, n)) < 0.5).astype(np.uint8), (rng.random((Q, n)) < 0.5).astype(np.uint8)][
        int(rng.integers(3))]
    if name == "graph_paper_search":
        ent = np.arange(min(n, 8), dtype=np.int64)
        return dict(a, vectors=vec, graph=graph, entries=ent, k=5, ncandidates=4, max_iter=3, early_stop=True,
                    num_threads=2, allow=allow)
    if name == "graph_default_search":
        return dict(a, vectors=vec, graph=graph, mean=vec.mean(0) if n else np.zeros(d, np.float32),
                    samples=np.arange(min(n, 8), dtype=np.int64), codes=codes_tuple(rng, n, d) if n else None,
                    k=5, ef=8, ef_lin=8, width=2, max_steps=4, passes=2, shortlist=8, rerank=16,
                    residual_rows=40, bf16=bool(rng.integers(2)), num_threads=2, allow=allow)
    if name == "graph_linear_topk":
        return {"vectors": vec, "w": w, "m": 5, "num_threads": 2}
    if name == "graph_rows_topk":
        rows = np.stack([rng.permutation(max(n, 1))[:min(n, 6)] for _ in range(w.shape[0])]).astype(np.int64)
        return {"vectors": vec, "ids": rows, "w": w, "m": 4, "num_threads": 2}
    if name == "graph_codes_topk":
        return {"codes": codes_tuple(rng, max(n, 1), d), "vectors": vec if n else rng.standard_normal((1, d)).astype(
            np.float32), "w": w, "rerank": 16, "m": 5, "num_threads": 2, "residual_rows": 40}
    if name == "graph_residual_sums":
        c = codes_tuple(rng, max(n, 1), d)
        while len(c) < 8:
            c = codes_tuple(rng, max(n, 1), d)
        return {"codes": c, "n": max(n, 1), "w": w[0], "rows": rng.integers(0, max(n, 1), 7).astype(np.int64)}
    if name == "graph_codes_lut":
        return {"codes": codes_tuple(rng, max(n, 1), d), "n": max(n, 1), "w": w[0]}
    if name == "graph_codes_sums":
        c = codes_tuple(rng, max(n, 1), d)
        return {"codes": c[0], "lut": rng.integers(0, 256, (4, 16), dtype=np.uint8), "n": max(n, 1)}
    if name == "graph_linearize":
        return dict(a, at=rng.standard_normal((Q, d)).astype(np.float32), relaxed=bool(rng.integers(2)))
    raise KeyError(name)


ENTRY_POINTS = ["topk_merge", "cpu_isa", "cpu_supported_isas", "cpu_kernel_tables", "cpu_set_isa", "cpu_isa_status", "cpu_has_bf16_kernel", "cpu_kernel_name", "cpu_score_dense",
                "cpu_score_gather", "cpu_exact_topk", "CpuPackedQNets", "cpu_pack_qnets", "cpu_fma_peak_gflops",
                "cpu_score_gather_query", "graph_paper_search", "graph_default_search", "graph_linear_topk",
                "graph_rows_topk", "graph_codes_topk", "graph_codes_lut", "graph_codes_sums", "graph_residual_sums", "graph_linearize"]


def test_every_entry_point_is_fuzzed():
    public = sorted(n for n in dir(_C) if not n.startswith("_"))
    assert public == sorted(ENTRY_POINTS), "a new engine._C entry point needs a fuzzer in base_args"


# ---------------------------------------------------------------- mutations
def sites(args):
    """Paths to every value of the (nested) arguments: ('k',), ('weights', 1), ..."""
    out = []
    for key, v in args.items():
        out.append((key,))
        if isinstance(v, (list, tuple)):
            out += [(key, i) for i in range(len(v))]
    return out


def get(args, path):
    v = args[path[0]]
    return v[path[1]] if len(path) > 1 else v


def put(args, path, value):
    if len(path) == 1:
        args[path[0]] = value
    else:
        c = list(args[path[0]])
        c[path[1]] = value
        args[path[0]] = type(args[path[0]])(c)


def mutate_array(a: np.ndarray, kind: int, r: np.random.Generator):
    if kind == 0:  # dtype
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex to real, NaN to int: the point
            return a.astype(r.choice([np.float64, np.float32, np.float16, np.int32, np.int64, np.uint8,
                                      np.uint16, np.bool_, np.complex64]))
    if kind == 1 and a.dtype.itemsize > 1:  # byte order
        return a.astype(a.dtype.newbyteorder("S"))
    if kind == 2 and a.ndim:  # strides
        wide = np.repeat(a, 2, axis=a.ndim - 1)
        return wide[..., ::2] if r.integers(2) else np.swapaxes(wide, 0, -1)
    if kind == 3:  # rank
        return a.reshape(-1) if a.ndim != 1 else a.reshape(1, -1)
    if kind == 4 and a.ndim:  # a dimension shorter, longer or empty
        new = list(a.shape)
        axis = int(r.integers(a.ndim))
        new[axis] = int(r.choice([0, max(0, a.shape[axis] - 1), a.shape[axis] + 1]))
        return np.resize(a, new)
    if kind == 5 and a.size and a.dtype.kind == "f":  # non-finite values
        b = a.copy()
        b.flat[int(r.integers(b.size))] = r.choice([np.nan, np.inf, -np.inf])
        return b
    if kind == 6 and a.size and a.dtype.kind in "iu":  # ids and codes out of range
        b = a.copy()
        info = np.iinfo(b.dtype)
        b.flat[int(r.integers(b.size))] = r.choice([info.min, info.max, -1, -2, 0, 70, 10**6 % (info.max + 1)])
        return b
    if kind == 7:  # read-only
        b = a.copy()
        b.setflags(write=False)
        return b
    return [[1.0, 2.0]] if kind == 8 else None  # not an array


def mutate(args, path, kind: int, r: np.random.Generator):
    v = get(args, path)
    if isinstance(v, np.ndarray):
        put(args, path, mutate_array(v, kind % 10, r))
    elif isinstance(v, bool):
        put(args, path, [None, 1, "yes", 0.5][kind % 4])
    elif isinstance(v, int):
        values = HUGE + TOO_BIG + [1, 2, 3, 7, 1024, 1025, 1.5, None, "3"]
        put(args, path, values[kind % len(values)])
    elif isinstance(v, float):
        put(args, path, [0.0, -1.0, math.nan, math.inf, 61.0, 1e-9, None][kind % 7])
    elif isinstance(v, dict):  # q-net flags
        f = dict(v)
        key = list(FLAGS)[kind % len(FLAGS)]
        choice = kind // len(FLAGS) % 4
        if choice == 0:
            f.pop(key, None)
        elif choice == 1:
            f["extra"] = True
        elif choice == 2:
            f[key] = 1 if key != "eps" else math.nan
        else:
            f[key] = "true" if key != "eps" else -1.0
        put(args, path, f)
    elif isinstance(v, (list, tuple)):
        c = list(v)
        if kind % 3 == 0 and c:
            c.pop()
        elif kind % 3 == 1:
            c.append(c[0] if c else np.zeros(3, np.float32))
        else:
            c = c[::-1]
        put(args, path, type(v)(c))
    elif isinstance(v, str):
        put(args, path, ["", "sse9", "AVX2", "float64", None, "\udcff"][kind % 6])
    else:  # None or a packed object
        put(args, path, [np.zeros(3, np.float32), "packed", 3][kind % 3])


def call(name, args):
    if name == "CpuPackedQNets":
        with pytest.raises(TypeError):
            _C.CpuPackedQNets()
        return None
    return getattr(_C, name)(**args)


@pytest.fixture(autouse=True)
def keep_isa():
    before = _C.cpu_isa()
    yield
    _C.cpu_set_isa(before)


@pytest.mark.parametrize("name", ENTRY_POINTS)
@settings(SETTINGS, max_examples=15)
@given(sz=shape())
def test_valid_arguments_succeed(name, sz):
    """The fuzzers' starting points are valid: every call succeeds, with sane results."""
    Q, n, d, L, rng = sz
    args = base_args(name, Q, n, d, L, rng)
    out = call(name, args)
    if name == "cpu_exact_topk":
        s, i = out
        assert s.shape == i.shape == (Q, 5) and ((i >= -1) & (i < max(n, 1))).all()
    if name in ("graph_paper_search", "graph_default_search"):
        s, i, stats = out
        assert s.shape == i.shape == (Q, 5) and stats.shape == (Q, 5)
        assert ((i >= -1) & (i < max(n, 1))).all()
        allow = args["allow"]
        if allow is not None and n:  # only allowed documents are returned
            bits = np.broadcast_to(allow, (Q, n)).astype(bool)
            assert all(bits[q, j] for q in range(Q) for j in i[q] if j >= 0)


@pytest.mark.parametrize("name", ENTRY_POINTS)
@settings(SETTINGS, max_examples=100)
@given(sz=shape(), muts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=3),
       seed=st.integers(0, 2**16))
def test_fuzz_entry_point(name, sz, muts, seed):
    Q, n, d, L, rng = sz
    args = base_args(name, Q, n, d, L, rng)
    r = np.random.default_rng(seed)
    for where, kind in muts:
        s = sites(args)
        if s:
            mutate(args, s[where % len(s)], kind, r)
    try:
        call(name, args)
    except ALLOWED:
        pass
