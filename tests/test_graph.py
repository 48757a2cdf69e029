"""Graph build and graph search: exactness against brute force and the reference
implementation of the paper's algorithm, edge cases, determinism, input checks."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
import torch

import engine
from engine.graph import native
from engine.graph.build import build_knn_graph
from engine.graph.common import entry_points

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from paper_baseline import paper_search_python  # noqa: E402

IMPLS = ["torch"] + (["native"] if native.available() else [])


def brute_knn(x: torch.Tensor, r: int) -> torch.Tensor:
    """Reference: float64 distances, self excluded, ties by lower id."""
    x = x.double()
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    out = []
    for i in range(len(x)):
        row = sorted(range(len(x)), key=lambda j: (d[i, j].item(), j))[:r]
        out.append(row)
    return torch.tensor(out)


@pytest.fixture(scope="module")
def small():
    x = engine.synthetic.vectors(600, 32, seed=5)
    idx = engine.Index.from_vectors(x).build_graph(12)
    q = engine.synthetic.qnets(6, [32, 32, 32, 1], seed=7, corpus_seed=5)
    return idx, q


def recall(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / b.numel()


# ---------------------------------------------------------------- build
def test_exact_graph_matches_brute_force():
    x = engine.synthetic.vectors(300, 16, seed=2)
    nbr, params = build_knn_graph(x, 10, method="exact", block_size=64)
    assert nbr.dtype == torch.int32 and nbr.shape == (300, 10)
    assert torch.equal(nbr.long(), brute_knn(x, 10))
    assert params["degree"] == 10 and params["method"] == "exact" and params["metric"] == "l2"


def test_exact_graph_never_lists_self_across_blocks():
    # The official batched builder drops self only in its first batch: check every block.
    x = engine.synthetic.vectors(257, 8, seed=3)
    nbr, _ = build_knn_graph(x, 5, method="exact", block_size=16)
    assert not (nbr.long() == torch.arange(257)[:, None]).any()


def test_faiss_graph_close_to_exact_and_never_self():
    x = engine.synthetic.vectors(3000, 16, seed=4)
    nbr, params = build_knn_graph(x, 8, method="faiss", nprobe=16)
    assert not (nbr.long() == torch.arange(3000)[:, None]).any()
    ref = brute_knn(x[:200], 8)  # a subset's neighbours within itself are not comparable
    exact, _ = build_knn_graph(x, 8, method="exact")
    assert recall(nbr.long(), exact.long()) > 0.9
    assert params["nlist"] > 0 and ref.shape == (200, 8)


def test_cluster_graph_close_to_exact_and_never_self():
    pytest.importorskip("faiss")
    x = engine.synthetic.vectors(4000, 32, seed=4)
    nbr, params = build_knn_graph(x, 8, method="cluster", nlist=16, nprobe=6)
    assert nbr.dtype == torch.int32 and nbr.shape == (4000, 8)
    assert not (nbr.long() == torch.arange(4000)[:, None]).any()
    assert (nbr >= 0).all()
    exact, _ = build_knn_graph(x, 8, method="exact")
    assert recall(nbr.long(), exact.long()) > 0.8
    assert params["method"] == "cluster" and params["nlist"] == 16 and params["nprobe"] == 6
    # Every cluster probed: the exact graph, ties and all.
    full, _ = build_knn_graph(x, 8, method="cluster", nlist=4, nprobe=4)
    assert torch.equal(full, exact)


@pytest.mark.parametrize("kmeans", ["torch", "faiss"])
def test_cluster_graph_kmeans_choices(kmeans):
    """Both k-means (torch: the CUDA and no-faiss path) give a close graph, exact when
    every cluster is probed; small row blocks give the same graph as one block."""
    if kmeans == "faiss":
        pytest.importorskip("faiss")
    x = engine.synthetic.vectors(3000, 24, seed=8)
    exact, _ = build_knn_graph(x, 8, method="exact")
    nbr, params = build_knn_graph(x, 8, method="cluster", nlist=12, nprobe=6, kmeans=kmeans)
    assert params["kmeans"] == kmeans
    assert not (nbr.long() == torch.arange(3000)[:, None]).any() and (nbr >= 0).all()
    assert recall(nbr.long(), exact.long()) > 0.85  # faiss and torch: about 0.9 here
    blocked, _ = build_knn_graph(x, 8, method="cluster", nlist=12, nprobe=6, kmeans=kmeans,
                                 block_size=37)
    assert recall(blocked.long(), nbr.long()) > 0.999
    full, _ = build_knn_graph(x, 8, method="cluster", nlist=5, nprobe=5, kmeans=kmeans)
    assert torch.equal(full, exact)


def test_kmeans_torch_finds_separated_clusters():
    from engine.graph.build import kmeans_torch

    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(200, 2, generator=g) for c in centers])
    cent = kmeans_torch(x, 3, niter=10, seed=1)
    # Each true center has exactly one centroid next to it.
    d = torch.cdist(centers, cent)
    assert (d.min(1).values < 0.1).all() and d.argmin(1).unique().numel() == 3


def test_cluster_graph_rejects_bad_options():
    pytest.importorskip("faiss")
    x = engine.synthetic.vectors(100, 8)
    with pytest.raises(ValueError):
        build_knn_graph(x, 4, method="cluster", nprobe=0)
    with pytest.raises(TypeError):
        build_knn_graph(x, 4, method="cluster", bogus=1)
    with pytest.raises(ValueError, match="kmeans"):
        build_knn_graph(x, 4, method="cluster", kmeans="lloyd")
    with pytest.raises(ValueError, match="train_size"):
        build_knn_graph(x, 4, method="cluster", nlist=10, train_size=5, kmeans="torch")
    from engine.graph.build import kmeans_torch

    with pytest.raises(ValueError, match="nlist"):
        kmeans_torch(x[:3].float(), 4)


def test_duplicates_are_neighbours_but_never_self():
    base = engine.synthetic.vectors(50, 8, seed=6)
    x = torch.cat([base, base[:10], base[:10]])  # docs i, 50+i, 60+i identical for i<10
    nbr, _ = build_knn_graph(x, 4, method="exact")
    for i in range(10):
        copies = {i, 50 + i, 60 + i}
        for doc in copies:
            row = nbr[doc].tolist()
            assert doc not in row
            assert set(row[:2]) == copies - {doc}  # distance 0, ties by lower id
            assert row[:2] == sorted(copies - {doc})


def test_tiny_corpus_pads_with_minus_one():
    x = engine.synthetic.vectors(3, 4, seed=1)
    nbr, _ = build_knn_graph(x, 5)
    assert nbr.shape == (3, 5)
    assert (nbr[:, 2:] == -1).all() and (nbr[:, :2] >= 0).all()
    one, _ = build_knn_graph(x[:1], 2)
    assert one.tolist() == [[-1, -1]]


def test_build_rejects_bad_input():
    x = engine.synthetic.vectors(10, 4)
    with pytest.raises(ValueError):
        build_knn_graph(x, 0)
    with pytest.raises(TypeError):
        build_knn_graph(x, 2.5)
    with pytest.raises(TypeError):
        build_knn_graph(x, True)
    with pytest.raises(ValueError):
        build_knn_graph(x, 2, method="hnsw")
    with pytest.raises(TypeError):
        build_knn_graph(x.numpy(), 2)
    with pytest.raises(TypeError):
        build_knn_graph(x, 2, method="exact", nprobe=3)


def test_graph_persists_with_params(tmp_path, small):
    idx, q = small
    idx.save(tmp_path / "i")
    back = engine.Index.load(tmp_path / "i")
    assert torch.equal(back.graph, idx.graph)
    assert back.graph_params == idx.graph_params
    a = idx.search(q, 10, mode="graph", preset="paper", num_entry_points=50)
    b = back.search(q, 10, mode="graph", preset="paper", num_entry_points=50)
    assert torch.equal(a.ids, b.ids)


# ---------------------------------------------------------------- paper preset
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("k,nc,early", [(10, 8, True), (30, 8, True), (5, 20, False)])
def test_paper_preset_matches_python_reference(small, impl, k, nc, early):
    idx, q = small
    opts = dict(num_entry_points=40, ncandidates=nc, max_iter=6, early_stop=early)
    r = idx.search(q, k, mode="graph", preset="paper", impl=impl, **opts)
    ref, st = paper_search_python(q, idx.vectors, idx.graph, entry_points(idx, 40), k,
                                  ncandidates=nc, max_iter=6, early_stop=early)
    for i, (scores, ids) in enumerate(ref):
        assert r.ids[i, : len(ids)].tolist() == ids
        torch.testing.assert_close(r.scores[i, : len(ids)], torch.tensor(scores), rtol=1e-5, atol=1e-5)
        assert (r.ids[i, len(ids):] == -1).all()
    assert r.stats["documents_scored_per_query"] == [s["documents_scored"] for s in st]


def test_paper_reference_same_with_lazy_adjacency(small):
    """The baseline's lazy neighbour lists (for graphs too large to list whole) change
    nothing."""
    from paper_baseline import LazyAdjacency

    idx, q = small
    args = (q, idx.vectors)
    full = paper_search_python(*args, idx.graph, entry_points(idx, 40), 10, ncandidates=8, max_iter=6)
    lazy = paper_search_python(*args, LazyAdjacency(idx.graph), entry_points(idx, 40), 10,
                               ncandidates=8, max_iter=6)
    assert full == lazy


def test_paper_entry_points_fixed_by_seed(small):
    idx, _ = small
    a = entry_points(idx, 100)
    assert torch.equal(a, entry_points(engine.Index(idx.vectors, graph=idx.graph, graph_params=idx.graph_params), 100))
    assert len(set(a.tolist())) == 100
    other = engine.Index(idx.vectors, graph=idx.graph, graph_params={**idx.graph_params, "seed": 1})
    assert not torch.equal(a, entry_points(other, 100))


# ---------------------------------------------------------------- default
@pytest.mark.parametrize("impl", IMPLS)
def test_default_finds_exact_top10(small, impl):
    idx, q = small
    ex = idx.search(q, 10)
    r = idx.search(q, 10, mode="graph", impl=impl, ef=32, passes=1)
    assert recall(r.ids, ex.ids) >= 0.95
    # Scores returned are the q-net's own scores of the returned documents.
    ref = engine.score_gather(q, idx.vectors, r.ids)
    torch.testing.assert_close(r.scores, ref, rtol=1e-4, atol=1e-4)
    assert r.stats["documents_scored"] < q.num_queries * len(idx) / 2


def test_default_knob_trades_work_for_recall(small):
    idx, q = small
    lo = idx.search(q, 10, mode="graph", impl="torch", ef=8, num_samples=16)
    hi = idx.search(q, 10, mode="graph", impl="torch", ef=64, num_samples=16)
    assert hi.stats["documents_scored"] > lo.stats["documents_scored"]


@pytest.mark.skipif(not native.available(), reason="C++ graph search not built")
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_native_matches_torch(small, preset):
    idx, q = small
    opts = {"num_entry_points": 60} if preset == "paper" else {"ef": 24, "passes": 2}
    a = idx.search(q, 10, mode="graph", preset=preset, impl="torch", **opts)
    b = idx.search(q, 10, mode="graph", preset=preset, impl="native", **opts)
    assert recall(a.ids, b.ids) >= 0.98  # float rounding of the two scorers may swap near-ties
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [None, 1000, 777, 64])
@pytest.mark.parametrize("m", [1, 40, 5000, 6000])
def test_linear_scan_is_the_exact_top_m(block, m):
    """Any block size gives the top m of all scores, ordered by (score desc, id asc),
    duplicate rows (equal scores) included; m beyond n gives all n."""
    from engine.graph.beam import linear_scan
    from engine.graph.common import sort_by_key

    x = engine.synthetic.vectors(5000, 24, seed=3)
    x[4000:4100] = x[10:110]  # equal scores, ordered by id
    w = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
    _, ref = sort_by_key(w @ x.T, torch.arange(5000).expand(3, -1))
    got = linear_scan(x, w, m, block=block)
    assert torch.equal(got, ref[:, : min(m, 5000)])


@pytest.mark.skipif(not native.available(), reason="C++ graph search not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("simd", [True, False])
def test_native_linear_topk_matches_torch_scan(dtype, simd):
    from engine import _C
    from engine.graph.beam import linear_scan

    x = engine.synthetic.vectors(5000, 36, seed=8, dtype=dtype)  # 36: a tail after 4 x 8 lanes
    w = torch.randn(3, 36, generator=torch.Generator().manual_seed(0))
    xs = x.view(torch.uint16) if dtype == torch.bfloat16 else x
    s, i = _C.graph_linear_topk(xs.numpy(), w.numpy(), 40, 2, simd)
    ref = w.double() @ x.double().T
    rs, _ = torch.topk(ref, 40, dim=1)
    torch.testing.assert_close(torch.from_numpy(s).double(), rs, rtol=1e-5, atol=1e-5)
    assert recall(torch.from_numpy(i), linear_scan(x.float(), w, 40)) >= 0.99
    # Threads change nothing.
    s1, i1 = _C.graph_linear_topk(xs.numpy(), w.numpy(), 40, 1, simd)
    assert np.array_equal(i, i1) and np.array_equal(s, s1)
    # Ties by lower id: a duplicated corpus keeps the first copy of each pair first.
    x2 = torch.cat([x, x]).contiguous()
    x2s = x2.view(torch.uint16) if dtype == torch.bfloat16 else x2
    _, i2 = _C.graph_linear_topk(x2s.numpy(), w.numpy(), 10, 2, simd)
    assert (i2[:, 0::2] < 5000).all() and (i2[:, 1::2] == i2[:, 0::2] + 5000).all()
    # m beyond n: the whole corpus.
    s3, _ = _C.graph_linear_topk(xs[:7].contiguous().numpy(), w.numpy(), 40, 2, simd)
    assert s3.shape == (3, 7)


@pytest.mark.skipif(not native.available(), reason="C++ graph search not built")
def test_native_linear_topk_rejects_bad_input():
    from engine import _C

    x = np.zeros((10, 4), np.float32)
    w = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError):
        _C.graph_linear_topk(x, np.zeros((2, 5), np.float32), 3, 1)
    with pytest.raises(ValueError):
        _C.graph_linear_topk(x, w, 0, 1)
    with pytest.raises(ValueError):
        _C.graph_linear_topk(x, w, 3, 0)
    with pytest.raises(TypeError):
        _C.graph_linear_topk(x.astype(np.int32), w, 3, 1)
    with pytest.raises(TypeError):
        _C.graph_linear_topk(x, w.astype(np.float64), 3, 1)
    with pytest.raises(ValueError):
        _C.graph_linear_topk(x, np.full((2, 4), np.nan, np.float32), 3, 1)
    with pytest.raises(ValueError):
        _C.graph_linear_topk(np.zeros((10, 4), np.float32)[:, ::2].copy().T, w, 3, 1)


@pytest.mark.skipif(not native.available(), reason="C++ graph search not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("simd", [True, False])
def test_native_rows_topk_matches_linear_topk(dtype, simd):
    from engine import _C

    x = engine.synthetic.vectors(3000, 36, seed=8, dtype=dtype)  # 36: a tail after 4 x 8 lanes
    xs = (x.view(torch.uint16) if dtype == torch.bfloat16 else x).numpy()
    w = torch.randn(3, 36, generator=torch.Generator().manual_seed(1)).numpy()
    s_full, i_full = _C.graph_linear_topk(xs, w, 50, 2, simd)
    # The whole corpus as the shortlist, in a different order per query: the same bits.
    g = torch.Generator().manual_seed(2)
    perm = torch.stack([torch.randperm(3000, generator=g) for _ in range(3)]).numpy()
    s_rows, i_rows = _C.graph_rows_topk(xs, perm, w, 50, 2, simd)
    assert np.array_equal(i_rows, i_full) and np.array_equal(s_rows, s_full)
    # A subset: its exact top (float64 reference), and one thread gives the same.
    sub = perm[:, :700].copy()
    s_sub, i_sub = _C.graph_rows_topk(xs, sub, w, 20, 2, simd)
    ref = torch.einsum("qsd,qd->qs", x.double()[torch.from_numpy(sub)], torch.from_numpy(w).double())
    rs, rp = torch.sort(ref, dim=1, descending=True)
    torch.testing.assert_close(torch.from_numpy(s_sub).double(), rs[:, :20], rtol=1e-5, atol=1e-5)
    assert recall(torch.from_numpy(i_sub), torch.gather(torch.from_numpy(sub), 1, rp[:, :20])) >= 0.99
    s1, i1 = _C.graph_rows_topk(xs, sub, w, 20, 1, simd)
    assert np.array_equal(i1, i_sub) and np.array_equal(s1, s_sub)
    # m beyond S: all S rows.
    assert _C.graph_rows_topk(xs, sub[:, :7].copy(), w, 40, 2, simd)[1].shape == (3, 7)


@pytest.mark.skipif(not native.available(), reason="C++ graph search not built")
def test_native_rows_topk_rejects_bad_input():
    from engine import _C

    x = np.zeros((10, 4), np.float32)
    w = np.zeros((2, 4), np.float32)
    ids = np.array([[0, 1, 2], [3, 4, 5]], np.int64)
    assert _C.graph_rows_topk(x, ids, w, 2, 1)[1].shape == (2, 2)
    with pytest.raises(ValueError, match="outside"):
        _C.graph_rows_topk(x, np.array([[0, 1, 10], [3, 4, 5]], np.int64), w, 2, 1)
    with pytest.raises(ValueError, match="outside"):
        _C.graph_rows_topk(x, np.array([[0, 1, -1], [3, 4, 5]], np.int64), w, 2, 1)
    with pytest.raises(ValueError, match="twice"):
        _C.graph_rows_topk(x, np.array([[0, 1, 2], [3, 4, 3]], np.int64), w, 2, 1)
    with pytest.raises(ValueError):  # one row of ids per query
        _C.graph_rows_topk(x, ids[:1].copy(), w, 2, 1)
    with pytest.raises(TypeError):
        _C.graph_rows_topk(x, ids.astype(np.int32), w, 2, 1)
    with pytest.raises(ValueError):
        _C.graph_rows_topk(x, ids, w, 0, 1)
    with pytest.raises(ValueError):
        _C.graph_rows_topk(x, ids, np.full((2, 4), np.inf, np.float32), 2, 1)


def test_rows_topk_torch_matches_linear_scan():
    from engine.graph.beam import linear_scan, rows_topk_torch

    # Small-integer data: every dot product is exact in float32, so the two agree exactly,
    # ties (many, with values this coarse) included.
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-4, 5, (2000, 24), generator=g).float()
    w = torch.randint(-4, 5, (5, 24), generator=g).float()
    full = linear_scan(x, w, 60, block=512)
    perm = torch.stack([torch.randperm(2000, generator=g) for _ in range(5)])
    assert torch.equal(rows_topk_torch(x, perm, w, 60, budget=24 * 2000 * 2), full)
    sub = perm[:, :300]
    ref_s = (x[sub] * w[:, None, :]).sum(-1)
    order = sorted(range(300), key=lambda j: (-ref_s[0, j].item(), sub[0, j].item()))[:25]
    assert rows_topk_torch(x, sub, w, 25)[0].tolist() == sub[0, order].tolist()


@pytest.mark.parametrize("impl", IMPLS)
def test_shortlist_of_whole_corpus_equals_full_rescan(small, impl):
    idx, q = small
    opts = dict(mode="graph", impl=impl, ef=16, passes=2)
    full = idx.search(q, 10, shortlist=0, **opts)
    whole = idx.search(q, 10, shortlist=1.0, **opts)  # S = n
    assert torch.equal(whole.ids, full.ids) and torch.equal(whole.scores, full.scores)
    assert whole.stats["documents_scored"] == full.stats["documents_scored"]
    n, Q = len(idx), q.num_queries
    assert full.stats["linear_scored"] == 2 * n * Q
    # The default shortlist: S = max(0.02 n, 8 * ef_lin) = 512 of 600 rows for pass 2.
    short = idx.search(q, 10, **opts)
    assert short.stats["linear_scored"] == (n + 512) * Q
    assert recall(short.ids, full.ids) >= 0.95


@pytest.mark.skipif(not native.available(), reason="C++ graph search not built")
def test_shortlist_native_matches_torch(small):
    idx, q = small
    # ef 8: ef_lin = 32, S = max(0.1 * 600, 8 * 32) = 256 of 600 rows: a real shortlist.
    opts = dict(mode="graph", ef=8, passes=2, shortlist=0.1)
    a = idx.search(q, 10, impl="torch", **opts)
    b = idx.search(q, 10, impl="native", **opts)
    assert recall(a.ids, b.ids) >= 0.98  # float rounding of the two scorers may swap near-ties
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    assert a.stats["linear_scored"] == b.stats["linear_scored"] == (600 + 256) * q.num_queries
    assert a.stats["linear_scored"] == b.stats["linear_scored"] == (600 + 256) * q.num_queries


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_k_larger_than_reached_is_padded(impl, preset):
    x = engine.synthetic.vectors(40, 8, seed=9)
    idx = engine.Index.from_vectors(x)
    # A graph of isolated documents: the search reaches only its starting documents.
    idx.set_graph(torch.full((40, 4), -1, dtype=torch.int32), {"seed": 0})
    q = engine.synthetic.qnets(3, [8, 8, 1], seed=1)
    opts = ({"num_entry_points": 5} if preset == "paper"
            else {"num_samples": 5, "ef": 4, "linear_search": "graph"})
    r = idx.search(q, 30, mode="graph", preset=preset, impl=impl, **opts)
    assert r.ids.shape == (3, 30) and r.scores.shape == (3, 30)
    found = (r.ids >= 0).sum(1)
    assert (found == 5).all()
    assert torch.isneginf(r.scores[:, 5:]).all() and (r.ids[:, 5:] == -1).all()
    assert (r.scores[:, :4] >= r.scores[:, 1:5]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_whole_corpus_reached_equals_exact(impl):
    x = engine.synthetic.vectors(80, 8, seed=9)
    idx = engine.Index.from_vectors(x).build_graph(79)  # complete graph
    q = engine.synthetic.qnets(4, [8, 8, 1], seed=2)
    ex = idx.search(q, 100)
    r = idx.search(q, 100, mode="graph", preset="paper", impl=impl, num_entry_points=1)
    assert torch.equal(r.ids, ex.ids)
    r = idx.search(q, 100, mode="graph", impl=impl, ef=100, num_samples=1)
    assert torch.equal(r.ids, ex.ids)


def test_duplicate_documents_search(small):
    base = engine.synthetic.vectors(200, 16, seed=3)
    x = torch.cat([base, base])  # every document twice: equal scores, ties by lower id
    idx = engine.Index.from_vectors(x).build_graph(8)
    q = engine.synthetic.qnets(3, [16, 16, 1], seed=4, corpus_seed=3)
    ex = idx.search(q, 20)
    for impl in IMPLS:
        for preset, opts in (("paper", {"num_entry_points": 400}), ("default", {"ef": 400, "num_samples": 400})):
            r = idx.search(q, 20, mode="graph", preset=preset, impl=impl, **opts)
            assert torch.equal(r.ids, ex.ids), (impl, preset)


@pytest.mark.parametrize("impl", IMPLS)
def test_same_results_every_run(small, impl):
    idx, q = small
    runs = [idx.search(q, 10, mode="graph", impl=impl, ef=16) for _ in range(3)]
    runs += [idx.search(q, 10, mode="graph", preset="paper", impl=impl, num_entry_points=50) for _ in range(2)]
    assert torch.equal(runs[0].ids, runs[1].ids) and torch.equal(runs[1].ids, runs[2].ids)
    assert torch.equal(runs[3].ids, runs[4].ids)
    # One query alone gives what it gets in a batch.
    one = engine.QNet([w[2:3] for w in q.weights], [b[2:3] for b in q.biases], q.config)
    assert torch.equal(idx.search(one, 10, mode="graph", impl=impl, ef=16).ids[0], runs[0].ids[2])


def test_stats_reported(small):
    idx, q = small
    r = idx.search(q, 10, mode="graph")
    for key in ("documents_scored", "linear_scored", "steps", "seconds", "preset", "impl"):
        assert key in r.stats
    assert r.stats["documents_scored"] == sum(r.stats["documents_scored_per_query"])
    r = idx.search(q, 10, mode="graph", preset="paper", num_entry_points=30, max_iter=1)
    assert r.stats["documents_scored"] == 30 * q.num_queries and r.stats["steps"] == 1


# ---------------------------------------------------------------- input checks
def test_search_rejects_bad_options(small):
    idx, q = small
    with pytest.raises(ValueError, match="preset"):
        idx.search(q, 10, mode="graph", preset="fast")
    with pytest.raises(TypeError, match="unknown options"):
        idx.search(q, 10, mode="graph", preset="paper", ef=10)
    with pytest.raises(ValueError):
        idx.search(q, 10, mode="graph", ef=0)
    with pytest.raises(TypeError):
        idx.search(q, 10, mode="graph", ef=3.5)
    with pytest.raises(TypeError):
        idx.search(q, 10, mode="graph", preset="paper", early_stop=1)
    with pytest.raises(ValueError):
        idx.search(q, 10, mode="graph", passes=3)
    with pytest.raises(ValueError, match="impl"):
        idx.search(q, 10, mode="graph", impl="cuda")
    with pytest.raises(ValueError, match="shortlist"):
        idx.search(q, 10, mode="graph", shortlist=-0.1)
    with pytest.raises(ValueError, match="shortlist"):
        idx.search(q, 10, mode="graph", shortlist=1.5)
    bare = engine.Index.from_vectors(idx.vectors)
    with pytest.raises(ValueError, match="build_graph"):
        bare.search(q, 10, mode="graph")


def test_device_graph_cached_until_the_graph_changes():
    from engine.graph.common import device_graph

    x = engine.synthetic.vectors(200, 16, seed=9)
    idx = engine.Index.from_vectors(x).build_graph(4)
    g = device_graph(idx, "cpu")
    assert g.dtype == torch.int64 and torch.equal(g, idx.graph.long())
    assert device_graph(idx, "cpu") is g  # made once, not per search
    idx.set_graph(torch.flip(idx.graph, [1]).contiguous(), idx.graph_params)
    g2 = device_graph(idx, "cpu")
    assert g2 is not g and torch.equal(g2, idx.graph.long())
