"""Compressed document storage in the Triton kernels: int8 and float8_e4m3fn vectors with
float32 per-row scales, scored by the fused small-tile kernels (dense, gather, fused
top-k) and the layer-by-layer GEMMs, against the PyTorch reference on the dequantized
values (``data.float() * scales[:, None]``).

Tolerance: the reference sees exactly the values the kernels stand for, so the only
differences are the kernels' own roundings: relative to the largest reference score,
1e-5 for float32 q-nets and 3e-2 for bfloat16 ones (tests/kernel_cases.TOL). Zero rows
(scale 0) must score exactly like a zero vector.

Runs under ``TRITON_INTERPRET=1`` on the CPU (conftest.py), compiled on a GPU otherwise.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from engine.backends import torch_ref
from engine.qnet_config import QNetConfig
from kernel_cases import INTERPRET, TOL, assert_close, make_ids, make_qnet, triton_device

DEVICE = triton_device()

from engine.backends import triton as tb  # noqa: E402

QDTYPES = (torch.int8, torch.float8_e4m3fn)
QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
DTYPES = (torch.float32, torch.bfloat16)
SHAPES = [(1, 16, 1), (2, 40, 37), (3, 21, 70), (0, 24, 33)]
if os.environ.get("HYPENCODER_KERNEL_GRID", "full") == "quick":  # fewer compilations on a GPU check
    DTYPES = (torch.bfloat16,)
    SHAPES = [(3, 21, 70), (0, 24, 33)]
PATHS = {"tile": (("HYPENCODER_TRITON_DENSE", "tile"),),
         "layers": (("HYPENCODER_TRITON_DENSE", "layers"), ("HYPENCODER_TRITON_TMA", "0"))}


def quantize(x: torch.Tensor, dtype):
    """``(data, scales)`` per the storage contract: symmetric, scale = max|row| / qmax,
    0 for an all-zero row."""
    x = x.float()
    scales = x.abs().amax(dim=1) / QMAX[dtype]
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    y = x / safe[:, None]
    data = y.round().clamp(-127, 127).to(torch.int8) if dtype == torch.int8 else y.to(dtype)
    return data, scales


def dequantized(data, scales):
    return data.float() * scales[:, None]


def make_quantized(n, d, dtype, zero_rows=(), seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 2  # per-row magnitudes
    for r in zero_rows:
        x[r] = 0
    data, scales = quantize(x, dtype)
    return data.to(DEVICE), scales.to(DEVICE)


def reference_dense(q, data, scales):
    return torch_ref.score_dense(q.weights, q.biases, q.config, dequantized(data, scales))


def set_path(monkeypatch, path):
    for var, value in PATHS[path]:
        monkeypatch.setenv(var, value)


import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from engine.kernels.doc_decode import decode_rows  # noqa: E402


@triton.jit
def decode_kernel(src, dst, FP8: tl.constexpr):
    i = tl.arange(0, 256)
    tl.store(dst + i, decode_rows(tl.load(src + i), FP8))


def test_fp8_decoder_matches_torch_on_every_code():
    """Every finite e4m3 code (normals, subnormals, both zeros) decodes to torch's value."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    out = torch.empty(256, device=DEVICE)
    decode_kernel[(1,)](codes.to(DEVICE), out, FP8=True)
    want = codes.view(torch.float8_e4m3fn).float()
    finite = torch.isfinite(want)
    assert finite.sum() == 254  # 0x7f and 0xff are NaN, never stored
    assert torch.equal(out.cpu()[finite], want[finite])
    ints = torch.arange(-128, 128, dtype=torch.int32).to(torch.int8)
    decode_kernel[(1,)](ints.to(DEVICE), out, FP8=False)
    assert torch.equal(out.cpu(), ints.float())


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L,d,n", SHAPES)
def test_dense(path, qdtype, dtype, L, d, n, monkeypatch):
    set_path(monkeypatch, path)
    q = make_qnet(2, [d] * (L + 1) + [1], dtype, DEVICE, seed=L + d)
    data, scales = make_quantized(n, d, qdtype, zero_rows=(0, n - 1) if n > 2 else ())
    got = tb.score_dense(q.weights, q.biases, q.config, data, scales=scales)
    ref = reference_dense(q, data, scales)
    assert got.shape == (2, n) and got.dtype == torch.float32
    assert_close(got, ref, dtype)
    zero = torch_ref.score_dense(q.weights, q.biases, q.config, torch.zeros(1, d, device=DEVICE))
    if n > 2:  # a zero row (scale 0) scores as the zero vector
        assert torch.allclose(got[:, 0].cpu(), zero[:, 0].cpu(), atol=TOL[dtype] * 4)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("config", [QNetConfig(layer_norm_before_residual=False), QNetConfig(residual=False),
                                    QNetConfig(residual_on_last=True, activation="identity")],
                         ids=["residual-first", "no-residual", "residual-last-identity"])
def test_dense_first_layer_residual_modes(path, qdtype, config, monkeypatch):
    """The first layer's residual reads the documents: scaled whichever side of the norm."""
    set_path(monkeypatch, path)
    q = make_qnet(2, [32, 32, 32, 1], torch.float32, DEVICE, config, seed=5)
    data, scales = make_quantized(45, 32, qdtype, zero_rows=(3,))
    got = tb.score_dense(q.weights, q.biases, q.config, data, scales=scales)
    assert_close(got, reference_dense(q, data, scales), torch.float32)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("id_dtype", (torch.int32, torch.int64), ids=["i32", "i64"])
def test_gather(qdtype, dtype, id_dtype):
    q = make_qnet(3, [24, 24, 24, 1], dtype, DEVICE, seed=2)
    data, scales = make_quantized(60, 24, qdtype, zero_rows=(7,))
    ids = make_ids(3, 37, 60, id_dtype, DEVICE)
    ids[0, :3] = 7  # the zero row, repeated
    got = tb.score_gather(q.weights, q.biases, q.config, data, ids, scales=scales)
    ref = torch_ref.score_gather(q.weights, q.biases, q.config, dequantized(data, scales), ids)
    assert got.shape == (3, 37)
    assert_close(got, ref, dtype)


@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
def test_gather_row_scales_follow_ids(qdtype):
    """Row i's scale is scales[i]: the same stored bytes under two scales score as two
    different vectors."""
    q = make_qnet(1, [16, 16, 1], torch.float32, DEVICE, seed=3)
    data, scales = make_quantized(2, 16, qdtype)
    data[1] = data[0]
    scales[1] = scales[0] * 3
    ids = torch.tensor([[1, 0, 1]], device=DEVICE)
    got = tb.score_gather(q.weights, q.biases, q.config, data, ids, scales=scales)
    ref = torch_ref.score_gather(q.weights, q.biases, q.config, dequantized(data, scales), ids)
    assert_close(got, ref, torch.float32)
    assert got[0, 0] == got[0, 2] and got[0, 0] != got[0, 1]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("qdtype", QDTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("k", (1, 5, 20))
def test_exact_topk(path, qdtype, k, monkeypatch):
    set_path(monkeypatch, path)
    monkeypatch.setattr(tb, "_MIN_BLOCK", 1)
    monkeypatch.setattr(tb, "_LAYERS_TOPK_SCORES", 1)
    q = make_qnet(2, [16, 16, 16, 1], torch.float32, DEVICE, seed=9)
    data, scales = make_quantized(75, 16, qdtype, zero_rows=(10, 11))
    s, i = tb.exact_topk(q.weights, q.biases, q.config, data, k, block_size=32, scales=scales)  # 3 blocks
    ref = reference_dense(q, data, scales)
    rs, ri = torch.sort(ref, dim=1, descending=True, stable=True)
    assert torch.equal(i.cpu(), ri[:, :k].cpu())
    assert torch.allclose(s.cpu(), rs[:, :k].cpu(), atol=1e-5)


def test_exact_topk_more_than_n():
    q = make_qnet(1, [16, 16, 1], torch.float32, DEVICE, seed=4)
    data, scales = make_quantized(5, 16, torch.int8)
    s, i = tb.exact_topk(q.weights, q.biases, q.config, data, 8, scales=scales)
    assert i[0, 5:].tolist() == [-1, -1, -1] and torch.isinf(s[0, 5:]).all()
    assert sorted(i[0, :5].tolist()) == [0, 1, 2, 3, 4]


def test_strided_scales_and_vectors():
    """A column slice of the stored data and a strided scales view read right."""
    q = make_qnet(1, [16, 16, 1], torch.float32, DEVICE, seed=6)
    data, scales = make_quantized(20, 16, torch.int8)
    wide = torch.zeros(20, 40, dtype=torch.int8, device=DEVICE)
    wide[:, 5:21] = data
    sc2 = torch.zeros(40, device=DEVICE)
    sc2[::2] = scales
    got = tb.score_dense(q.weights, q.biases, q.config, wide[:, 5:21], scales=sc2[::2])
    assert_close(got, reference_dense(q, data, scales), torch.float32)


Q1 = make_qnet(1, [16, 16, 1], torch.float32, DEVICE, seed=7)
DATA, SCALES = make_quantized(10, 16, torch.int8)


def _call(fn, vectors, scales):
    if fn == "dense":
        return tb.score_dense(Q1.weights, Q1.biases, Q1.config, vectors, scales=scales)
    if fn == "gather":
        ids = torch.zeros(1, 3, dtype=torch.int64, device=DEVICE)
        return tb.score_gather(Q1.weights, Q1.biases, Q1.config, vectors, ids, scales=scales)
    return tb.exact_topk(Q1.weights, Q1.biases, Q1.config, vectors, 3, scales=scales)


@pytest.mark.parametrize("fn", ("dense", "gather", "topk"))
@pytest.mark.parametrize("vectors,scales,exc,match", [
    (DATA, None, ValueError, "int8 vectors need scales"),
    (DATA.float(), SCALES, ValueError, "only for int8 or float8_e4m3fn"),
    (DATA, SCALES.double(), ValueError, "scales must be float32"),
    (DATA, SCALES[:9], ValueError, r"shape \(10,\)"),
    (DATA, SCALES[:, None], ValueError, r"shape \(10,\)"),
    (DATA, SCALES.tolist(), TypeError, "must be a torch.Tensor"),
    (DATA, SCALES.to("meta"), ValueError, "scales are on meta"),
], ids=["missing", "float-vectors", "float64", "short", "2d", "list", "device"])
def test_scales_errors(fn, vectors, scales, exc, match):
    with pytest.raises(exc, match=match):
        _call(fn, vectors, scales)


def test_layers_graph_replay_keys_on_scales(monkeypatch):
    """The layer scan's CUDA-graph replay (a stand-in capture here, as in
    test_triton_backend.py) replays only for the same stored rows and the same scales:
    new scales over the same bytes are another corpus."""
    import collections

    from engine.kernels import qnet_layers

    monkeypatch.setattr(qnet_layers, "GRAPH_MIN_ROWS", 1)
    monkeypatch.setattr(qnet_layers, "graphs_enabled", lambda device: True)
    monkeypatch.setattr(qnet_layers, "_GRAPHS", collections.OrderedDict())
    captured = []
    monkeypatch.setattr(qnet_layers, "_capture", lambda fn: captured.append(fn) or fn)
    q = make_qnet(2, [16, 16, 16, 1], torch.float32, DEVICE, seed=12)
    data, scales = make_quantized(40, 16, torch.float8_e4m3fn)
    other = scales * 2
    for sc, n_captures in ((scales, 1), (scales, 1), (other, 2)):
        out = torch.full((2, 40), float("nan"), device=DEVICE)
        qnet_layers.score_dense(q.weights, q.biases, q.config, data, out, sc)
        assert_close(out, reference_dense(q, data, sc), torch.float32)
        assert len(captured) == n_captures
