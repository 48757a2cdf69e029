"""Compressed document storage (engine/quant.py): int8 and float8 e4m3 rows with a float32
scale per row, against float32 and the torch reference.

Tolerances:
* quantisation: int8 ``|x - x^| <= scale / 2`` per element (plus float32 rounding of the
  product, 1e-6 relative); float8 e4m3 ``|x - x^| <= 2^-4 |x|`` for ``|x| >= 2^-6 scale``
  and ``<= 2^-10 scale`` below (round to nearest with 3 mantissa bits, subnormal step
  2^-9 scale).
* scoring: every CPU kernel reads the stored rows and applies the row's scale as it
  loads them, the same float32 product as the reference's ``data.float() * scale``, so
  on the exact float32 path (precision ``fp32``) the scores agree with the torch reference
  on the dequantised values to float32 rounding: 1e-4 relative to the largest score;
  where the bfloat16 kernel runs (policy ``auto`` with quantised vectors on a CPU with
  AVX512-BF16 or AMX), 3e-2 relative.
* the linear scans of graph search (dot products with a direction): 1e-5 relative to
  the largest |dot|.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import engine
from engine import Index, QNet, QNetConfig, quant
from engine import backends as backends_mod
from engine.backends import cpu, torch_ref
from engine.native_args import precision_scope

QTYPES = (torch.int8, torch.float8_e4m3fn)
FP32_TOL, BF16_TOL = 1e-4, 3e-2
cpu_ok = pytest.mark.skipif(not cpu.is_available()[0], reason=f"cpu backend: {cpu.is_available()[1]}")


def make_qnet(Q, d, L, *, seed=0) -> QNet:
    g = torch.Generator().manual_seed(seed)
    dims = [d] + [d] * L + [1]
    ws = [torch.randn(Q, a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * 0.1 for b in dims[1:-1]]
    return QNet(ws, bs, QNetConfig())


def make_vectors(n, d, seed=1, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Embedding-like rows: per-row magnitudes that differ by orders, a few large values.
    x = torch.randn(n, d, generator=g) * torch.logspace(-3, 1, n).unsqueeze(1)[torch.randperm(n, generator=g)]
    return x.to(dtype)


def assert_close(got, ref, rel):
    assert got.shape == ref.shape and got.dtype == torch.float32
    scale = max(float(ref.abs().max()), 1e-6) if ref.numel() else 1.0
    err = float((got - ref).abs().max()) if ref.numel() else 0.0
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} x {scale:.3g}"


def isas():
    names = list(cpu.supported_isas())
    if "amx" not in names and cpu.isa_status("amx_emulated") == "ok":
        names.append("amx_emulated")
    return names


@pytest.fixture
def restore_isa():
    before = cpu.isa()
    yield
    cpu.set_isa(before)


# ----------------------------------------------------------------------------- quantisation
@pytest.mark.parametrize("src", [torch.float32, torch.float16, torch.bfloat16])
def test_int8_error_bound(src):
    x = make_vectors(300, 77, dtype=src)
    q, s = quant.quantize(x, "int8")
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (300,)
    xf = x.float()
    assert torch.allclose(s, xf.abs().amax(1) / 127, rtol=1e-6, atol=0)
    assert int(q.abs().max()) <= 127
    err = (quant.dequantize(q, s) - xf).abs()
    assert bool((err <= s[:, None] / 2 * (1 + 1e-5) + 1e-6 * xf.abs()).all())


def test_fp8_error_bound():
    x = make_vectors(300, 77)
    q, s = quant.quantize(x, torch.float8_e4m3fn)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.allclose(s, x.abs().amax(1) / 448, rtol=1e-6, atol=0)
    xh = quant.dequantize(q, s)
    err = (xh - x).abs()
    normal = x.abs() >= 2.0**-6 * s[:, None]
    assert bool((err[normal] <= 2.0**-4 * x.abs()[normal] * (1 + 1e-5)).all())
    assert bool((err[~normal] <= 2.0**-10 * s[:, None].expand_as(x)[~normal] * (1 + 1e-5)).all())
    # Each row's largest magnitude is stored exactly (448 is representable).
    assert torch.allclose(xh.abs().amax(1), x.abs().amax(1), rtol=1e-6)


@pytest.mark.parametrize("dt", QTYPES)
def test_zero_rows_blocks_and_empty(dt):
    x = make_vectors(50, 16)
    x[3] = 0
    q, s = quant.quantize(x, dt)
    assert float(s[3]) == 0 and not bool(q[3].float().any())
    q7, s7 = quant.quantize(x, dt, block_rows=7)  # blocks never change a row
    assert torch.equal(q7.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s7, s)
    q0, s0 = quant.quantize(torch.zeros(0, 8), dt)
    assert q0.shape == (0, 8) and s0.shape == (0,)


def test_quantize_bad_input():
    with pytest.raises(ValueError, match="NaN or Inf.*row 2"):
        x = torch.ones(4, 3)
        x[2, 1] = float("inf")
        quant.quantize(x, "int8")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        quant.quantize(torch.ones(4, 3, dtype=torch.int32), "int8")
    with pytest.raises(TypeError, match="int8 or float8_e4m3"):
        quant.quantize(torch.ones(4, 3), torch.float16)
    with pytest.raises(ValueError, match="storage must be one of"):
        quant.quantize(torch.ones(4, 3), "int4")
    with pytest.raises(ValueError, match="2-D"):
        quant.quantize(torch.ones(3), "int8")
    with pytest.raises(ValueError, match="too small"):
        quant.quantize(torch.full((2, 3), 1e-43), "int8")
    with pytest.raises(TypeError):
        quant.quantize([[1.0]], "int8")


def test_check_scales_errors():
    q, s = quant.quantize(make_vectors(10, 4), "int8")
    with pytest.raises(ValueError, match="need their per-row scales"):
        quant.check_scales(q, None)
    with pytest.raises(ValueError, match="int8 / float8_e4m3 vectors only"):
        quant.check_scales(torch.ones(10, 4), s)
    with pytest.raises(TypeError, match="float32"):
        quant.check_scales(q, s.double())
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        quant.check_scales(q, s[:9])
    with pytest.raises(ValueError, match="finite and non-negative"):
        quant.check_scales(q, -s)


# ----------------------------------------------------------------------------- CPU kernels
SHAPES = [  # (L, d, Q, n): edge sizes of n and d, no hidden layer, deep q-nets
    (1, 64, 1, 1),
    (2, 100, 3, 7),
    (0, 33, 2, 65),
    (2, 384, 2, 1000),
    (1, 768, 1, 257),
    (6, 64, 3, 129),
]


@cpu_ok
@pytest.mark.parametrize("dt", QTYPES)
@pytest.mark.parametrize("L,d,Q,n", SHAPES)
def test_every_isa_against_reference(restore_isa, dt, L, d, Q, n):
    qn = make_qnet(Q, d, L, seed=L + d)
    q, s = quant.quantize(make_vectors(n, d, seed=n), dt)
    xh = quant.dequantize(q, s)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, xh)
    ids = torch.randint(0, n, (Q, 2 * n + 3), generator=torch.Generator().manual_seed(n))
    ref_g = torch_ref.score_gather(qn.weights, qn.biases, qn.config, xh, ids)
    # The reference's own quantised path is the same computation.
    assert torch.equal(torch_ref.score_dense(qn.weights, qn.biases, qn.config, q, scales=s), ref)
    for name in isas():
        cpu.set_isa(name)
        for policy in ("fp32", "auto"):
            with precision_scope(policy):
                tol = BF16_TOL if cpu.uses_bf16(qn.dtype, dt) else FP32_TOL
                got = cpu.score_dense(qn.weights, qn.biases, qn.config, q, scales=s)
                assert_close(got, ref, tol)
                got_g = cpu.score_gather(qn.weights, qn.biases, qn.config, q, ids, scales=s)
                assert_close(got_g, ref_g, tol)
                k = min(5, n)
                ts, ti = cpu.exact_topk(qn.weights, qn.biases, qn.config, q, k, scales=s)
                assert_close(ts, torch.gather(ref, 1, ti), tol)  # the scores of the ids it returns
                if tol == FP32_TOL:
                    rs, _ = ref.topk(k, dim=1)
                    assert_close(ts, rs, tol)


@cpu_ok
@pytest.mark.parametrize("dt", QTYPES)
def test_gather_query_and_block_sizes(dt):
    qn = make_qnet(2, 48, 2)
    q, s = quant.quantize(make_vectors(200, 48), dt)
    ref = torch_ref.score_dense(qn.weights, qn.biases, qn.config, quant.dequantize(q, s))
    with precision_scope("fp32"):
        for b in (1, 16, 64, 0):
            got = cpu.score_dense(qn.weights, qn.biases, qn.config, q, scales=s, block_size=b or None)
            assert_close(got, ref, FP32_TOL)
        from engine import _C
        from engine.native_args import qnet_args, to_numpy

        ids = np.arange(199, -1, -3, dtype=np.int64)
        out = np.zeros(ids.shape, np.float32)
        _C.cpu_score_gather_query(**qnet_args(qn.weights, qn.biases, qn.config), q=1, vectors=to_numpy(q),
                                  ids=ids, out=out, scales=s.numpy())
        assert_close(torch.from_numpy(out), ref[1, ids], FP32_TOL)


@cpu_ok
def test_kernels_refuse_bad_scales():
    qn = make_qnet(1, 8, 1)
    q, s = quant.quantize(make_vectors(10, 8), "int8")
    w, b, c = qn.weights, qn.biases, qn.config
    with pytest.raises(ValueError, match="need scales"):
        cpu.score_dense(w, b, c, q)
    with pytest.raises(ValueError, match="int8 / float8_e4m3 vectors only"):
        cpu.score_dense(w, b, c, torch.ones(10, 8), scales=s)
    with pytest.raises(ValueError, match="dimension 0"):
        cpu.exact_topk(w, b, c, q, 3, scales=s[:5])
    with pytest.raises(TypeError, match="float32"):
        cpu.score_gather(w, b, c, q, torch.zeros(1, 2, dtype=torch.int64), scales=s.double())
    with pytest.raises(ValueError, match="need their per-row scales"):
        torch_ref.score_dense(w, b, c, q)
    with pytest.raises(ValueError, match="only"):
        torch_ref.score_gather(w, b, c, torch.ones(10, 8), torch.zeros(1, 2, dtype=torch.int64), scales=s)
    with pytest.raises(ValueError, match="need their per-row scales"):
        engine.score(qn, q)
    with pytest.raises(TypeError, match="unsupported dtype"):
        engine.score(qn, q.to(torch.int16))


@cpu_ok
@pytest.mark.parametrize("dt", QTYPES)
def test_linear_scans_dequantise(dt):
    from engine import _C

    n, d = 300, 40
    q, s = quant.quantize(make_vectors(n, d), dt)
    xh = quant.dequantize(q, s)
    w = torch.randn(2, d)
    raw = q.view(torch.uint8).numpy() if dt == torch.float8_e4m3fn else q.numpy()
    ref = w @ xh.T  # (2, n)
    sc, ids = _C.graph_linear_topk(raw, w.numpy(), 10, 2, scales=s.numpy())
    top = ref.topk(10, dim=1)
    assert_close(torch.from_numpy(sc), top.values, 1e-5)
    rows = np.stack([np.random.default_rng(i).permutation(n)[:50] for i in range(2)]).astype(np.int64)
    sc2, ids2 = _C.graph_rows_topk(raw, rows, w.numpy(), 5, 2, scales=s.numpy())
    sub = torch.gather(ref, 1, torch.from_numpy(rows))
    assert_close(torch.from_numpy(sc2), sub.topk(5, dim=1).values, 1e-5)
    # A row's dot is the same bits in the full scan and in the shortlist re-rank.
    full = dict(zip(ids[0].tolist(), sc[0].tolist()))
    again, ids3 = _C.graph_rows_topk(raw, ids[:1].copy(), w[:1].numpy(), 10, 1, scales=s.numpy())
    assert all(full[i] == v for i, v in zip(ids3[0].tolist(), again[0].tolist()))


# ----------------------------------------------------------------------------- Index
@pytest.mark.parametrize("storage", ["int8", "float8_e4m3"])
def test_index_storage_save_load(tmp_path, storage):
    x = make_vectors(500, 32, dtype=torch.float16)
    idx = Index.from_vectors(x, [f"d{i}" for i in range(500)], storage=storage)
    assert idx.storage == storage and idx.scales.shape == (500,)
    assert idx.vectors_nbytes == 500 * 32 + 500 * 4
    q, s = quant.quantize(x, storage)
    assert torch.equal(idx.vectors.view(torch.uint8), q.view(torch.uint8)) and torch.equal(idx.scales, s)
    idx.save(tmp_path / "i")
    m = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert m["version"] == 3 and m["dtype"] == storage and m["files"]["scales.f32.bin"]["shape"] == [500]
    j = Index.load(tmp_path / "i", verify=True)
    assert j.dtype == idx.dtype and torch.equal(j.vectors.view(torch.uint8), idx.vectors.view(torch.uint8))
    assert torch.equal(j.scales, idx.scales)
    j2 = Index.load(tmp_path / "i", mmap=False, populate=True)
    assert torch.equal(j2.scales, idx.scales)
    # to(): dequantise, requantise, and float -> quantised equals from_vectors.
    f = j.to(dtype=torch.float32)
    assert f.scales is None and torch.equal(f.vectors, quant.dequantize(q, s))
    assert torch.equal(Index.from_vectors(x).to(dtype=storage).scales, s)
    other = "float8_e4m3" if storage == "int8" else "int8"
    assert j.to(dtype=other).storage == other
    # A tampered scales file is caught by verify; a missing one by the manifest check.
    p = tmp_path / "i" / "scales.f32.bin"
    raw = bytearray(p.read_bytes())
    raw[0] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(engine.storage.IndexFormatError, match="SHA-256"):
        Index.load(tmp_path / "i", verify=True)
    m["files"].pop("scales.f32.bin")
    (tmp_path / "i" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(engine.storage.IndexFormatError, match="scales"):
        Index.load(tmp_path / "i")


def test_index_bad_input():
    q, s = quant.quantize(make_vectors(10, 4), "int8")
    with pytest.raises(ValueError, match="need their per-row scales"):
        Index.from_vectors(q)
    with pytest.raises(ValueError, match="finite and non-negative"):
        Index.from_vectors(q, scales=s * float("nan"))
    with pytest.raises(ValueError, match="storage must be one of"):
        Index.from_vectors(make_vectors(10, 4), storage="int4")
    x = make_vectors(10, 4)
    x[5, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Index.from_vectors(x, storage="int8")
    bad = torch.zeros(10, 4, dtype=torch.uint8)
    bad[2, 1] = 0x7F  # float8 e4m3fn NaN
    with pytest.raises(ValueError, match="NaN"):
        Index.from_vectors(bad.view(torch.float8_e4m3fn), scales=torch.ones(10))


@cpu_ok
@pytest.mark.parametrize("storage", ["int8", "float8_e4m3"])
def test_exact_and_graph_search_on_quantised_index(tmp_path, storage):
    x = engine.synthetic.vectors(3000, 64, seed=3)
    qn = engine.synthetic.qnets(4, [64, 64, 64, 1], seed=5)
    idx = Index.from_vectors(x, storage=storage)
    flat = Index.from_vectors(quant.dequantize(idx.vectors, idx.scales))  # the values it stands for
    with precision_scope("fp32"):
        ref = flat.search(qn, 10, backend="torch")
        for be in ("cpu", "torch"):
            got = idx.search(qn, 10, backend=be)
            assert torch.equal(got.ids, ref.ids), be
            assert_close(got.scores, ref.scores, FP32_TOL)
        got = idx.search(qn, 10, backend="cpu", block_size=999)
        assert torch.equal(got.ids, ref.ids)
    idx.build_graph(16)
    idx.save(tmp_path / "g")
    idx = Index.load(tmp_path / "g")
    with precision_scope("fp32"):
        for preset in ("default", "paper"):
            g = idx.search(qn, 10, mode="graph", preset=preset)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g.ids.tolist(), ref.ids.tolist())])
            assert recall >= 0.9, (preset, recall)
            # Graph search returns exact scores of the rows it found.
            s = torch_ref.score_gather(qn.weights, qn.biases, qn.config, idx.vectors, g.ids, scales=idx.scales)
            assert_close(g.scores, s, FP32_TOL)
    with pytest.raises(ValueError, match="native implementation only"):
        idx.search(qn, 10, mode="graph", impl="torch")


def test_backend_without_scales_is_refused():
    class NoScales:
        name = "old"

        def score_dense(self, weights, biases, config, vectors, out=None):
            raise AssertionError("must not be called")

        def score_gather(self, weights, biases, config, vectors, ids, out=None):
            raise AssertionError("must not be called")

    assert not backends_mod.takes_scales(NoScales())
    assert backends_mod.takes_scales(backends_mod.get_backend("torch", torch.device("cpu")))
    with pytest.raises(ValueError, match="cannot search torch.int8"):
        backends_mod.check_storage(NoScales(), torch.int8)
    backends_mod.check_storage(NoScales(), torch.float16)  # float storage needs nothing


def test_cli_build_storage(tmp_path, capsys):
    from engine.cli import main

    np.save(tmp_path / "v.npy", make_vectors(200, 16).numpy())
    assert main(["build", str(tmp_path / "a"), "--vectors", str(tmp_path / "v.npy"), "--storage", "int8"]) == 0
    a = Index.load(tmp_path / "a", verify=True)
    assert a.storage == "int8" and torch.equal(a.scales, quant.quantize(make_vectors(200, 16), "int8")[1])
    assert main(["build", str(tmp_path / "b"), "--synthetic", "300", "--dim", "16", "--storage",
                 "float8_e4m3"]) == 0
    b = Index.load(tmp_path / "b", verify=True)
    ref = quant.quantize(engine.synthetic.vectors(300, 16), "float8_e4m3")
    assert torch.equal(b.vectors.view(torch.uint8), ref[0].view(torch.uint8)) and torch.equal(b.scales, ref[1])
    assert main(["build", str(tmp_path / "c"), "--synthetic", "10", "--storage", "int8", "--dtype", "float16"]) != 0
    assert "disagree" in capsys.readouterr().err


@cpu_ok
@pytest.mark.parametrize("d", [16, 37])
def test_every_fp8_byte_every_isa(restore_isa, d):
    """Every finite float8 e4m3fn byte (subnormals, both signs) converts exactly on every
    ISA, in the SIMD body (d = 16) and the scalar tail (d = 37), in the scoring kernels and
    the linear scans."""
    from engine import _C

    b = torch.arange(256, dtype=torch.uint8)
    b = b[(b & 0x7F) != 0x7F]  # the two NaN bytes are refused before any kernel
    n = -(-b.numel() // d)
    raw = torch.zeros(n * d, dtype=torch.uint8)
    raw[: b.numel()] = b
    x = raw.view(torch.float8_e4m3fn).reshape(n, d)
    s = torch.full((n,), 0.5)
    want = x.float() * 0.5
    # One q-net, no hidden layer, output weights 1: the score is the sum of the row.
    qn = QNet([torch.ones(1, d, 1)], [], QNetConfig())
    eye = torch.eye(d)
    for name in isas():
        cpu.set_isa(name)
        for j in range(d):
            sc, ids = _C.graph_linear_topk(raw.view(n, d).numpy(), eye[j : j + 1].numpy(), n, 1, scales=s.numpy())
            got = torch.empty(n)
            got[torch.from_numpy(ids[0])] = torch.from_numpy(sc[0])
            assert torch.equal(got, want[:, j]), (name, j)
        with precision_scope("fp32"):
            got = cpu.score_dense(qn.weights, qn.biases, qn.config, x, scales=s)
        assert_close(got[0], want.sum(1), 1e-6)


def test_storage_conversion_keeps_tombstones():
    x = engine.synthetic.vectors(200, 16, seed=3)
    idx = Index.from_vectors(x)
    idx.deleted = torch.zeros(200, dtype=torch.bool)
    idx.deleted[::5] = True
    for dtype in ("int8", torch.float16):
        out = idx.to(dtype=dtype)
        assert out.deleted is idx.deleted
        back = out.to(dtype=torch.float32)
        assert back.deleted is idx.deleted
        assert not set(back.search(engine.synthetic.qnets(2, [16, 8, 1], seed=1), 200).ids.flatten().tolist()) \
            & set(range(0, 200, 5))
