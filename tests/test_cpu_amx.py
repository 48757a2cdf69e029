"""The AMX kernel (csrc/cpu/kernel_amx.cpp) and its emulation against the reference, and
the CPU precision policy.

Two instruction sets run the AMX block loop: ``amx`` (the tile instructions; runs only
on CPUs with AMX-TILE and AMX-BF16 whose OS grants tile data, skipped elsewhere with the
reason) and ``amx_emulated`` (the same packing, tile layout, block loop and AVX-512
epilogue with each tile instruction carried out in C++; runs on any CPU with AVX-512).
Every test runs on both.

Tolerances: the bf16 kernel rounds weights and activations to bf16 before each layer and
accumulates in fp32, so it agrees with the fp32 reference to 3e-2 of the largest score
(as the AVX512-BF16 kernel; measured errors are 2e-3..5e-3 on these shapes). That bound
would hide a layout error in a few elements, so the tile layout is also pinned exactly:
with small integer weights, biases and vectors and no layer norm, every product and sum
is exact in fp32 and bf16, and the kernel must reproduce the reference bit for bit.

The grid: d not a multiple of 16/32/64 (17, 40, 100, 200) and multiples (384, 768), L 0..6,
ragged n, Q 1/3/16, every (weights, vectors) dtype pair under the default policy and
under ``bf16`` (fp32 pairs included), with and without residuals and layer norm, gathers
with repeated and unsorted ids, exact top-k and the single-query gather of graph search.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import QNet, QNetConfig
from engine.backends import cpu, torch_ref

pytestmark = pytest.mark.skipif(not cpu.is_available()[0], reason=f"cpu backend: {cpu.is_available()[1]}")

BF16_TOL = 3e-2
AMX_ISAS = ("amx", "amx_emulated")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_PAIRS = list(itertools.product(DTYPES, DTYPES))

# (L, d, Q, n)
SHAPES = [
    (1, 17, 16, 7),
    (2, 40, 3, 301),
    (2, 100, 1, 1000),
    (3, 200, 3, 33),
    (0, 24, 3, 50),
    (6, 72, 16, 17),
    (2, 384, 1, 257),
    (6, 768, 1, 40),
]


def _activate(name):
    """Activates instruction set `name` for a test (skipped with the reason where this
    process cannot run it); restores the previous one and the default precision after."""
    status = cpu.isa_status(name)
    if status != "ok":
        pytest.skip(f"{name}: {status}")
    before = cpu.isa()
    cpu.set_isa(name)
    yield name
    cpu.set_isa(before)
    cpu.set_precision("auto")


@pytest.fixture(params=AMX_ISAS)
def amx_isa(request):
    yield from _activate(request.param)


@pytest.fixture(params=("avx512_bf16",) + AMX_ISAS)
def bf16_isa(request):
    """Every instruction set with a bf16 kernel."""
    yield from _activate(request.param)


@pytest.fixture
def bf16_precision():
    cpu.set_precision("bf16")
    yield
    cpu.set_precision("auto")


def make_qnet(Q, dims, dtype, *, config=None, seed=0) -> QNet:
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * 0.1 for b in dims[1:-1]]
    return QNet([w.to(dtype) for w in ws], [b.to(dtype) for b in bs], config or QNetConfig())


def make_vectors(n, d, dtype, seed=1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)).to(dtype)


def assert_scores_close(got, ref, rel):
    assert got.dtype == torch.float32 and got.shape == ref.shape
    scale = max(float(ref.abs().max()), 1e-6) if ref.numel() else 1.0
    err = float((got - ref).abs().max()) if ref.numel() else 0.0
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


def check_all(qn: QNet, vec: torch.Tensor, m: int, k: int = 10, seed: int = 2):
    """Dense, gather (repeated, unsorted ids), exact top-k and the single-query gather
    against the reference, to the bf16 tolerance; the bf16 kernel must be the one used."""
    W, B, C = qn.weights, qn.biases, qn.config
    assert cpu.uses_bf16(qn.dtype, vec.dtype)
    ref = torch_ref.score_dense(W, B, C, vec)
    assert_scores_close(cpu.score_dense(W, B, C, vec), ref, BF16_TOL)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vec.shape[0], (qn.num_queries, m), generator=g)
    assert_scores_close(cpu.score_gather(W, B, C, vec, ids), torch.gather(ref, 1, ids), BF16_TOL)
    s, i = cpu.exact_topk(W, B, C, vec, k)
    kk = min(k, vec.shape[0])
    rs = torch.sort(ref, dim=1, descending=True, stable=True).values[:, :kk]
    assert_scores_close(s[:, :kk], rs, BF16_TOL)
    assert bool((i[:, kk:] == -1).all()) and bool((i[:, :kk] >= 0).all())
    # the chosen documents' reference scores are within tolerance of the best ones
    assert_scores_close(torch.gather(ref, 1, i[:, :kk]), rs, BF16_TOL)
    from engine import _C

    args = cpu._qnet_args(W, B, C, vec.dtype)
    one = ids[0].numpy().astype(np.int64)
    out = np.zeros(len(one), np.float32)
    _C.cpu_score_gather_query(**args, q=0, vectors=cpu._np(vec), ids=one, out=out)
    assert_scores_close(torch.from_numpy(out), ref[0, ids[0]], BF16_TOL)


@pytest.mark.parametrize("L,d,Q,n", SHAPES, ids=lambda v: str(v))
def test_grid(amx_isa, L, d, Q, n):
    i = SHAPES.index((L, d, Q, n))
    wd, vd = DTYPE_PAIRS[(i + 1) % len(DTYPE_PAIRS)]  # (fp32, fp32) excluded: exact by default
    check_all(make_qnet(Q, [d] * (L + 1) + [1], wd, seed=i), make_vectors(n, d, vd, seed=i), m=min(500, 3 * n))


@pytest.mark.parametrize("wdtype,vdtype", DTYPE_PAIRS, ids=lambda v: str(v).replace("torch.", ""))
def test_dtype_pairs_forced_bf16(amx_isa, bf16_precision, wdtype, vdtype):
    check_all(make_qnet(3, [100, 100, 100, 1], wdtype), make_vectors(131, 100, vdtype), m=200)


@pytest.mark.parametrize(
    "config,widths",
    [
        (QNetConfig(), [48, 48]),
        (QNetConfig(residual=False), [40, 72]),
        (QNetConfig(residual_on_last=True), [48, 48]),
        (QNetConfig(layer_norm_before_residual=False), [48, 48]),
        (QNetConfig(layer_norm=False), [48, 48]),
        (QNetConfig(activation="identity"), [48, 48]),
        (QNetConfig(residual=False, layer_norm=False, activation="identity"), [17, 33]),
        (QNetConfig(eps=1e-3), [48, 48]),
    ],
    ids=["default", "no_residual_widths", "residual_on_last", "ln_after_residual", "no_ln", "identity",
         "linear", "eps"],
)
def test_converter_flags(amx_isa, config, widths):
    qn = make_qnet(2, [48] + widths + [1], torch.bfloat16, config=config)
    check_all(qn, make_vectors(130, 48, torch.bfloat16), m=70)


def integer_qnet(Q, dims, config, seed):
    """Weights and biases in {-1, 0, 1}, sparse enough that every activation is a small
    integer: exact in bf16 and in any fp32 summation order."""
    g = torch.Generator().manual_seed(seed)
    ws, bs = [], []
    for a, b in zip(dims[:-1], dims[1:]):
        w = torch.randint(-1, 2, (Q, a, b), generator=g).float()
        w *= (torch.rand(Q, a, b, generator=g) < 4.0 / a).float()  # about 4 terms per output
        ws.append(w)
    bs = [torch.randint(-2, 3, (Q, b), generator=g).float() for b in dims[1:-1]]
    return QNet(ws, bs, config)


@pytest.mark.parametrize("dims", [[40, 40, 1], [100, 72, 72, 1], [33, 200, 200, 200, 1], [768, 768, 768, 1]],
                         ids=lambda v: "x".join(map(str, v[:-1])))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_tile_layout_exact(bf16_isa, bf16_precision, dims, residual):
    """Integer inputs: every product and sum is exact, so the kernel's scores must equal
    the reference's bit for bit whatever the order of summation; a k, pair, column, row,
    bias or padding error in the tile layout (or the k-pair layout of the AVX512-BF16
    kernel) changes some integer."""
    cfg = QNetConfig(layer_norm=False, residual=residual)
    if residual and len(set(dims[:-1])) > 1:
        pytest.skip("residuals need equal widths")
    qn = integer_qnet(3, dims, cfg, seed=len(dims))
    g = torch.Generator().manual_seed(9)
    vec = torch.randint(-2, 3, (97, dims[0]), generator=g).float()
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, vec)
    assert bool((ref == ref.round()).all()) and float(ref.abs().max()) < 256
    assert torch.equal(cpu.score_dense(qn.weights, qn.biases, qn.config, vec), ref)
    ids = torch.tensor([[96, 3, 3, 50, 0, 17] * 7] * 3)
    assert torch.equal(cpu.score_gather(qn.weights, qn.biases, qn.config, vec, ids), torch.gather(ref, 1, ids))


def test_emulation_matches_hardware():
    """On an AMX machine, the tile instructions and their C++ emulation agree (the
    emulation follows the instruction reference: two fp32 FMAs per k-pair)."""
    if cpu.isa_status("amx") != "ok":
        pytest.skip(f"amx: {cpu.isa_status('amx')}")
    before = cpu.isa()
    qn = make_qnet(3, [200, 200, 200, 1], torch.bfloat16)
    vec = make_vectors(500, 200, torch.bfloat16)
    try:
        out = {}
        for isa in AMX_ISAS:
            cpu.set_isa(isa)
            out[isa] = cpu.score_dense(qn.weights, qn.biases, qn.config, vec)
    finally:
        cpu.set_isa(before)
    assert_scores_close(out["amx"], out["amx_emulated"], 1e-5)


# ------------------------------------------------------------------- precision policy


@pytest.fixture
def restore():
    isa = cpu.isa()
    yield
    cpu.set_isa(isa)
    cpu.set_precision("auto")


def test_precision_policy(restore):
    assert cpu.precision() == "auto"
    f32, bf = torch.float32, torch.bfloat16
    assert not cpu.uses_bf16(f32, f32)
    has = cpu.kernel_name(True) != cpu.kernel_name(False)
    for pair in [(f32, torch.float16), (bf, f32), (torch.float16, torch.float16)]:
        assert cpu.uses_bf16(*pair) == has
    cpu.set_precision("fp32")
    assert not cpu.uses_bf16(bf, bf)
    cpu.set_precision("bf16")
    assert cpu.uses_bf16(f32, f32) == has
    with pytest.raises(ValueError, match="precision"):
        cpu.set_precision("fp16")
    cpu.set_isa("portable")  # no bf16 kernel: every policy is exact
    assert not cpu.uses_bf16(bf, bf) and cpu.kernel_name(True) == "portable"


@pytest.mark.parametrize("isa", ["avx512_bf16", "amx", "amx_emulated"])
def test_precision_changes_the_kernel(restore, isa):
    """fp32 policy: bf16 q-nets exact; bf16 policy: fp32 q-nets scored as with their
    weights rounded to bf16 (biases and output weights kept), bit for bit; the packed
    weights of one policy are not reused under the other."""
    if cpu.isa_status(isa) != "ok":
        pytest.skip(f"{isa}: {cpu.isa_status(isa)}")
    cpu.set_isa(isa)
    qn = make_qnet(2, [100, 100, 100, 1], torch.float32)
    vec = make_vectors(300, 100, torch.float32)
    W, B, C = qn.weights, qn.biases, qn.config
    ref = torch_ref.score_dense(W, B, C, vec)
    exact = cpu.score_dense(W, B, C, vec)
    assert_scores_close(exact, ref, 1e-5)
    cpu.set_precision("bf16")
    fast = cpu.score_dense(W, B, C, vec)
    assert not torch.equal(fast, exact)
    assert_scores_close(fast, ref, BF16_TOL)
    rounded = [w.bfloat16().float() for w in W[:-1]] + [W[-1]]
    assert torch.equal(cpu.score_dense(rounded, B, C, vec), fast)
    cpu.set_precision("fp32")
    qb = qn.to(dtype=torch.bfloat16)
    assert_scores_close(cpu.score_dense(qb.weights, qb.biases, qb.config, vec),
                        torch_ref.score_dense(qb.weights, qb.biases, qb.config, vec), 1e-5)
    assert torch.equal(cpu.score_dense(W, B, C, vec), exact)


def _run(env: dict, code: str) -> str:
    env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_precision_env():
    code = "from engine.backends import cpu; ok, why = cpu.is_available(); print(cpu.precision() if ok else why)"
    assert _run({"HYPENCODER_CPU_PRECISION": "bf16"}, code).strip() == "bf16"
    out = _run({"HYPENCODER_CPU_PRECISION": "half"}, code)
    assert "HYPENCODER_CPU_PRECISION" in out and "must be one of" in out


def test_amx_isa_selection(restore):
    """amx: listed and chosen automatically only where it runs; amx_emulated: never listed
    nor chosen automatically, settable by name."""
    status = cpu.isa_status("amx")
    assert ("amx" in cpu.supported_isas()) == (status == "ok")
    assert "amx_emulated" not in cpu.supported_isas()
    cpu.set_isa("auto")
    # the best supported, except that Intel CPUs without AMX take avx512 over avx512_bf16
    # (their vdpbf16ps is slower than fp32 FMA)
    best = cpu.supported_isas()[-1]
    assert cpu.isa() == best or (best, cpu.isa()) == ("avx512_bf16", "avx512")
    if status != "ok":
        assert cpu.isa() != "amx"
        with pytest.raises(ValueError, match="not supported here"):
            cpu.set_isa("amx")
        out = _run({"HYPENCODER_CPU_ISA": "amx"},
                   "from engine.backends import cpu; print(cpu.is_available())")
        assert "not supported here" in out and status in out
    if cpu.isa_status("amx_emulated") == "ok":
        cpu.set_isa("amx_emulated")
        assert cpu.isa() == "amx_emulated" and cpu.kernel_name(True).startswith("amx_emulated")
    with pytest.raises(ValueError, match="unknown"):
        cpu.isa_status("amx2")


def test_info_shows_isa_and_precision():
    env = {"HYPENCODER_CPU_PRECISION": "bf16"}
    out = subprocess.run([sys.executable, "-m", "engine", "info"], env=dict(os.environ, **env),
                         capture_output=True, text=True, check=True).stdout
    assert f"cpu ISA: {cpu.isa()}" in out and f"amx: {cpu.isa_status('amx')}" in out
    assert f"cpu precision: bf16 (every q-net: {cpu.kernel_name(True)})" in out
