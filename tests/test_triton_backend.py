"""Triton fused q-net kernels against the PyTorch reference.

On a CPU-only machine the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``,
set by conftest.py before anything imports triton) on CPU tensors; with
``TRITON_INTERPRET=0`` and a GPU the same tests run compiled on CUDA tensors. Shapes are
small and ragged (widths not multiples of the 16-wide interpreter tiles, partial tiles).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from engine import scoring
from engine.backends import availability, get_backend, torch_ref
from engine.qnet import QNet
from engine.qnet_config import QNetConfig

ok, why = availability("triton")
if not ok:
    pytest.skip(f"triton backend unavailable: {why}", allow_module_level=True)

from engine.backends import triton as tb  # noqa: E402
from engine.backends import topk_keys  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cpu" if INTERPRET else "cuda")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("TRITON_INTERPRET is off and there is no CUDA device", allow_module_level=True)

# Tolerance relative to the largest reference score: fp32 is exact up to summation order;
# fp16/bf16 round the activations at every layer as any half-precision kernel must.
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def make_qnet(Q, dims, dtype, config=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * 0.5 for b in dims[1:-1]]
    return QNet([w.to(DEVICE, dtype) for w in ws], [b.to(DEVICE, dtype) for b in bs],
                config or QNetConfig())


def vectors(n, d, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(DEVICE, dtype)


def assert_close(got, ref, dtype):
    scale = max(1.0, float(ref.abs().max()))
    err = float((got.float() - ref.float()).abs().max())
    assert err <= TOL[dtype] * scale, f"max error {err} > {TOL[dtype]} x {scale}"


def test_available_and_supports():
    assert tb.is_available()[0]
    assert tb.supports(DEVICE)


# Every (L, d) in fp32, and a spread of them in the half types.
SHAPES = [(L, d, torch.float32) for L in (1, 2, 3) for d in (16, 32, 48)] + [
    (1, 48, torch.float16), (2, 32, torch.float16), (3, 48, torch.bfloat16), (2, 16, torch.bfloat16),
]


@pytest.mark.parametrize("L,d,dtype", SHAPES)
def test_dense_matches_reference(L, d, dtype):
    Q = 3 if L != 2 else 1
    q = make_qnet(Q, [d] * (L + 1) + [1], dtype, seed=L * 100 + d)
    v = vectors(37, d, dtype)  # 37 = two full 16-row tiles and a ragged one
    got = scoring.score(q, v, backend="triton")
    ref = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    assert got.shape == (Q, 37) and got.dtype == torch.float32
    assert_close(got, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_gather_matches_reference(dtype, id_dtype):
    q = make_qnet(3, [48, 48, 48, 1], dtype, seed=7)
    v = vectors(29, 48, dtype)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 29, (3, 21), generator=g).to(DEVICE, id_dtype)  # repeats included
    got = scoring.score_gather(q, v, ids, backend="triton")
    ref = torch_ref.score_gather(q.weights, q.biases, q.config, v, ids)
    assert_close(got, ref, dtype)


@pytest.mark.parametrize("config,dims", [
    (QNetConfig(residual_on_last=True), [32, 32, 32, 1]),
    (QNetConfig(layer_norm=False), [32, 32, 32, 1]),
    (QNetConfig(layer_norm_before_residual=False), [32, 32, 32, 1]),
    (QNetConfig(activation="identity", eps=1e-3), [32, 32, 32, 1]),
    (QNetConfig(residual=False), [40, 24, 56, 1]),  # widths change from layer to layer
    (QNetConfig(), [20, 1]),  # L = 0: the output dot alone
])
def test_converter_flags_and_widths(config, dims):
    q = make_qnet(2, dims, torch.float32, config, seed=11)
    v = vectors(19, dims[0], torch.float32)
    ref = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    assert_close(scoring.score(q, v, backend="triton"), ref, torch.float32)
    ids = torch.arange(19, device=DEVICE).flip(0).repeat(2, 1)
    assert_close(scoring.score_gather(q, v, ids, backend="triton"), ref.flip(1), torch.float32)


def test_out_argument_and_strided_vectors():
    q = make_qnet(2, [32, 32, 1], torch.float32, seed=5)
    big = vectors(20, 64, torch.float32)
    v = big[:, :32]  # row stride 64
    out = torch.full((2, 20), 7.0, device=DEVICE)
    got = scoring.score(q, v, backend="triton", out=out)
    assert got is out
    assert_close(out, torch_ref.score_dense(q.weights, q.biases, q.config, v.contiguous()), torch.float32)


def _ref_topk(q, v, k):
    s = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    ss, si = torch.sort(s, dim=1, descending=True, stable=True)
    return ss[:, :k], si[:, :k]


@pytest.mark.parametrize("k", [1, 5, 16, 20])  # below, at and above the 16-row tile
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_topk_matches_reference(k, dtype):
    q = make_qnet(3, [32, 32, 32, 1], dtype, seed=k)
    v = vectors(45, 32, dtype)
    s, i = tb.exact_topk(q.weights, q.biases, q.config, v, k)
    assert s.shape == (3, k) and i.dtype == torch.int64
    # Ids must agree with the kernel's own scores: compare the scores of the chosen ids
    # with the reference, and the chosen set with the reference's where scores are apart.
    rs, ri = _ref_topk(q, v, k)
    assert_close(s, rs, dtype)
    full = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    assert_close(torch.gather(full, 1, i), rs, dtype)
    if dtype == torch.float32:
        assert torch.equal(i, ri)
    assert bool((s[:, :-1] >= s[:, 1:]).all())


def test_fused_topk_ties_and_padding():
    # Small integers: every score is exact whatever the summation order, so equal
    # vectors give equal scores and only the tie rule decides their order.
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-3, 4, (2, 16, 1), generator=g).float().to(DEVICE)
    q = QNet([w], [])
    base = torch.randint(-2, 3, (6, 16), generator=g).float().to(DEVICE)
    v = torch.cat([base, base, base[:1]])  # every score appears at least twice
    s, i = tb.exact_topk(q.weights, q.biases, q.config, v, 20)  # k > n = 13
    rs, ri = _ref_topk(q, v, 13)
    assert torch.equal(i[:, :13], ri), "ties must go to the lower index"
    assert torch.all(i[:, 13:] == -1) and torch.all(torch.isinf(s[:, 13:]))
    assert torch.equal(s[:, :13], rs)


def test_exact_search_routes_to_fused_scan():
    from engine.search.exact import exact_search

    q = make_qnet(1, [16, 16, 16, 1], torch.float32, seed=9)
    v = vectors(50, 16, torch.float32)
    s, i = exact_search(q, v, 7, backend="triton")
    rs, ri = _ref_topk(q, v, 7)
    assert torch.equal(i, ri)
    assert torch.allclose(s, rs, atol=1e-5)


def test_topk_keys_roundtrip():
    s = torch.tensor([[1.5, -2.0, 0.0, -0.0, 3.0, 1.5, -1e30, 1e-40]])
    i = torch.arange(8).unsqueeze(0)
    keys = topk_keys.encode(s, i)
    ds, di = topk_keys.decode(keys)
    assert torch.equal(di, i) and torch.equal(ds, s + 0.0)
    top_s, top_i = topk_keys.finish(topk_keys.merge_topk(None, keys, 5), 10)
    assert top_i.tolist() == [[4, 0, 5, 7, 2, -1, -1, -1, -1, -1]]
    assert top_s[0, 0] == 3.0 and torch.isinf(top_s[0, 5:]).all()


def test_bad_k_raises():
    q = make_qnet(1, [16, 1], torch.float32)
    v = vectors(4, 16, torch.float32)
    with pytest.raises(ValueError, match="k must be a positive int"):
        tb.exact_topk(q.weights, q.biases, q.config, v, 0)


def test_auto_never_picks_triton_on_cpu():
    # The interpreter is for tests: automatic choice on CPU tensors stays on CPU backends.
    assert get_backend("auto", torch.device("cpu")).name != "triton"
