"""The "cpu" backend (csrc/cpu) against the PyTorch reference.

Tolerances: on the exact float32 path the kernels convert fp16/bf16 weights and vectors
to float32 exactly and accumulate in float32, so every dtype pair agrees with the
reference (which computes in float32 from the same values) to float32 rounding: 1e-4
relative to the largest score. Where a call runs the bfloat16 kernel (the precision
policy asks for it, by default for half-precision inputs, and the CPU has AMX or
AVX512-BF16: ``cpu.uses_bf16``), weights and activations are rounded to bf16 before each
layer: 3e-2 relative there. The acceptance grid
(L, d, Q, n) x dtype pairs is sampled: every value of each axis and every dtype pair is
covered, the full cross product is not (it would take far too long on two cores).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import engine
from engine import QNet, QNetConfig
from engine.backends import cpu, torch_ref

pytestmark = pytest.mark.skipif(not cpu.is_available()[0], reason=f"cpu backend: {cpu.is_available()[1]}")

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_PAIRS = list(itertools.product(DTYPES, DTYPES))  # (weights, vectors)

# (L, d, Q, n): every value of L {1, 2, 6}, d {64, 384, 768, 100}, Q {1, 3, 16} and
# n {1, 7, 1000, 4099} appears; the large q-nets run with few queries.
SHAPES = [
    (1, 64, 1, 1),
    (1, 100, 16, 7),
    (2, 384, 1, 1000),
    (2, 100, 3, 4099),
    (6, 64, 16, 1000),
    (6, 768, 1, 4099),
    (1, 768, 3, 1000),
    (6, 384, 3, 7),
    (2, 768, 16, 1),
    (1, 384, 1, 4099),
]


BF16_TOL = 3e-2


def tol(wdtype, vdtype) -> float:
    return BF16_TOL if cpu.uses_bf16(wdtype, vdtype) else 1e-4


def make_qnet(Q, d, L, dtype, *, config=None, widths=None, seed=0) -> QNet:
    g = torch.Generator().manual_seed(seed)
    dims = [d] + (widths or [d] * L) + [1]
    ws = [torch.randn(Q, a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * 0.1 for b in dims[1:-1]]
    return QNet([w.to(dtype) for w in ws], [b.to(dtype) for b in bs], config or QNetConfig())


def make_vectors(n, d, dtype, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(dtype)


def assert_scores_close(got, ref, rel):
    assert got.dtype == torch.float32 and got.shape == ref.shape
    scale = max(float(ref.abs().max()), 1e-6)
    err = float((got - ref).abs().max()) if ref.numel() else 0.0
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


def ref_topk(scores: torch.Tensor, k: int):
    """Best first, ties to the lower id, padded with -inf / -1."""
    Q, n = scores.shape
    idx = torch.arange(n).expand(Q, n)
    # Stable sort on -score keeps lower ids first among equal scores.
    order = torch.sort(-scores, dim=1, stable=True).indices[:, :k]
    s = torch.full((Q, k), float("-inf"))
    i = torch.full((Q, k), -1, dtype=torch.int64)
    s[:, : order.shape[1]] = torch.gather(scores, 1, order)
    i[:, : order.shape[1]] = torch.gather(idx, 1, order)
    return s, i


def check_all(qn: QNet, vec: torch.Tensor, m: int, k: int = 10, seed: int = 2):
    W, B, C = qn.weights, qn.biases, qn.config
    rel = tol(qn.dtype, vec.dtype)
    ref = torch_ref.score_dense(W, B, C, vec)
    assert_scores_close(cpu.score_dense(W, B, C, vec), ref, rel)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vec.shape[0], (qn.num_queries, m), generator=g)
    assert_scores_close(cpu.score_gather(W, B, C, vec, ids), torch.gather(ref, 1, ids), rel)
    s, i = cpu.exact_topk(W, B, C, vec, k)
    rs, ri = ref_topk(ref, k)
    assert s.shape == (qn.num_queries, k) and i.dtype == torch.int64
    assert_scores_close(torch.where(torch.isinf(rs), 0.0, s), torch.where(torch.isinf(rs), 0.0, rs), rel)
    assert torch.equal(i < 0, ri < 0)
    if rel <= 1e-4:
        # Ids may only differ where the reference's scores are within tolerance of a tie.
        got_ref = torch.gather(ref, 1, i.clamp(min=0))
        assert_scores_close(torch.where(i < 0, 0.0, got_ref), torch.where(ri < 0, 0.0, rs), rel)


@pytest.mark.parametrize("L,d,Q,n", SHAPES, ids=lambda v: str(v))
def test_grid(L, d, Q, n):
    i = SHAPES.index((L, d, Q, n))
    wd, vd = DTYPE_PAIRS[i % len(DTYPE_PAIRS)]
    check_all(make_qnet(Q, d, L, wd, seed=i), make_vectors(n, d, vd, seed=i), m=min(600, 3 * n))


@pytest.mark.parametrize("wdtype,vdtype", DTYPE_PAIRS, ids=lambda v: str(v).replace("torch.", ""))
def test_dtype_pairs(wdtype, vdtype):
    check_all(make_qnet(3, 100, 2, wdtype), make_vectors(300, 100, vdtype), m=200)


@pytest.mark.parametrize(
    "config,widths",
    [
        (QNetConfig(activation="identity"), None),
        (QNetConfig(layer_norm=False), None),
        (QNetConfig(residual=False), [40, 72]),
        (QNetConfig(residual_on_last=True), None),
        (QNetConfig(layer_norm_before_residual=False), None),
        (QNetConfig(residual=False, layer_norm=False, activation="identity"), [17, 33]),
        (QNetConfig(eps=1e-3), None),
    ],
    ids=["identity", "no_ln", "no_residual_widths", "residual_on_last", "ln_after_residual", "linear", "eps"],
)
def test_converter_flags(config, widths):
    qn = make_qnet(2, 48, 2, torch.float32, config=config, widths=widths)
    check_all(qn, make_vectors(130, 48, torch.float32), m=70)


def test_no_hidden_layer():
    qn = make_qnet(2, 24, 0, torch.float32)
    check_all(qn, make_vectors(50, 24, torch.float32), m=9)


def test_exact_topk_k_larger_than_n_and_ties():
    qn = make_qnet(2, 32, 2, torch.float32)
    base = make_vectors(5, 32, torch.float32)
    vec = torch.cat([base, base, base[:2]])  # documents 0-4 repeated: exact ties
    s, i = cpu.exact_topk(qn.weights, qn.biases, qn.config, vec, 20, block_size=6)
    rs, ri = ref_topk(torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec), 20)
    assert torch.equal(i, ri)
    assert torch.equal(torch.isinf(s), torch.isinf(rs)) and bool((s[:, 12:] == float("-inf")).all())
    assert bool((i[:, 12:] == -1).all())


def test_exact_topk_memmap(tmp_path):
    qn = make_qnet(3, 64, 2, torch.bfloat16)
    vec = make_vectors(2500, 64, torch.float16)
    path = tmp_path / "vecs.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=(2500, 64))
    mm[:] = vec.numpy()
    mm.flush()
    ro = np.memmap(path, dtype=np.float16, mode="r+", shape=(2500, 64))
    s, i = cpu.exact_topk(qn.weights, qn.biases, qn.config, ro, 7, block_size=48)
    rs, ri = ref_topk(torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec), 7)
    assert_scores_close(s, rs, tol(qn.dtype, vec.dtype))
    # the same through a torch tensor sharing the memmap's memory
    s2, i2 = cpu.exact_topk(qn.weights, qn.biases, qn.config, torch.from_numpy(np.asarray(ro)), 7)
    assert torch.equal(i2, i) and torch.equal(s2, s)


def test_block_sizes_agree():
    qn = make_qnet(2, 100, 2, torch.float32)
    vec = make_vectors(1000, 100, torch.float32)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec)
    for b in (1, 5, 6, 64, 97, 2000):
        assert_scores_close(cpu.score_dense(qn.weights, qn.biases, qn.config, vec, block_size=b), ref, 1e-4)


def test_non_contiguous_inputs():
    qn = make_qnet(3, 64, 2, torch.float32)
    W = [w.transpose(1, 2).contiguous().transpose(1, 2) for w in qn.weights]  # same values, strided
    assert not W[0].is_contiguous()
    big = make_vectors(400, 128, torch.bfloat16)
    vec = big[::2, ::2]  # (200, 64), strided both ways
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec)
    out = torch.zeros(200, 3).t()  # non-contiguous (3, 200)
    got = cpu.score_dense(W, qn.biases, qn.config, vec, out)
    assert got is out
    rel = tol(qn.dtype, vec.dtype)
    assert_scores_close(out, ref, rel)
    ids = torch.randint(0, 200, (6, 50))[::2]  # (3, 50) strided, int64
    assert_scores_close(cpu.score_gather(W, qn.biases, qn.config, vec, ids.int()), torch.gather(ref, 1, ids), rel)


def test_public_api_dispatches_to_cpu():
    from engine import backends

    assert backends.resolve_name("auto", torch.device("cpu")) == "cpu"
    qn = make_qnet(2, 64, 2, torch.float32)
    vec = make_vectors(100, 64, torch.float32)
    ref = engine.score(qn, vec, backend="torch")
    assert_scores_close(engine.score(qn, vec, backend="cpu"), ref, 1e-4)
    ids = torch.randint(0, 100, (2, 30))
    assert_scores_close(engine.score_gather(qn, vec, ids, backend="cpu"), torch.gather(ref, 1, ids), 1e-4)


def test_gather_query_contract():
    """The C++ contract function (single-threaded, one query) the graph search calls."""
    from engine import _C

    qn = make_qnet(3, 100, 2, torch.bfloat16)
    vec = make_vectors(500, 100, torch.float16)
    args = cpu._qnet_args(qn.weights, qn.biases, qn.config)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec)
    ids = np.array([3, 499, 0, 3, 250] * 30, dtype=np.int64)
    for q in range(3):
        out = np.zeros(len(ids), dtype=np.float32)
        _C.cpu_score_gather_query(**args, q=q, vectors=vec.numpy(), ids=ids, out=out)
        assert_scores_close(torch.from_numpy(out), ref[q, ids], tol(qn.dtype, vec.dtype))


# ----------------------------------------------------------------------- invalid input


@pytest.fixture(scope="module")
def raw():
    from engine import _C

    qn = make_qnet(2, 16, 1, torch.float32)
    args = cpu._qnet_args(qn.weights, qn.biases, qn.config)
    vec = np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32)
    return _C, args, vec


def test_rejects_bad_vectors(raw):
    _C, args, vec = raw
    out = np.zeros((2, 10), np.float32)
    with pytest.raises(TypeError, match="vectors"):
        _C.cpu_score_dense(**args, vectors=vec.astype(np.float64), out=out, num_threads=1)
    with pytest.raises(ValueError, match="vectors"):
        _C.cpu_score_dense(**args, vectors=vec[:, :8].copy(), out=out, num_threads=1)
    with pytest.raises(ValueError, match="contiguous"):
        _C.cpu_score_dense(**args, vectors=vec[::2], out=np.zeros((2, 5), np.float32), num_threads=1)
    with pytest.raises(ValueError, match="out"):
        _C.cpu_score_dense(**args, vectors=vec, out=np.zeros((2, 9), np.float32), num_threads=1)
    with pytest.raises(TypeError, match="out"):
        _C.cpu_score_dense(**args, vectors=vec, out=np.zeros((2, 10), np.float64), num_threads=1)
    with pytest.raises(ValueError, match="num_threads"):
        _C.cpu_score_dense(**args, vectors=vec, out=out, num_threads=0)


def test_rejects_bad_weights(raw):
    _C, args, vec = raw
    out = np.zeros((2, 10), np.float32)
    bad = dict(args, weights=[args["weights"][0].astype(np.float64), args["weights"][1]])
    with pytest.raises(TypeError, match=r"weights\[0\]"):
        _C.cpu_score_dense(**bad, vectors=vec, out=out, num_threads=1)
    bad = dict(args, weights=[args["weights"][0], args["weights"][1][:, :8].copy()])
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        _C.cpu_score_dense(**bad, vectors=vec, out=out, num_threads=1)
    bad = dict(args, weights=[args["weights"][0], args["weights"][1].astype(np.float16)])
    with pytest.raises(TypeError, match="dtype of weights"):
        _C.cpu_score_dense(**bad, vectors=vec, out=out, num_threads=1)
    bad = dict(args, biases=[])
    with pytest.raises(ValueError, match="biases"):
        _C.cpu_score_dense(**bad, vectors=vec, out=out, num_threads=1)
    bad = dict(args, biases=[args["biases"][0][:1].copy()])
    with pytest.raises(ValueError, match=r"biases\[0\]"):
        _C.cpu_score_dense(**bad, vectors=vec, out=out, num_threads=1)
    with pytest.raises(ValueError, match="eps"):
        _C.cpu_score_dense(**dict(args, flags=dict(args["flags"], eps=0.0)), vectors=vec, out=out, num_threads=1)
    for bad_flags, err in ((dict(args["flags"], relu=1), TypeError), (dict(args["flags"], eps=1), TypeError),
                           ({k: v for k, v in args["flags"].items() if k != "relu"}, ValueError),
                           (dict(args["flags"], dropout=True), ValueError)):
        with pytest.raises(err, match="flags"):
            _C.cpu_score_dense(**dict(args, flags=bad_flags), vectors=vec, out=out, num_threads=1)


def test_rejects_bad_ids(raw):
    _C, args, vec = raw
    out = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="out of range"):
        _C.cpu_score_gather(**args, vectors=vec, ids=np.array([[0, 1, 10], [0, 0, 0]]), out=out, num_threads=1)
    with pytest.raises(ValueError, match="out of range"):
        _C.cpu_score_gather(**args, vectors=vec, ids=np.array([[0, -1, 2], [0, 0, 0]]), out=out, num_threads=1)
    with pytest.raises(TypeError, match="ids"):
        _C.cpu_score_gather(**args, vectors=vec, ids=np.zeros((2, 3), np.int32), out=out, num_threads=1)
    with pytest.raises(ValueError, match="ids"):
        _C.cpu_score_gather(**args, vectors=vec, ids=np.zeros((3, 3), np.int64), out=out, num_threads=1)
    with pytest.raises(ValueError, match="out of range"):
        _C.cpu_score_gather_query(
            **args, q=0, vectors=vec, ids=np.array([11]), out=np.zeros(1, np.float32)
        )
    with pytest.raises(ValueError, match="q out of range"):
        _C.cpu_score_gather_query(**args, q=2, vectors=vec, ids=np.array([1]), out=np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="k must"):
        _C.cpu_exact_topk(**args, vectors=vec, k=0, num_threads=1)


# ------------------------------------------------------- packed-weight cache, scheduling


@pytest.fixture
def fresh_pack_cache():
    limit = cpu.pack_cache_info()["limit"]
    cpu.clear_pack_cache()
    yield
    cpu.set_pack_cache_limit(limit)
    cpu.clear_pack_cache()


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_pack_cache_sees_in_place_changes(fresh_pack_cache, wdtype):
    qn = make_qnet(2, 64, 2, wdtype)
    W, B, C = qn.weights, qn.biases, qn.config
    vec = make_vectors(300, 64, torch.float32)
    ids = torch.randint(0, 300, (2, 97))
    rel = tol(wdtype, vec.dtype)
    ref = torch_ref.score_dense(W, B, C, vec)
    assert_scores_close(cpu.score_gather(W, B, C, vec, ids), torch.gather(ref, 1, ids), rel)
    assert_scores_close(cpu.score_dense(W, B, C, vec), ref, rel)
    assert cpu.pack_cache_info()["entries"] == 1  # both calls used one packing
    g = torch.Generator().manual_seed(5)
    changes = [
        lambda: W[0].add_(0.3 * torch.randn(W[0].shape, generator=g).to(wdtype)),  # hidden weights
        lambda: B[1].mul_(-2.0),  # a bias
        lambda: W[2].copy_(torch.randn(W[2].shape, generator=g).to(wdtype)),  # output weights
        lambda: W[1][1].zero_(),  # one query's weights, through a view
    ]
    for change in changes:
        with torch.no_grad():
            change()
        ref2 = torch_ref.score_dense(W, B, C, vec)
        assert not torch.allclose(ref2, ref)
        assert_scores_close(cpu.score_gather(W, B, C, vec, ids), torch.gather(ref2, 1, ids), rel)
        assert_scores_close(cpu.score_dense(W, B, C, vec), ref2, rel)
        ref = ref2
    assert cpu.pack_cache_info()["entries"] == 1  # repacked in place, not accumulated


def test_pack_cache_off_and_bounded(fresh_pack_cache):
    qn = make_qnet(3, 100, 2, torch.float16)
    vec = make_vectors(200, 100, torch.bfloat16)
    ids = torch.randint(0, 200, (3, 150))
    cached = cpu.score_gather(qn.weights, qn.biases, qn.config, vec, ids)
    nbytes = cpu.pack_cache_info()["bytes"]
    assert nbytes > 0
    cpu.set_pack_cache_limit(0)  # the kernels pack inside the call
    assert cpu.pack_cache_info()["entries"] == 0
    assert torch.equal(cpu.score_gather(qn.weights, qn.biases, qn.config, vec, ids), cached)
    assert cpu.pack_cache_info()["entries"] == 0
    cpu.set_pack_cache_limit(nbytes + nbytes // 2)  # room for one such q-net batch
    others = [make_qnet(3, 100, 2, torch.float32, seed=s) for s in range(3)]
    for o in others:
        cpu.score_dense(o.weights, o.biases, o.config, vec)
    info = cpu.pack_cache_info()
    assert info["entries"] == 1 and info["bytes"] <= info["limit"]


def test_packed_argument_is_validated():
    from engine import _C

    qn = make_qnet(2, 32, 2, torch.float32)
    args = cpu._qnet_args(qn.weights, qn.biases, qn.config)
    packed = _C.cpu_pack_qnets(**args, num_threads=1)
    assert packed.num_queries == 2 and packed.nbytes >= 2 * 2 * 32 * 32 * 4
    vec = make_vectors(10, 32, torch.float32).numpy()
    out = np.zeros((2, 10), np.float32)
    _C.cpu_score_dense(**args, vectors=vec, out=out, num_threads=1, packed=packed)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, torch.from_numpy(vec))
    assert_scores_close(torch.from_numpy(out), ref, 1e-4)
    bad = [
        cpu._qnet_args(*(lambda o: (o.weights, o.biases, o.config))(make_qnet(3, 32, 2, torch.float32))),  # Q
        cpu._qnet_args(*(lambda o: (o.weights, o.biases, o.config))(make_qnet(2, 32, 1, torch.float32))),  # L
        cpu._qnet_args(*(lambda o: (o.weights, o.biases, o.config))(make_qnet(2, 32, 2, torch.bfloat16))),  # dtype
        dict(args, flags=dict(args["flags"], layer_norm=False)),  # flags
    ]
    for a in bad:
        o = np.zeros((a["weights"][0].shape[0], 10), np.float32)
        with pytest.raises(ValueError, match="packed"):
            _C.cpu_score_dense(**a, vectors=vec, out=o, num_threads=1, packed=packed)
    with pytest.raises(TypeError):
        _C.cpu_score_dense(**args, vectors=vec, out=out, num_threads=1, packed="not packed")


@pytest.mark.parametrize("Q", [1, 2, 3])
def test_gather_splits_across_threads(Q):
    """Small gathers are cut into blocks of decreasing size (guided); every split agrees."""
    qn = make_qnet(Q, 48, 2, torch.float32)
    vec = make_vectors(600, 48, torch.float32)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec)
    for m in (1, 5, 7, 13, 100, 512, 515):
        ids = torch.randint(0, 600, (Q, m))
        for nt in (1, 2, 3, 4):
            got = cpu.score_gather(qn.weights, qn.biases, qn.config, vec, ids, num_threads=nt)
            assert_scores_close(got, torch.gather(ref, 1, ids), 1e-4)


def test_gather_splits_large_qnet():
    """q-nets beyond 2 MB of packed weights take equal blocks instead of guided ones."""
    qn = make_qnet(1, 384, 4, torch.float32)  # 2.4 MB of fp32 weights
    vec = make_vectors(400, 384, torch.float32)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec)
    for m in (7, 256, 301):
        ids = torch.randint(0, 400, (1, m))
        for nt in (2, 3):
            got = cpu.score_gather(qn.weights, qn.biases, qn.config, vec, ids, num_threads=nt)
            assert_scores_close(got, torch.gather(ref, 1, ids), 1e-4)


def test_fma_peak():
    from engine import _C

    p1 = cpu.fma_peak_gflops(1, seconds=0.1)
    assert np.isfinite(p1) and p1 > 0.1
    with pytest.raises(ValueError):
        _C.cpu_fma_peak_gflops(0, 0.1)
    with pytest.raises(ValueError):
        _C.cpu_fma_peak_gflops(1, 0.0)


# ----------------------------------------------------------------------- ISA selection


@pytest.fixture
def restore_isa():
    before = cpu.isa()
    yield
    cpu.set_isa(before)


@pytest.mark.parametrize("wdtype,vdtype", [(torch.float32, torch.float16), (torch.bfloat16, torch.bfloat16)])
def test_every_supported_isa_agrees(restore_isa, wdtype, vdtype):
    qn = make_qnet(3, 100, 2, wdtype)
    vec = make_vectors(257, 100, vdtype)
    ids = torch.randint(0, 257, (3, 40))
    results = {}
    for name in cpu.supported_isas():
        cpu.set_isa(name)
        assert cpu.isa() == name
        results[name] = (
            cpu.score_dense(qn.weights, qn.biases, qn.config, vec),
            cpu.score_gather(qn.weights, qn.biases, qn.config, vec, ids),
            cpu.uses_bf16(wdtype, vdtype),
        )
    base = results["portable"]
    assert not base[2]  # the portable kernel is exact float32
    for name, (d, g, bf16) in results.items():
        rel = BF16_TOL if bf16 else 1e-5
        assert_scores_close(d, base[0], rel)
        assert_scores_close(g, base[1], rel)


def test_isa_names_and_errors(restore_isa):
    assert cpu.supported_isas()[0] == "portable"
    assert cpu.isa() in cpu.supported_isas()
    with pytest.raises(ValueError, match="unknown CPU ISA"):
        cpu.set_isa("sse9")
    for name in ("avx2", "avx512", "avx512_bf16"):
        if name not in cpu.supported_isas():
            with pytest.raises(ValueError, match="not supported"):
                cpu.set_isa(name)
    cpu.set_isa("auto")
    # the best supported, except that Intel CPUs without AMX take avx512 over avx512_bf16
    # (their vdpbf16ps is slower than fp32 FMA)
    best = cpu.supported_isas()[-1]
    assert cpu.isa() == best or (best, cpu.isa()) == ("avx512_bf16", "avx512")


def _run_with_env(isa: str) -> str:
    code = "from engine.backends import cpu; ok, why = cpu.is_available(); print(cpu.isa() if ok else 'ERR ' + why)"
    env = dict(os.environ, HYPENCODER_CPU_ISA=isa)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_env_override():
    assert _run_with_env("portable").strip() == "portable"
    missing = [n for n in ("avx512_bf16", "avx512", "avx2") if n not in cpu.supported_isas()]
    if missing:
        out = _run_with_env(missing[0])
        assert out.startswith("ERR") and "not supported" in out
