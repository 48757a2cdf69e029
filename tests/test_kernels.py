"""Every kernel backend against the PyTorch reference over the shared grid of
tests/kernel_cases.py: dense scoring, gathers, the converter's flags and widths, and the
fused exact top-k."""

import pytest
import torch

from engine import scoring
from engine.backends import get_backend, torch_ref
from engine.qnet_config import QNetConfig
from kernel_cases import (
    DTYPES,
    FLAG_DTYPES,
    LAYOUTS,
    TOPK_KS,
    activate,
    assert_close,
    computed_dtype,
    backend_params,
    dense_cases,
    make_ids,
    make_out,
    make_qnet,
    make_vectors,
    ref_topk,
    skip_if_too_slow,
)


@pytest.mark.parametrize("kb", backend_params(lambda kb: True))
@pytest.mark.parametrize("L,d,n,dtype,layout", dense_cases())
def test_dense_matches_reference(kb, L, d, n, dtype, layout, monkeypatch):
    skip_if_too_slow(kb, d)
    dev = activate(kb, monkeypatch)
    q = make_qnet(3, [d] * (L + 1) + [1], dtype, dev, seed=L * 100 + d)
    v = make_vectors(n, d, dtype, dev, layout)
    out = make_out((3, n), dev, layout)
    got = scoring.score(q, v, backend=kb.name, out=out)
    if out is not None:
        assert got is out
    assert got.shape == (3, n) and got.dtype == torch.float32 and got.device == dev
    assert_close(got, torch_ref.score_dense(q.weights, q.biases, q.config, v.contiguous()), computed_dtype(kb, dtype))


@pytest.mark.parametrize("kb", backend_params(lambda kb: kb.gather and not kb.grid_only))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gather_matches_reference(kb, dtype, id_dtype, layout, monkeypatch):
    dev = activate(kb, monkeypatch)
    q = make_qnet(3, [48, 48, 48, 1], dtype, dev, seed=7)
    v = make_vectors(29, 48, dtype, dev, layout)
    ids = make_ids(3, 21, 29, id_dtype, dev, layout)
    out = make_out((3, 21), dev, layout)
    got = scoring.score_gather(q, v, ids, backend=kb.name, out=out)
    if out is not None:
        assert got is out
    ref = torch_ref.score_gather(q.weights, q.biases, q.config, v.contiguous(), ids)
    assert_close(got, ref, computed_dtype(kb, dtype))


@pytest.mark.parametrize("kb", backend_params(lambda kb: kb.gather and not kb.grid_only))
@pytest.mark.parametrize("dtype", [dt for dt in DTYPES if dt != torch.float32])
def test_gather_wide_deep(kb, dtype, monkeypatch):
    skip_if_too_slow(kb, 768)
    dev = activate(kb, monkeypatch)
    q = make_qnet(4, [768] * 3 + [1], dtype, dev, seed=3)
    v = make_vectors(3000, 768, dtype, dev)
    ids = make_ids(4, 777, 3000, torch.int64, dev)
    got = scoring.score_gather(q, v, ids, backend=kb.name)
    assert_close(got, torch_ref.score_gather(q.weights, q.biases, q.config, v, ids), computed_dtype(kb, dtype))


@pytest.mark.parametrize("kb", backend_params())
@pytest.mark.parametrize("dtype", FLAG_DTYPES)
@pytest.mark.parametrize("config,dims", [
    (QNetConfig(residual_on_last=True), [32, 32, 32, 1]),
    (QNetConfig(layer_norm=False), [32, 32, 32, 1]),
    (QNetConfig(layer_norm_before_residual=False), [32, 32, 32, 1]),
    (QNetConfig(activation="identity", eps=1e-3), [32, 32, 32, 1]),
    (QNetConfig(residual=False), [40, 24, 56, 1]),  # widths change from layer to layer
    (QNetConfig(), [20, 1]),  # L = 0: the output dot alone
], ids=["residual-on-last", "no-norm", "norm-after-residual", "identity", "widths", "L0"])
def test_converter_flags_and_widths(kb, dtype, config, dims, monkeypatch):
    dev = activate(kb, monkeypatch)
    q = make_qnet(2, dims, dtype, dev, config, seed=11)
    v = make_vectors(40, dims[0], dtype, dev)
    ref = torch_ref.score_dense(q.weights, q.biases, q.config, v)
    assert_close(scoring.score(q, v, backend=kb.name), ref, computed_dtype(kb, dtype))
    if kb.gather:
        ids = torch.arange(40, device=dev).flip(0).repeat(2, 1)
        assert_close(scoring.score_gather(q, v, ids, backend=kb.name), ref.flip(1), computed_dtype(kb, dtype))


@pytest.mark.parametrize("kb", backend_params(lambda kb: kb.fused_topk and not kb.grid_only))
@pytest.mark.parametrize("k", TOPK_KS)
@pytest.mark.parametrize("dtype", FLAG_DTYPES)
def test_exact_topk_matches_reference(kb, k, dtype, monkeypatch):
    dev = activate(kb, monkeypatch)
    be = get_backend(kb.name, dev)
    q = make_qnet(3, [32, 32, 32, 1], dtype, dev, seed=k)
    v = make_vectors(45, 32, dtype, dev)
    s, i = be.exact_topk(q.weights, q.biases, q.config, v, k)
    assert s.shape == (3, k) and i.dtype == torch.int64
    # The chosen ids' reference scores are the reference's best (ids may differ where
    # half-precision scores are within rounding of each other), and they are in order.
    rs, ri, full = ref_topk(q, v, k)
    assert_close(s, rs, computed_dtype(kb, dtype))
    assert_close(torch.gather(full, 1, i.cpu()), rs, computed_dtype(kb, dtype))
    if dtype == torch.float32:
        assert torch.equal(i.cpu(), ri)
    assert bool((s[:, :-1] >= s[:, 1:]).all())


@pytest.mark.parametrize("kb", backend_params(lambda kb: kb.fused_topk and not kb.grid_only))
def test_exact_topk_large_k(kb, monkeypatch):
    dev = activate(kb, monkeypatch)
    skip_if_too_slow(kb, 128)
    be = get_backend(kb.name, dev)
    q = make_qnet(2, [128] * 4 + [1], torch.bfloat16, dev, seed=4)
    v = make_vectors(5000, 128, torch.bfloat16, dev)
    s, i = be.exact_topk(q.weights, q.biases, q.config, v, 1000)
    rs, _, full = ref_topk(q, v, 1000)
    assert s.shape == (2, 1000) and bool((s[:, :-1] >= s[:, 1:]).all())
    assert_close(s, rs, torch.bfloat16)
    assert_close(torch.gather(full, 1, i.cpu()), rs, torch.bfloat16)


@pytest.mark.parametrize("kb", backend_params(lambda kb: kb.fused_topk and not kb.grid_only))
def test_exact_topk_ties_and_padding(kb, monkeypatch):
    # Small integers: every score is exact whatever the summation order, so equal
    # vectors give equal scores and only the tie rule decides their order.
    dev = activate(kb, monkeypatch)
    be = get_backend(kb.name, dev)
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-3, 4, (2, 16, 1), generator=g).float().to(dev)
    q = make_qnet(2, [16, 1], torch.float32, dev)
    q.weights[0].copy_(w)
    base = torch.randint(-2, 3, (6, 16), generator=g).float().to(dev)
    v = torch.cat([base, base, base[:1]])  # every score appears at least twice
    s, i = be.exact_topk(q.weights, q.biases, q.config, v, 20)  # k > n = 13
    rs, ri, _ = ref_topk(q, v, 13)
    assert torch.equal(i[:, :13].cpu(), ri), "ties must go to the lower index"
    assert torch.all(i[:, 13:] == -1) and torch.all(torch.isinf(s[:, 13:]))
    assert torch.equal(s[:, :13].cpu(), rs)


@pytest.mark.parametrize("kb", backend_params(lambda kb: kb.fused_topk and not kb.grid_only))
def test_exact_topk_bad_k_raises(kb, monkeypatch):
    dev = activate(kb, monkeypatch)
    be = get_backend(kb.name, dev)
    q = make_qnet(1, [16, 1], torch.float32, dev)
    v = make_vectors(4, 16, torch.float32, dev)
    with pytest.raises(ValueError, match="k must be"):
        be.exact_topk(q.weights, q.biases, q.config, v, 0)
