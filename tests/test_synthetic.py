import pytest
import torch

import engine
from engine import synthetic


def test_deterministic_and_streamed():
    a = synthetic.vectors(70_000, 32, seed=4)
    b = synthetic.vectors(70_000, 32, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, synthetic.vectors(70_000, 32, seed=5))
    chunks = list(synthetic.vector_chunks(70_000, 32, seed=4))
    assert len(chunks) == 2 and torch.equal(torch.cat(chunks), a)
    # A prefix of a larger corpus is the smaller corpus.
    assert torch.equal(synthetic.vectors(1000, 32, seed=4), a[:1000])


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_vectors_on_device(device):
    """Drawn where they are kept; the CPU device is the default's corpus bit for bit, and
    each device's corpus is deterministic, prefix-stable and MiniLM-shaped."""
    a = synthetic.vectors(9000, 64, seed=3, device=device, dtype=torch.bfloat16)
    assert a.device.type == device and a.dtype == torch.bfloat16 and a.shape == (9000, 64)
    assert torch.equal(a, synthetic.vectors(9000, 64, seed=3, device=device, dtype=torch.bfloat16))
    assert torch.equal(a[:5000], synthetic.vectors(5000, 64, seed=3, device=device, dtype=torch.bfloat16))
    if device == "cpu":
        assert torch.equal(a, synthetic.vectors(9000, 64, seed=3, dtype=torch.bfloat16))
    norms = a.float().norm(dim=1)
    assert 2.5 < float(norms.mean()) < 3.5


def test_vectors_reject_a_bad_device():
    with pytest.raises(ValueError, match="device"):
        synthetic.vectors(10, 8, device="gpu0")


def test_structure_like_minilm():
    v = synthetic.vectors(20_000, 384, seed=0)
    norms = v.norm(dim=1)
    assert 2.5 < float(norms.mean()) < 3.5          # MiniLM vectors: about 3
    assert 0.9 < float(v.mean(0).norm()) < 1.5      # shared mean direction: about 1.2
    s = torch.linalg.svdvals(v - v.mean(0)) / (len(v) ** 0.5)
    assert float(s[0] / s[200]) > 4                 # a decaying, anisotropic spectrum
    # Clustered: neighbours are much closer than random pairs.
    x = v[:2000]
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    assert float(d.min(1).values.mean()) < 0.8 * float(d[d.isfinite()].mean())


def test_qnets_scale_and_shape():
    q = synthetic.qnets(8, [384, 384, 384, 1], seed=2, dtype=torch.bfloat16)
    assert q.vector_dimensions == [384, 384, 384, 1] and q.dtype == torch.bfloat16
    for w in q.weights[:-1]:
        assert 0.6 < float(w.float().std()) < 0.8            # trained: about 0.7
    assert 0.3 < float(q.weights[-1].float().std()) < 1.2    # trained: about 0.8
    # Biases come out larger relative to the weights than trained ones (about 9 and 3 for
    # trained 3 and 1): the price of the more linear score surface that
    # bench/check_synthetic_qnets.py matched to the trained q-nets.
    assert 1.5 < float(q.biases[0].float().std()) < 15
    assert torch.equal(q.weights[1], synthetic.qnets(8, [384, 384, 384, 1], seed=2, dtype=torch.bfloat16).weights[1])


def test_qnets_hidden_scale_does_not_change_scores():
    # The rescaling to trained magnitudes is score-neutral (relu + layer norm).
    q = synthetic.qnets(3, [64, 64, 64, 1], seed=4)
    v = synthetic.vectors(200, 64)
    scaled = engine.QNet([w * 3 for w in q.weights[:-1]] + [q.weights[-1]], [b * 3 for b in q.biases])
    torch.testing.assert_close(engine.score(q, v, backend="torch"), engine.score(scaled, v, backend="torch"),
                               rtol=1e-4, atol=1e-4)
