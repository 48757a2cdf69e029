"""CUDA C++ fused q-net kernels against the PyTorch reference (needs a GPU; the kernels
are compiled at the first test, which takes a minute or two)."""

import pytest
import torch

from engine import scoring
from engine.backends import availability, torch_ref
from engine.qnet import QNet
from engine.qnet_config import QNetConfig

ok, why = availability("cuda")
if not ok:
    pytest.skip(f"CUDA backend unavailable here: {why}", allow_module_level=True)

from engine.backends import cuda as cb  # noqa: E402

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")
TOL = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}


def make_qnet(Q, dims, dtype, config=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, a, b, generator=g) / a**0.5 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) * 0.5 for b in dims[1:-1]]
    return QNet([w.to(DEV, dtype) for w in ws], [b.to(DEV, dtype) for b in bs], config or QNetConfig())


def vectors(n, d, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(DEV, dtype)


def assert_close(got, ref, dtype):
    scale = max(1.0, float(ref.abs().max()))
    err = float((got.float() - ref.float()).abs().max())
    assert err <= TOL[dtype] * scale, f"max error {err} > {TOL[dtype]} x {scale}"


def test_extension_builds():
    ext = cb.extension()
    assert ext.choose_block_rows(True, 784, 0) in (16, 32, 64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("L,d,n", [(1, 16, 1), (2, 40, 100), (3, 48, 257), (6, 768, 1000), (0, 24, 33)])
def test_dense_matches_reference(dtype, L, d, n):
    q = make_qnet(3, [d] * (L + 1) + [1], dtype, seed=L + d)
    v = vectors(n, d, dtype)
    got = scoring.score(q, v, backend="cuda")
    assert_close(got, torch_ref.score_dense(q.weights, q.biases, q.config, v), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
def test_gather_matches_reference(dtype, id_dtype):
    q = make_qnet(4, [768] * 3 + [1], dtype, seed=3)
    v = vectors(3000, 768, dtype)
    ids = torch.randint(0, 3000, (4, 777), device=DEV, dtype=id_dtype)
    got = scoring.score_gather(q, v, ids, backend="cuda")
    assert_close(got, torch_ref.score_gather(q.weights, q.biases, q.config, v, ids), dtype)


@pytest.mark.parametrize("config,dims", [
    (QNetConfig(residual_on_last=True), [64, 64, 64, 1]),
    (QNetConfig(layer_norm=False), [64, 64, 64, 1]),
    (QNetConfig(layer_norm_before_residual=False), [64, 64, 64, 1]),
    (QNetConfig(activation="identity"), [64, 64, 64, 1]),
    (QNetConfig(residual=False), [72, 40, 100, 1]),
])
def test_converter_flags_and_widths(config, dims):
    q = make_qnet(2, dims, torch.float16, config, seed=11)
    v = vectors(123, dims[0], torch.float16)
    ref = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    assert_close(scoring.score(q, v, backend="cuda"), ref, torch.float16)


@pytest.mark.parametrize("k", [1, 10, 64, 1000])
def test_fused_topk(k):
    q = make_qnet(2, [128] * 4 + [1], torch.bfloat16, seed=k)
    v = vectors(5000, 128, torch.bfloat16)
    s, i = cb.exact_topk(q.weights, q.biases, q.config, v, k)
    full = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    rs, _ = torch.sort(full, dim=1, descending=True, stable=True)
    assert s.shape == (2, k) and bool((s[:, :-1] >= s[:, 1:]).all())
    assert_close(s, rs[:, :k], torch.bfloat16)
    assert_close(torch.gather(full, 1, i), rs[:, :k], torch.bfloat16)


def test_fused_topk_padding():
    q = make_qnet(1, [32, 32, 1], torch.float16)
    v = vectors(10, 32, torch.float16)
    s, i = cb.exact_topk(q.weights, q.biases, q.config, v, 15)
    assert torch.all(i[:, 10:] == -1) and torch.isinf(s[:, 10:]).all()
    assert sorted(i[0, :10].tolist()) == list(range(10))


def test_float32_falls_back_exactly():
    q = make_qnet(2, [32, 32, 1], torch.float32)
    v = vectors(50, 32, torch.float32)
    ref = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    assert_close(scoring.score(q, v, backend="cuda"), ref, torch.float32)


def test_auto_picks_a_measured_backend():
    from engine import backends

    q = make_qnet(2, [64, 64, 1], torch.bfloat16)
    v = vectors(4096, 64, torch.bfloat16)
    got = scoring.score(q, v)  # auto: measured once for this shape, then cached
    assert_close(got, torch_ref.score_dense(q.weights, q.biases, q.config, v), torch.bfloat16)
    assert backends.auto_choices()  # the measurement is recorded
