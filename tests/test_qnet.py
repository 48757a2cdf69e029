import math

import pytest
import torch
from safetensors.torch import load_file

import engine
from engine import QNet, QNetConfig
from spec_impl import spec_scores


def random_qnet(dims, Q=3, seed=0, dtype=torch.float32, **flags):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(Q, a, b, generator=g) / math.sqrt(a) * 2 for a, b in zip(dims[:-1], dims[1:])]
    bs = [torch.randn(Q, b, generator=g) for b in dims[1:-1]]
    return QNet([w.to(dtype) for w in ws], [b.to(dtype) for b in bs], **flags)


@pytest.mark.parametrize(
    "dims,flags",
    [
        ([768] * 7 + [1], {}),
        ([384, 384, 384, 1], {}),
        ([96, 64, 48, 1], {"residual": False}),
        ([32, 32, 32, 1], {"residual_on_last": True}),
        ([32, 32, 32, 1], {"layer_norm_before_residual": False}),
        ([32, 32, 1], {"layer_norm": False, "activation": "identity"}),
        ([40, 1], {}),
    ],
)
def test_reference_matches_spec(dims, flags):
    q = random_qnet(dims, Q=2, **flags)
    cfg = q.config
    x = torch.randn(9, dims[0])
    got = engine.score(q, x, backend="torch")
    spec_flags = {
        "residual": cfg.residual,
        "residual_on_last": cfg.residual_on_last,
        "layer_norm_on": cfg.layer_norm,
        "ln_before_residual": cfg.layer_norm_before_residual,
        "relu": cfg.activation == "relu",
    }
    want = spec_scores(q, x, **spec_flags)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_golden_scores(debian_dir):
    g = load_file(str(debian_dir / "golden.safetensors"))
    q = QNet.from_state_dict(g, prefix="qnet.")
    assert q.vector_dimensions == [384, 384, 384, 1]
    got = engine.score(q, g["doc_vectors"], backend="torch")
    torch.testing.assert_close(got, g["scores"], rtol=1e-5, atol=1e-4)
    # And the independent spec implementation agrees with the official outputs too.
    torch.testing.assert_close(spec_scores(q, g["doc_vectors"]).float(), g["scores"], rtol=1e-5, atol=1e-4)


def test_dataset_qnets_load(debian_dir):
    q = QNet.load(debian_dir / "qnets.dev64.safetensors")
    assert q.num_queries == 64 and q.dtype == torch.float16
    assert q.config == QNetConfig()


def test_save_load_roundtrip(tmp_path):
    q = random_qnet([16, 16, 8, 1], Q=4, dtype=torch.bfloat16, residual=False)
    q.save(tmp_path / "q.safetensors")
    r = QNet.load(tmp_path / "q.safetensors")
    assert r.config == q.config and r.dtype == torch.bfloat16
    for a, b in zip(q.weights + q.biases, r.weights + r.biases):
        assert torch.equal(a, b)


def test_indexing_and_to():
    q = random_qnet([8, 8, 1], Q=5)
    x = torch.randn(6, 8)
    full = engine.score(q, x)
    torch.testing.assert_close(engine.score(q[2], x), full[2:3])
    torch.testing.assert_close(engine.score(q[[4, 0]], x), full[[4, 0]])
    torch.testing.assert_close(engine.score(q[1:3], x), full[1:3])
    torch.testing.assert_close(engine.score(q[-1], x), full[4:5])
    torch.testing.assert_close(engine.score(QNet.cat([q[:2], q[2:]]), x), full)
    h = q.to(dtype=torch.float16)
    assert h.dtype == torch.float16 and h.num_queries == 5
    with pytest.raises(IndexError):
        q[5]


def test_flops():
    q = random_qnet([768] * 7 + [1], Q=1)
    assert abs(q.flops_per_document() - 7.08e6) / 7.08e6 < 0.01


@pytest.mark.parametrize(
    "make,err,match",
    [
        (lambda: QNet([torch.randn(2, 4, 4), torch.randn(2, 4, 1)], []), ValueError, "bias"),
        (lambda: QNet([torch.randn(2, 4, 4), torch.randn(2, 5, 1)], [torch.randn(2, 4)]), ValueError, "takes 5 inputs"),
        (lambda: QNet([torch.randn(2, 4, 4), torch.randn(2, 4, 2)], [torch.randn(2, 4)]), ValueError, "1 output"),
        (lambda: QNet([torch.randn(2, 4, 6), torch.randn(2, 6, 6), torch.randn(2, 6, 1)],
                      [torch.randn(2, 6), torch.randn(2, 6)]), ValueError, "residual"),
        (lambda: QNet([torch.randn(2, 4, 4), torch.randn(3, 4, 1)], [torch.randn(2, 4)]), ValueError, "queries"),
        (lambda: QNet([torch.randn(2, 4, 4).double(), torch.randn(2, 4, 1).double()], [torch.randn(2, 4).double()]), TypeError, "dtype"),
        (lambda: QNet([torch.full((2, 4, 4), float("nan")), torch.randn(2, 4, 1)], [torch.randn(2, 4)]), ValueError, "NaN"),
        (lambda: QNet([torch.randn(2, 4, 4), torch.randn(2, 4, 1)], [torch.full((2, 4), float("inf"))]), ValueError, "NaN or Inf"),
        (lambda: QNet([torch.randn(2, 4, 4), torch.randn(2, 4, 1)], [torch.randn(2, 4)], activation="gelu"), ValueError, "activation"),
        (lambda: QNet([[1.0]], []), TypeError, "torch.Tensor"),
    ],
)
def test_qnet_validation(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_non_square_without_residual_is_accepted():
    q = random_qnet([96, 64, 48, 1], residual=False)
    assert q.vector_dimensions == [96, 64, 48, 1]
