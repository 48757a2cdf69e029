import torch

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
    assert 0.3 < float(q.weights[0].float().std()) < 1.2   # trained: about 0.7
    assert 1.5 < float(q.biases[0].float().std()) < 5       # trained: about 3
    assert torch.equal(q.weights[1], synthetic.qnets(8, [384, 384, 384, 1], seed=2, dtype=torch.bfloat16).weights[1])
