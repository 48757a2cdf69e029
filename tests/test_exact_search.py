import pytest
import torch

from engine.native_args import precision_scope

import engine
from engine import Index, QNet, synthetic
from engine.search import exact


def full_topk(qnets, vectors, k):
    s = engine.score(qnets, vectors, backend="torch")
    # Stable sort: equal scores in index order, as the engine promises.
    vals, order = torch.sort(s, dim=1, descending=True, stable=True)
    return vals[:, :k], order[:, :k]


@pytest.mark.parametrize("Q", [1, 64])
@pytest.mark.parametrize("n,block", [(1000, 256), (777, 100), (50, 4096)])
@pytest.mark.parametrize("k", [1, 10])
def test_exact_equals_full_topk(Q, n, block, k):
    v = synthetic.vectors(n, 32, seed=n)
    q = synthetic.qnets(Q, [32, 32, 32, 1], seed=Q, corpus_seed=n)
    idx = Index.from_vectors(v)
    r = idx.search(q, k, backend="torch", block_size=block)
    s, i = full_topk(q, v, k)
    assert torch.equal(r.ids, i)
    torch.testing.assert_close(r.scores, s)


def test_k_larger_than_n_pads():
    v = synthetic.vectors(7, 16)
    q = synthetic.qnets(3, [16, 16, 1])
    r = Index.from_vectors(v).search(q, 10, block_size=4)
    s, i = full_topk(q, v, 7)
    assert torch.equal(r.ids[:, :7], i) and (r.ids[:, 7:] == -1).all()
    assert torch.isneginf(r.scores[:, 7:]).all()
    torch.testing.assert_close(r.scores[:, :7], s)


def test_one_document():
    v = synthetic.vectors(1, 16)
    q = synthetic.qnets(2, [16, 16, 1])
    r = Index.from_vectors(v).search(q, 1)
    assert r.ids.tolist() == [[0], [0]]


def test_ties_go_to_lower_index():
    # Small integers and no layer norm: every score is exact, so equal vectors score
    # exactly equal in any block and any kernel.
    g = torch.Generator().manual_seed(0)
    v = torch.randint(-2, 3, (5, 8), generator=g).float().repeat(40, 1)  # each vector 40 times
    q = QNet([torch.randint(-2, 3, (2, 8, 8), generator=g).float(),
              torch.randint(-2, 3, (2, 8, 1), generator=g).float()],
             [torch.randint(-2, 3, (2, 8), generator=g).float()], layer_norm=False)
    for backend in ["torch"]:
        r = Index.from_vectors(v).search(q, 12, backend=backend, block_size=7)
        s, i = full_topk(q, v, 12)
        assert torch.equal(r.ids, i), backend
        best = int(i[0, 0]) % 5
        assert r.ids[0, :12].tolist()[:3] == [best, best + 5, best + 10]


def test_cpu_merge_matches_torch_merge():
    torch.manual_seed(0)
    Q, k = 5, 7
    run_s = torch.full((Q, k), float("-inf"))
    run_i = torch.full((Q, k), -1, dtype=torch.int64)
    t_s, t_i = run_s.clone(), run_i.clone()
    for base in range(0, 300, 60):
        blk = torch.randint(0, 20, (Q, 60)).float()  # many ties
        run_s, run_i = exact._merge_cpu(run_s, run_i, blk.clone(), base)
        t_s, t_i = exact._merge_torch(t_s, t_i, blk.clone(), base)
        assert torch.equal(run_s, t_s) and torch.equal(run_i, t_i)


def test_memory_mapped_corpus(tmp_path):
    synthetic.write_index(tmp_path / "i", 5000, 32, dtype=torch.bfloat16)
    idx = Index.load(tmp_path / "i")
    q = synthetic.qnets(4, [32, 32, 32, 1])
    with precision_scope("fp32"):  # the reference's arithmetic (bf16 inputs run in bf16 by default)
        r = idx.search(q, 5, block_size=1024)
    s, i = full_topk(q, synthetic.vectors(5000, 32, dtype=torch.bfloat16), 5)
    assert torch.equal(r.ids, i)


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda idx, q: idx.search(q, 0), ValueError, "k must be positive"),
        (lambda idx, q: idx.search(q, -3), ValueError, "k must be positive"),
        (lambda idx, q: idx.search(q, 2.5), TypeError, "k must be an int"),
        (lambda idx, q: idx.search(q, 2, mode="fuzzy"), ValueError, "mode"),
        (lambda idx, q: idx.search(q, 2, mode="graph"), ValueError, "build_graph"),
        (lambda idx, q: idx.search(q, 2, backend="nope"), ValueError, "unknown backend"),
        (lambda idx, q: idx.search("q", 2), TypeError, "QNet"),
        (lambda idx, q: idx.search(synthetic.qnets(1, [8, 8, 1]), 2), ValueError, "dimension mismatch"),
        (lambda idx, q: idx.search(q, 2, block_size=-1), ValueError, "block_size"),
    ],
)
def test_search_errors(call, err, match):
    idx = Index.from_vectors(synthetic.vectors(20, 16))
    q = synthetic.qnets(2, [16, 16, 1])
    with pytest.raises(err, match=match):
        call(idx, q)


def test_scoring_errors():
    q = synthetic.qnets(2, [16, 16, 1])
    v = synthetic.vectors(20, 16)
    with pytest.raises(ValueError, match="dimension mismatch"):
        engine.score(q, torch.randn(3, 8))
    with pytest.raises(TypeError, match="unsupported dtype"):
        engine.score(q, v.double())
    with pytest.raises(ValueError, match="NaN or Inf"):
        engine.score(q, torch.full((2, 16), float("inf")))
    with pytest.raises(ValueError, match="ids out of range"):
        engine.score_gather(q, v, torch.tensor([[0, 20], [1, 2]]))
    with pytest.raises(ValueError, match="ids out of range"):
        engine.score_gather(q, v, torch.tensor([[0, -1], [1, 2]]))
    with pytest.raises(TypeError, match="int32 or int64"):
        engine.score_gather(q, v, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="shape"):
        engine.score_gather(q, v, torch.zeros(3, 2, dtype=torch.int64))
    bad = v.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        engine.score_gather(q, bad, torch.tensor([[3], [1]]))
    with pytest.raises(ValueError, match="out must have shape"):
        engine.score(q, v, out=torch.empty(2, 3))


def test_gather_matches_dense():
    q = synthetic.qnets(3, [16, 16, 16, 1])
    v = synthetic.vectors(50, 16)
    ids = torch.randint(0, 50, (3, 11))
    full = engine.score(q, v, backend="torch")
    torch.testing.assert_close(engine.score_gather(q, v, ids, backend="torch"), torch.gather(full, 1, ids))
    assert engine.score_gather(q, v, torch.empty(3, 0, dtype=torch.int64)).shape == (3, 0)
    assert engine.score(q, v[:0]).shape == (3, 0)
