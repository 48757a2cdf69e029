"""Graph build and graph search: exactness against brute force and the reference
implementation of the paper's algorithm, edge cases, determinism, input checks."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

import engine
from engine.graph import native
from engine.graph.build import build_knn_graph
from engine.graph.common import entry_points
from tests.reference.paper import paper_search_python

IMPLS = ["torch"] + (["native"] if native.availability()[0] else [])


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


def test_graph_and_codes_persist(tmp_path, small):
    idx, q = small
    idx.save(tmp_path / "i")
    back = engine.Index.load(tmp_path / "i", verify=True)
    assert torch.equal(back.graph, idx.graph)
    assert back.graph_params == idx.graph_params
    for name in engine.graph.LinearCodes.ARRAYS:
        assert torch.equal(getattr(back.codes, name), getattr(idx.codes, name)), name
    assert idx.codes.residual is not None  # built by default, and saved with the first level
    for name in engine.graph.ResidualBits.ARRAYS:
        assert torch.equal(getattr(back.codes.residual, name), getattr(idx.codes.residual, name)), name
    assert back.codes.params == idx.codes.params
    for preset, opts in (("paper", {"num_entry_points": 50}), ("default", {"ef": 16})):
        a = idx.search(q, 10, mode="graph", preset=preset, **opts)
        b = back.search(q, 10, mode="graph", preset=preset, **opts)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


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
    assert r.stats.per_query.documents_scored == [s["documents_scored"] for s in st]
    assert r.stats.impl == impl and r.stats.preset == "paper" and r.stats.candidates is None


def test_paper_reference_same_with_lazy_adjacency(small):
    """The baseline's lazy neighbour lists (for graphs too large to list whole) change
    nothing."""
    from tests.reference.paper import LazyAdjacency

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
@pytest.mark.parametrize("candidates", ["codes", "scan"])
def test_default_finds_exact_top10(small, impl, candidates):
    idx, q = small
    ex = idx.search(q, 10)
    # A short list and one pass: the beam's steps on the graph bring the recall.
    r = idx.search(q, 10, mode="graph", impl=impl, candidates=candidates, ef=8, passes=1, max_steps=2)
    assert recall(r.ids, ex.ids) >= 0.95
    # Scores returned are the q-net's own scores of the returned documents.
    ref = engine.score_gather(q, idx.vectors, r.ids)
    torch.testing.assert_close(r.scores, ref, rtol=1e-4, atol=1e-4)
    st = r.stats
    assert st.documents_scored < q.num_queries * len(idx) / 2
    assert st.impl == impl and st.backend == "cpu" and st.candidates == candidates and st.mode == "graph"
    assert st.documents_scored == sum(st.per_query.documents_scored)
    n, Q = len(idx), q.num_queries
    if candidates == "scan":
        assert st.linear_rows == n * Q and st.coded_rows == 0
    else:
        assert st.coded_rows == n * Q and 0 < st.linear_rows <= n * Q


def test_default_knob_trades_work_for_recall(small):
    idx, q = small
    lo = idx.search(q, 10, mode="graph", ef=8)
    hi = idx.search(q, 10, mode="graph", ef=64)
    assert hi.stats.documents_scored > lo.stats.documents_scored


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
@pytest.mark.parametrize("preset", ["default", "paper"])
@pytest.mark.parametrize("candidates", ["codes", "scan"])
def test_native_matches_torch(small, preset, candidates):
    idx, q = small
    opts = {"num_entry_points": 60} if preset == "paper" else {"ef": 24, "passes": 2, "candidates": candidates}
    a = idx.search(q, 10, mode="graph", preset=preset, impl="torch", **opts)
    b = idx.search(q, 10, mode="graph", preset=preset, impl="native", **opts)
    assert recall(a.ids, b.ids) >= 0.98  # float rounding of the two scorers may swap near-ties
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-4)
    for f in ("linear_rows", "coded_rows", "fallbacks"):
        assert getattr(a.stats, f) == getattr(b.stats, f), f


@pytest.mark.parametrize("impl", IMPLS)
def test_shortlist_of_whole_corpus_reranks_every_row(small, impl):
    idx, q = small
    n, Q = len(idx), q.num_queries
    r = idx.search(q, 10, mode="graph", impl=impl, candidates="scan", ef=16, passes=2, shortlist=1.0)
    assert r.stats.linear_rows == 2 * n * Q  # one scan, then every row again by the new direction
    one = idx.search(q, 10, mode="graph", impl=impl, candidates="scan", ef=16, passes=1)
    assert one.stats.linear_rows == n * Q
    # The second pass only adds documents: never worse at the top.
    assert (r.scores[:, 0] >= one.scores[:, 0]).all()


# ---------------------------------------------------------------- interface operations
@pytest.mark.parametrize("block", [None, 1000, 777, 64])
@pytest.mark.parametrize("m", [1, 40, 5000, 6000])
def test_torch_linear_topk_is_the_exact_top_m(block, m):
    """Any block size gives the top m of all scores, ordered by (score desc, id asc),
    duplicate rows (equal scores) included; m beyond n gives all n."""
    from engine.graph.common import sort_by_key
    from engine.graph.torch_impl import linear_topk

    x = engine.synthetic.vectors(5000, 24, seed=3)
    x[4000:4100] = x[10:110]  # equal scores, ordered by id
    w = torch.randn(3, 24, generator=torch.Generator().manual_seed(1))
    _, ref = sort_by_key(w @ x.T, torch.arange(5000).expand(3, -1))
    got = linear_topk(x, w, m, block=block)
    assert torch.equal(got, ref[:, : min(m, 5000)])


def _np(x):
    return (x.view(torch.uint16) if x.dtype == torch.bfloat16 else x).contiguous().numpy()


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_native_linear_and_rows_topk(dtype):
    from engine import _C
    from engine.graph.torch_impl import linear_topk

    x = engine.synthetic.vectors(5000, 36, seed=8, dtype=dtype)  # 36: a tail after the SIMD lanes
    w = torch.randn(3, 36, generator=torch.Generator().manual_seed(0))
    s, i = _C.graph_linear_topk(_np(x), w.numpy(), 40, 2)
    rs, _ = torch.topk(w.double() @ x.double().T, 40, dim=1)
    torch.testing.assert_close(torch.from_numpy(s).double(), rs, rtol=1e-5, atol=1e-5)
    assert recall(torch.from_numpy(i), linear_topk(x.float(), w, 40)) >= 0.99
    s1, i1 = _C.graph_linear_topk(_np(x), w.numpy(), 40, 1)  # threads change nothing
    assert np.array_equal(i, i1) and np.array_equal(s, s1)
    x2 = torch.cat([x, x])  # ties by lower id: the first copy of each pair first
    _, i2 = _C.graph_linear_topk(_np(x2), w.numpy(), 10, 2)
    assert (i2[:, 0::2] < 5000).all() and (i2[:, 1::2] == i2[:, 0::2] + 5000).all()
    assert _C.graph_linear_topk(_np(x[:7]), w.numpy(), 40, 2)[0].shape == (3, 7)
    # rows_topk over the whole corpus in any order: the same bits as the scan.
    g = torch.Generator().manual_seed(2)
    perm = torch.stack([torch.randperm(5000, generator=g) for _ in range(3)]).numpy()
    s_rows, i_rows = _C.graph_rows_topk(_np(x), perm, w.numpy(), 40, 2)
    assert np.array_equal(i_rows, i) and np.array_equal(s_rows, s)


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
def test_native_interface_rejects_bad_input():
    from engine import _C

    x = np.zeros((10, 4), np.float32)
    w = np.zeros((2, 4), np.float32)
    ids = np.array([[0, 1, 2], [3, 4, 5]], np.int64)
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
    with pytest.raises(ValueError, match="out of range"):
        _C.graph_rows_topk(x, np.array([[0, 1, 10], [3, 4, 5]], np.int64), w, 2, 1)
    with pytest.raises(ValueError, match="out of range"):
        _C.graph_rows_topk(x, np.array([[0, 1, -1], [3, 4, 5]], np.int64), w, 2, 1)
    with pytest.raises(ValueError, match="twice"):
        _C.graph_rows_topk(x, np.array([[0, 1, 2], [3, 4, 3]], np.int64), w, 2, 1)
    with pytest.raises(ValueError):
        _C.graph_rows_topk(x, ids[:1].copy(), w, 2, 1)
    with pytest.raises(TypeError):
        _C.graph_rows_topk(x, ids.astype(np.int32), w, 2, 1)


# ---------------------------------------------------------------- codes
def _coded(n, d, bytes_per_vector, queries, seed):
    """(vectors, their codes, `queries` random directions)."""
    x = engine.synthetic.vectors(n, d, seed=seed, dtype=torch.bfloat16)
    codes = engine.graph.build_codes(x, bytes_per_vector=bytes_per_vector)
    w = torch.randn(queries, d, generator=torch.Generator().manual_seed(seed - 6))
    return x, codes, w


@pytest.fixture(scope="module")
def coded():
    return _coded(3000, 48, 16, 4, seed=11)


def test_codes_build_respects_the_budget(coded):
    x, codes, _ = coded
    codes.check(3000, 48)
    bits = codes.bits.sum().item()
    assert bits <= 16 * 8 and codes.nsub == 32  # 128 bits in 32 sub-codes of 4
    assert codes.codes.shape == (3000 // 32 + 1, 16, 32) and codes.codes.dtype == torch.uint8
    # Widest codes on the leading (largest-variance) coordinates.
    per_coord = torch.zeros(codes.rotation.shape[1], dtype=torch.int64)
    for d_, b_ in zip(codes.dims.flatten().tolist(), codes.bits.flatten().tolist()):
        if d_ >= 0:
            per_coord[d_] = b_
    assert per_coord[0] >= per_coord[-1] and per_coord[0] == 4


def test_codes_estimate_tracks_the_inner_product(coded):
    """The table sums rank documents like (x - mean) . w: a strong correlation, and the
    exact top-10 lies inside the top 10% of the estimates."""
    x, codes, w = coded
    sums = codes.sums(codes.lut(w)).float()
    exact = (x.float() - codes.mean) @ w.T
    for q in range(4):
        c = torch.corrcoef(torch.stack([sums[q], exact[:, q]]))[0, 1]
        assert c > 0.9, c
        top = torch.topk(exact[:, q], 10).indices
        thr = torch.topk(sums[q], 300).values[-1]
        assert (sums[q][top] >= thr).float().mean() >= 0.9


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
def test_native_codes_scan_equals_torch_twin(coded):
    from engine import _C

    x, codes, w = coded
    for q in range(4):
        lut = _C.graph_codes_lut(codes.native(), 3000, w[q].numpy())
        assert np.abs(lut.astype(int) - codes.lut(w[q : q + 1])[0].numpy().astype(int)).max() <= 1
        sums = _C.graph_codes_sums(codes.codes.numpy(), lut, 3000)[:3000]
        ref = codes.sums(torch.from_numpy(lut)[None])[0]
        assert np.array_equal(sums.astype(np.int64), ref.numpy().astype(np.int64))


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
@pytest.mark.parametrize("isa", ["auto", "portable"])
def test_codes_scan_same_on_every_isa(coded, isa):
    from engine import _C
    from engine.backends import cpu

    x, codes, w = coded
    lut = _C.graph_codes_lut(codes.native(), 3000, w[0].numpy())
    ref = codes.sums(torch.from_numpy(lut)[None])[0].numpy()
    try:
        cpu.set_isa(isa)
        got = _C.graph_codes_sums(codes.codes.numpy(), lut, 3000)[:3000]
    finally:
        cpu.set_isa("auto")
    assert np.array_equal(got.astype(np.int64), ref.astype(np.int64))


@pytest.fixture(scope="module")
def coded_many():
    """Codes of 20,000 documents: three of the selection's 8,192-document chunks."""
    return _coded(20_000, 32, 8, 3, seed=12)


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
@pytest.mark.parametrize("rerank", [1, 700, 8192, 19_999])
def test_codes_selection_is_the_top_of_the_sums_on_every_isa(coded_many, rerank):
    """Across chunks and on every ISA here, the re-ranked set is exactly the top `rerank`
    table sums under (sum desc, id asc), whatever the histogram bin the cut falls in."""
    from engine import _C
    from engine.backends import cpu

    x, codes, w = coded_many
    n = 20_000
    for q in range(w.shape[0]):
        lut = _C.graph_codes_lut(codes.native(), n, w[q].numpy())
        sums = _C.graph_codes_sums(codes.codes.numpy(), lut, n)[:n].astype(np.int64)
        order = np.lexsort((np.arange(n), -sums))[:rerank]
        for isa in cpu.supported_isas():
            try:
                cpu.set_isa(isa)
                # m = rerank: the list returned is the re-ranked set itself.
                _, got = _C.graph_codes_topk(codes.native(), _np(x), w[q : q + 1].numpy(), rerank, rerank, 2)
            finally:
                cpu.set_isa("auto")
            assert set(got[0].tolist()) == set(order.tolist()), isa


@pytest.mark.parametrize("impl", IMPLS)
def test_codes_topk_exact_when_every_row_is_reranked(coded, impl):
    """With rerank = n the codes stage is brute-force inner-product search."""
    from engine.graph.common import sort_by_key
    from engine.graph.torch_impl import codes_topk

    x, codes, w = coded
    _, ref = sort_by_key(w @ x.float().T, torch.arange(3000).expand(4, -1))
    if impl == "native":
        from engine import _C

        _, got = _C.graph_codes_topk(codes.native(), _np(x), w.numpy(), 3000, 25, 2)
        got = torch.from_numpy(got)
    else:
        got = codes_topk(codes, x, w, 3000, 25)
    assert recall(got, ref[:, :25]) >= 0.99  # float32 sums in two orders may swap near-ties


def test_codes_check_rejects_damaged_arrays(coded):
    x, codes, _ = coded
    import dataclasses

    with pytest.raises(ValueError, match="documents"):
        codes.check(2999, 48)
    bad = dataclasses.replace(codes, bits=codes.bits.clone())
    bad.bits[0, 0] = 7
    with pytest.raises(ValueError, match="range"):
        bad.check(3000, 48)
    bad = dataclasses.replace(codes, levels=codes.levels.clone())
    bad.levels[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        bad.check(3000, 48)
    with pytest.raises(ValueError, match="bytes_per_vector"):
        engine.graph.build_codes(x, bytes_per_vector=3)
    with pytest.raises(TypeError):
        engine.graph.build_codes(x, bytes_per_vector=2.0)


# ---------------------------------------------------------------- second level of the codes
@pytest.fixture(scope="module")
def coded2():
    """Codes of 6,000 documents with a 64-coordinate residual level, and 3 directions."""
    x = engine.synthetic.vectors(6000, 64, seed=21, dtype=torch.bfloat16)
    codes = engine.graph.build_codes(x, bytes_per_vector=12, residual_bytes=8)
    w = torch.randn(3, 64, generator=torch.Generator().manual_seed(22))
    return x, codes, w


def test_residual_bits_shapes_and_budget(coded2):
    x, codes, _ = coded2
    codes.check(6000, 64)
    res = codes.residual
    assert res.bits.shape == (6000, 8) and res.bits.dtype == torch.uint8
    assert res.rotation.shape == (64, 64) and res.levels.shape == (64, 2)
    assert bool((res.levels[:, 0] < res.levels[:, 1]).all())
    assert codes.params["residual_bytes"] == 8
    # At most d / 8 bytes: d = 48 caps 64 requested bytes at 6; 0 builds no second level.
    y = engine.synthetic.vectors(500, 48, seed=3)
    assert engine.graph.build_codes(y, bytes_per_vector=8, residual_bytes=64).residual.bits.shape == (500, 6)
    assert engine.graph.build_codes(y, bytes_per_vector=8, residual_bytes=0).residual is None
    with pytest.raises(ValueError, match="residual_bytes"):
        engine.graph.build_codes(y, residual_bytes=-1)


def test_residual_bits_sharpen_the_estimate(coded2):
    """Both levels estimate (x - mean) . w closer than the first alone: a higher
    correlation with the exact inner product and more of its top-30 among the top-300."""
    x, codes, w = coded2
    lut, scale = codes.lut_and_scale(w)
    sums = codes.sums(lut).double()
    g = codes.residual_table(w, scale).double()
    both = sums * engine.graph.codes.RESIDUAL_UNITS + (codes.residual.unpacked().double() @ g.T).T
    exact = ((x.float() - codes.mean) @ w.T).T.double()
    for q in range(3):
        one = np.corrcoef(sums[q].numpy(), exact[q].numpy())[0, 1]
        two = np.corrcoef(both[q].numpy(), exact[q].numpy())[0, 1]
        assert two > one > 0.5, (one, two)
        top = set(torch.topk(exact[q], 30).indices.tolist())
        hit1 = len(top & set(torch.topk(sums[q], 300).indices.tolist()))
        hit2 = len(top & set(torch.topk(both[q], 300).indices.tolist()))
        assert hit2 >= hit1 and hit2 >= 27, (hit1, hit2)


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
def test_native_residual_sums_equal_torch_twin_on_every_isa(coded2):
    from engine import _C
    from engine.backends import cpu

    x, codes, w = coded2
    rows = np.array([0, 5, 5999, 17, 3000, 2], np.int64)
    for q in range(3):
        _, scale = codes.lut_and_scale(w[q : q + 1])
        g_ref = codes.residual_table(w[q : q + 1], scale)[0]
        ref = (codes.residual.unpacked(torch.from_numpy(rows)).long() * g_ref.long()).sum(1)
        for isa in cpu.supported_isas():
            try:
                cpu.set_isa(isa)
                g, sums = _C.graph_residual_sums(codes.native(), 6000, w[q].numpy(), rows)
            finally:
                cpu.set_isa("auto")
            assert np.array_equal(g, g_ref.numpy()), isa
            assert np.array_equal(sums.astype(np.int64), ref.numpy()), isa


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
@pytest.mark.parametrize("rerank,first", [(1, 50), (37, 400), (500, 4000), (700, 6000), (300, 300)])
def test_two_level_selection_is_the_top_of_both_estimates(coded2, rerank, first):
    """The re-ranked set: among the `first` best table sums (sum desc, id asc), the
    `rerank` best two-level estimates (estimate desc, id asc), on every ISA and thread
    count, and the torch twin's; without a second level or with first <= rerank, the
    first level alone."""
    from engine import _C
    from engine.backends import cpu
    from engine.graph.torch_impl import codes_topk

    x, codes, w = coded2
    n = 6000
    for q in range(2):
        lut, scale = codes.lut_and_scale(w[q : q + 1])
        sums = codes.sums(lut)[0].long().numpy()
        order = np.lexsort((np.arange(n), -sums))
        if first > rerank:
            cand = order[:first]
            g = codes.residual_table(w[q : q + 1], scale)[0].long()
            est = sums[cand] * engine.graph.codes.RESIDUAL_UNITS + (
                codes.residual.unpacked(torch.from_numpy(cand)).long() * g).sum(1).numpy()
            want = set(cand[np.lexsort((cand, -est))[:rerank]].tolist())
        else:
            want = set(order[:rerank].tolist())
        twin = codes_topk(codes, x, w[q : q + 1], rerank, rerank, residual_rows=first)
        assert set(twin[0].tolist()) == want
        for isa in cpu.supported_isas():
            for nt in (1, 2):
                try:
                    cpu.set_isa(isa)
                    _, got = _C.graph_codes_topk(codes.native(), _np(x), w[q : q + 1].numpy(), rerank, rerank, nt,
                                                 residual_rows=first)
                finally:
                    cpu.set_isa("auto")
                assert set(got[0].tolist()) == want, (isa, nt)


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
def test_two_level_selection_keeps_to_the_allowed_rows(coded2):
    from engine.graph.torch_impl import codes_topk

    x, codes, w = coded2
    allow = torch.zeros(6000, dtype=torch.bool)
    allow[::7] = True
    ref = codes_topk(codes, x, w, 40, 40, allow=allow[None], residual_rows=300)
    for q in range(3):
        assert allow[ref[q][ref[q] >= 0]].all()
    # Both implementations of the default search, through both levels: allowed documents
    # only, and the same ones.
    idx = engine.Index.from_vectors(x).build_graph(8)
    qn = engine.synthetic.qnets(2, [64, 64, 1], seed=4, corpus_seed=21)
    res = [idx.search(qn, 10, mode="graph", ef=8, allow=allow, impl=impl, residual_rows=900, rerank=100)
           for impl in IMPLS]
    for r in res:
        assert bool(allow[r.ids[r.ids >= 0]].all())
    assert all(torch.equal(r.ids, res[0].ids) for r in res)


def test_codes_select_and_append_keep_the_second_level(coded2):
    """Rows taken out keep their bits; rows appended are encoded as the build encodes them."""
    x, codes, _ = coded2
    keep = torch.tensor([5999, 0, 17, 3000])
    sub = codes.select(keep)
    assert torch.equal(sub.residual.bits, codes.residual.bits[keep])
    head = codes.select(torch.arange(4000))
    grown = head.appended(lambda a, b: x[a:b], 6000)
    assert torch.equal(grown.codes, codes.codes)
    assert torch.equal(grown.residual.bits, codes.residual.bits)
    grown.check(6000, 64)


def test_second_level_off_at_query_time_is_the_first_level_alone(small):
    import dataclasses

    idx, q = small
    plain = engine.Index.from_vectors(idx.vectors)
    plain.graph, plain.graph_params = idx.graph, idx.graph_params
    plain.codes = dataclasses.replace(idx.codes, residual=None)
    for impl in IMPLS:
        a = idx.search(q, 10, mode="graph", impl=impl, ef=4, residual_rows=0, rerank=50)
        b = plain.search(q, 10, mode="graph", impl=impl, ef=4, rerank=50)
        assert torch.equal(a.ids, b.ids)


def test_codes_refuse_values_their_float32_arithmetic_cannot_hold(small):
    """A row whose coordinates overflow float32 once rotated: a clear error at build time,
    and the index keeps what it had (no codes that a later load would refuse)."""
    x = engine.synthetic.vectors(500, 32, seed=1)
    x[7] = 1e38
    with pytest.raises(ValueError, match="too large"):
        engine.graph.build_codes(x)
    idx = engine.Index.from_vectors(x)
    with pytest.raises(ValueError, match="too large"):
        idx.build_graph(4)
    assert idx.graph is None and idx.codes is None
    ok = engine.Index.from_vectors(engine.synthetic.vectors(500, 32, seed=1)).build_graph(4, code_bytes=8)
    before = ok.codes
    with pytest.raises(ValueError):
        ok.build_graph(6, code_bytes=16, method="bogus")
    assert ok.codes is before and ok.graph.shape[1] == 4  # a failed build changes nothing


def test_tiny_and_empty_indexes_get_finite_codes(tmp_path):
    """Codes of 0 or 1 rows (no sample to train on) are finite, save and load, and keep
    serving after rows are added (the first level alone: rebuild the codes to train them)."""
    q = engine.synthetic.qnets(2, [32, 32, 1], seed=3)
    for n in (0, 1):
        idx = engine.Index.from_vectors(engine.synthetic.vectors(10, 32, seed=1)[:n]).build_graph(4)
        assert idx.codes.residual is None and bool(torch.isfinite(idx.codes.levels).all())
        idx.save(tmp_path / f"e{n}")
        back = engine.Index.load(tmp_path / f"e{n}", verify=True)
        back.add(engine.synthetic.vectors(300, 32, seed=2))
        r = back.search(q, 5, mode="graph", ef=8)
        assert r.ids.shape == (2, 5) and bool((r.ids >= 0).all())


def test_build_graph_takes_the_second_level_size_and_numpy_ints(tmp_path, small):
    idx, _ = small
    x = idx.vectors
    a = engine.Index.from_vectors(x).build_graph(4, residual_bytes=0)
    assert a.codes.residual is None
    b = engine.Index.from_vectors(x).build_graph(4, code_bytes=np.int64(8), residual_bytes=np.int64(2))
    assert b.codes.residual.bits.shape == (600, 2) and type(b.codes.params["residual_bytes"]) is int
    b.save(tmp_path / "b")  # the params are plain JSON
    assert engine.Index.load(tmp_path / "b").codes.params["residual_bytes"] == 2


def test_update_drops_a_stale_second_level(tmp_path, small):
    idx, _ = small
    idx.save(tmp_path / "i")
    live = engine.Index.load(tmp_path / "i")
    live.build_codes(16, residual_bytes=0)
    live.add(engine.synthetic.vectors(40, 32, seed=8))
    m = engine.storage.read_manifest(tmp_path / "i")
    assert m["codes"]["residual"] is False and not any("residual" in f for f in m["files"])
    assert not any("residual" in f for f in os.listdir(tmp_path / "i"))
    _edit_manifest(tmp_path / "i", lambda m: m["codes"].__setitem__("residual", "no"))
    with pytest.raises(engine.storage.IndexFormatError, match="residual"):
        engine.Index.load(tmp_path / "i")


def test_index_without_a_second_level_still_loads_and_searches(tmp_path, small):
    """Codes built without residual bits (as indexes before them) are saved, loaded and
    searched through the first level alone."""
    import dataclasses

    idx, q = small
    plain = engine.Index.from_vectors(idx.vectors).build_graph(12)
    plain.codes = dataclasses.replace(plain.codes, residual=None)
    plain.save(tmp_path / "p")
    back = engine.Index.load(tmp_path / "p", verify=True)
    assert back.codes.residual is None
    m = engine.storage.read_manifest(tmp_path / "p")
    assert m["codes"]["residual"] is False and not any("residual" in f for f in m["files"])
    for impl in IMPLS:
        a = plain.search(q, 10, mode="graph", impl=impl, ef=8)
        b = back.search(q, 10, mode="graph", impl=impl, ef=8)
        assert torch.equal(a.ids, b.ids)


def _edit_manifest(path, edit) -> None:
    import json

    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_missing_residual_file_is_an_index_format_error(tmp_path, small):
    idx, _ = small
    idx.save(tmp_path / "i")
    _edit_manifest(tmp_path / "i", lambda m: m["files"].pop("codes.residual.u8.bin"))
    with pytest.raises(engine.storage.IndexFormatError, match="second level"):
        engine.Index.load(tmp_path / "i")


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
def test_native_refuses_a_damaged_second_level(coded2):
    from engine import _C

    x, codes, w = coded2
    t = list(codes.native())
    bad = list(t)
    bad[5] = bad[5][:100]  # bits of fewer rows than documents
    with pytest.raises(ValueError, match="residual bits"):
        _C.graph_codes_topk(tuple(bad), _np(x), w[:1].numpy(), 10, 10, 1, residual_rows=100)
    bad = list(t)
    bad[6] = np.ascontiguousarray(bad[6][:, :60])  # not a multiple of 8 coordinates
    with pytest.raises(ValueError, match="multiple of 8"):
        _C.graph_codes_topk(tuple(bad), _np(x), w[:1].numpy(), 10, 10, 1, residual_rows=100)
    bad = list(t)
    bad[7] = bad[7].copy()
    bad[7][3, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        _C.graph_codes_topk(tuple(bad), _np(x), w[:1].numpy(), 10, 10, 1, residual_rows=100)
    with pytest.raises(ValueError, match="expected"):
        _C.graph_codes_topk(tuple(t[:6]), _np(x), w[:1].numpy(), 10, 10, 1)
    with pytest.raises(ValueError, match="no second level"):
        _C.graph_residual_sums(tuple(t[:5]), 6000, w[0].numpy(), np.array([1], np.int64))


@pytest.mark.parametrize("fname,shape", [("codes.dims.i32.bin", [3, 4]), ("codes.residual.levels.f32.bin", [3, 2])])
def test_damaged_codes_file_is_an_index_format_error(tmp_path, small, fname, shape):
    idx, _ = small
    idx.save(tmp_path / "i")
    _edit_manifest(tmp_path / "i", lambda m: m["files"][fname].__setitem__("shape", shape))
    with pytest.raises(engine.storage.IndexFormatError):
        engine.Index.load(tmp_path / "i")


# ---------------------------------------------------------------- linearisation
def _autograd_grad(q, at, relaxed=False):
    from engine.backends import torch_ref

    x = at.float().expand(q.num_queries, q.dim).reshape(q.num_queries, 1, q.dim).clone().requires_grad_(True)
    with torch.enable_grad():
        s = torch_ref.apply_qnet([w.float() for w in q.weights], [b.float() for b in q.biases], q.config, x)
        (g,) = torch.autograd.grad(s.sum(), x)
    return g.reshape(q.num_queries, q.dim)


CONFIGS = [
    {},
    {"residual_on_last": True},
    {"layer_norm_before_residual": False},
    {"residual": False},
    {"layer_norm": False},
    {"activation": "identity"},
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_closed_form_gradient_equals_autograd(cfg, dtype):
    from engine import _C
    from engine.graph.linearize import linearize
    from engine.native_args import qnet_args

    q = engine.synthetic.qnets(3, [24, 24, 24, 24, 1], seed=3, config=engine.QNetConfig(**cfg), dtype=dtype)
    at = torch.randn(24, generator=torch.Generator().manual_seed(1))
    ref = _autograd_grad(q.float() if dtype == torch.float16 else q, at)
    w, ok = linearize(q, at)
    assert ok.all()
    torch.testing.assert_close(w, ref, rtol=2e-4, atol=2e-4)
    if len(IMPLS) > 1:
        a = qnet_args(q.weights, q.biases, q.config)
        g, okn = _C.graph_linearize(a["weights"], a["biases"], a["flags"], at.expand(3, 24).contiguous().numpy(),
                                    False)
        assert okn.all()
        torch.testing.assert_close(torch.from_numpy(g), ref, rtol=2e-4, atol=2e-4)


def test_relaxed_gradient_where_every_relu_is_off():
    """A q-net whose first layer is inactive at the point has zero gradient there; the
    relaxed gradient points along what the layer reads."""
    from engine.graph.linearize import linearize

    d = 8
    u = torch.zeros(d)
    u[0] = 1.0
    w0 = torch.zeros(1, d, d)
    w0[0, :, 0] = u  # unit 0 reads x . u
    b0 = torch.full((1, d), -5.0)  # off unless x . u > 5
    w1 = torch.zeros(1, d, 1)
    w1[0, 0, 0] = 1.0
    q = engine.QNet([w0, w1], [b0], engine.QNetConfig(layer_norm=False, residual=False))
    w, ok = linearize(q, torch.zeros(d))
    assert not ok.any() and (w == 0).all()
    w, ok = linearize(q, torch.zeros(d), relaxed=True)
    assert ok.all() and w[0, 0] > 0 and (w[0, 1:] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("candidates", ["codes", "scan"])
def test_degenerate_gradient_still_finds_the_exact_top(impl, candidates):
    """One distant document and a q-net that only sees it: zero gradient at the corpus
    mean; the search must still return the exact top-k (the distant document first)."""
    g = torch.Generator().manual_seed(0)
    d = 16
    x = torch.randn(2000, d, generator=g) * 0.3
    x[1234] = 0
    x[1234, 0] = 20.0  # far along the first axis
    idx = engine.Index.from_vectors(x).build_graph(8, code_bytes=4)
    w0 = torch.zeros(1, d, d)
    w0[0, 0, 0] = 1.0
    b0 = torch.full((1, d), -10.0)
    w1 = torch.zeros(1, d, 1)
    w1[0, 0, 0] = 1.0
    q = engine.QNet([w0, w1], [b0], engine.QNetConfig(layer_norm=False, residual=False))
    ex = idx.search(q, 5)
    r = idx.search(q, 5, mode="graph", impl=impl, candidates=candidates, ef=8)
    assert r.ids[0, 0].item() == 1234 and ex.ids[0, 0].item() == 1234
    assert torch.equal(r.scores, ex.scores)  # the rest tie at 0 (which of them is immaterial)
    assert r.stats.fallbacks == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_no_direction_at_all_starts_from_samples(impl):
    """A q-net that is constant everywhere (zero output weights): no direction even
    relaxed; the search falls back to its sampled documents and returns k results."""
    x = engine.synthetic.vectors(500, 8, seed=1)
    idx = engine.Index.from_vectors(x).build_graph(6, code_bytes=4)
    q = engine.synthetic.qnets(2, [8, 8, 1], seed=1)
    q = engine.QNet([q.weights[0], torch.zeros_like(q.weights[1])], list(q.biases), q.config)
    r = idx.search(q, 10, mode="graph", impl=impl, num_samples=20)
    assert (r.ids >= 0).all() and (r.scores == 0).all()
    assert r.stats.fallbacks == 2 and r.stats.linear_rows == 0


# ---------------------------------------------------------------- edge cases
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_k_larger_than_reached_is_padded(impl, preset):
    x = engine.synthetic.vectors(40, 8, seed=9)
    idx = engine.Index.from_vectors(x)
    # A graph of isolated documents: the search reaches only its starting documents.
    idx.set_graph(torch.full((40, 4), -1, dtype=torch.int32), {"seed": 0})
    q = engine.synthetic.qnets(3, [8, 8, 1], seed=1)
    opts = {"num_entry_points": 5} if preset == "paper" else {"ef": 2, "lin_factor": 2.5, "candidates": "scan", "passes": 1}
    r = idx.search(q, 30, mode="graph", preset=preset, impl=impl, **opts)
    assert r.ids.shape == (3, 30) and r.scores.shape == (3, 30)
    found = (r.ids >= 0).sum(1)
    assert (found == 5).all()
    assert torch.isneginf(r.scores[:, 5:]).all() and (r.ids[:, 5:] == -1).all()
    assert (r.scores[:, :4] >= r.scores[:, 1:5]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_whole_corpus_reached_equals_exact(impl):
    x = engine.synthetic.vectors(80, 8, seed=9)
    idx = engine.Index.from_vectors(x).build_graph(79, code_bytes=4)  # complete graph
    q = engine.synthetic.qnets(4, [8, 8, 1], seed=2)
    ex = idx.search(q, 100)
    r = idx.search(q, 100, mode="graph", preset="paper", impl=impl, num_entry_points=1)
    assert torch.equal(r.ids, ex.ids)
    r = idx.search(q, 100, mode="graph", impl=impl, ef=100)
    assert torch.equal(r.ids, ex.ids)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_index_and_zero_queries(impl):
    q = engine.synthetic.qnets(3, [8, 8, 1], seed=1)
    empty = engine.Index.from_vectors(torch.zeros(0, 8)).build_graph(4, code_bytes=4)
    for preset in ("default", "paper"):
        r = empty.search(q, 5, mode="graph", preset=preset, impl=impl)
        ex = empty.search(q, 5)
        assert torch.equal(r.ids, ex.ids) and torch.equal(r.scores, ex.scores)
        assert r.ids.shape == (3, 5) and (r.ids == -1).all()
    x = engine.synthetic.vectors(50, 8, seed=1)
    idx = engine.Index.from_vectors(x).build_graph(4, code_bytes=4)
    none = q[:0]
    for preset in ("default", "paper"):
        r = idx.search(none, 5, mode="graph", preset=preset, impl=impl)
        assert r.ids.shape == (0, 5) and r.scores.shape == (0, 5)


@pytest.mark.parametrize("impl", IMPLS)
def test_k_beyond_corpus_and_knob_below_k(impl):
    x = engine.synthetic.vectors(30, 8, seed=2)
    idx = engine.Index.from_vectors(x).build_graph(29, code_bytes=4)
    q = engine.synthetic.qnets(2, [8, 8, 1], seed=3)
    ex = idx.search(q, 40)
    r = idx.search(q, 40, mode="graph", impl=impl, ef=3)  # ef below k: the list holds k
    assert torch.equal(r.ids, ex.ids) and (r.ids[:, 30:] == -1).all()
    assert torch.isneginf(r.scores[:, 30:]).all()


def test_duplicate_documents_search():
    base = engine.synthetic.vectors(200, 16, seed=3)
    x = torch.cat([base, base])  # every document twice: equal scores, ties by lower id
    idx = engine.Index.from_vectors(x).build_graph(8, code_bytes=8)
    q = engine.synthetic.qnets(3, [16, 16, 1], seed=4, corpus_seed=3)
    ex = idx.search(q, 20)
    for impl in IMPLS:
        for preset, opts in (("paper", {"num_entry_points": 400}), ("default", {"ef": 400})):
            r = idx.search(q, 20, mode="graph", preset=preset, impl=impl, **opts)
            assert torch.equal(r.ids, ex.ids), (impl, preset)


@pytest.mark.parametrize("impl", IMPLS)
def test_same_results_every_run_batch_and_thread_count(small, impl):
    idx, q = small
    runs = [idx.search(q, 10, mode="graph", impl=impl, ef=16) for _ in range(3)]
    assert torch.equal(runs[0].ids, runs[1].ids) and torch.equal(runs[1].ids, runs[2].ids)
    p = [idx.search(q, 10, mode="graph", preset="paper", impl=impl, num_entry_points=50) for _ in range(2)]
    assert torch.equal(p[0].ids, p[1].ids)
    # One query alone gives what it gets in a batch, and so does one thread.
    assert torch.equal(idx.search(q[2], 10, mode="graph", impl=impl, ef=16).ids[0], runs[0].ids[2])
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = idx.search(q, 10, mode="graph", impl=impl, ef=16)
    finally:
        torch.set_num_threads(nt)
    assert torch.equal(one.ids, runs[0].ids) and torch.equal(one.scores, runs[0].scores)


# ---------------------------------------------------------------- choice and input checks
def test_backend_and_impl_are_chosen_together(small):
    idx, q = small
    r = idx.search(q, 10, mode="graph", backend="torch")
    assert r.stats.impl == "torch" and r.stats.backend == "torch"
    r = idx.search(q, 10, mode="graph")
    assert r.stats.impl == IMPLS[-1] and r.stats.backend == "cpu"
    r = idx.search(q, 10, mode="graph", impl="torch", backend="cpu")
    assert r.stats.impl == "torch" and r.stats.backend == "cpu"
    if len(IMPLS) > 1:
        with pytest.raises(ValueError, match="conflicts"):
            idx.search(q, 10, mode="graph", impl="native", backend="torch")


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
    with pytest.raises(ValueError, match="candidates"):
        idx.search(q, 10, mode="graph", candidates="ivf")
    with pytest.raises(ValueError, match="lin_factor"):
        idx.search(q, 10, mode="graph", lin_factor=float("inf"))
    with pytest.raises(TypeError, match="params"):
        idx.search(q, 10, mode="graph", preset="paper", params=engine.graph.DefaultSearchParams())
    with pytest.raises(TypeError, match="block_size"):
        idx.search(q, 10, mode="graph", block_size=64)
    bare = engine.Index.from_vectors(idx.vectors)
    with pytest.raises(ValueError, match="build_graph"):
        bare.search(q, 10, mode="graph")
    no_codes = engine.Index.from_vectors(idx.vectors).build_graph(4, codes=False)
    with pytest.raises(ValueError, match="codes"):
        no_codes.search(q, 10, mode="graph", candidates="codes")
    assert no_codes.search(q, 10, mode="graph").stats.candidates == "scan"


def test_rerank_sizes_with_and_without_a_second_level():
    """Without residual bits: rerank = max(1024, rerank_factor * ef_lin, rerank_share * n);
    with them, residual_factor times that is estimated again and residual_rerank times it
    re-ranked exactly; explicit values win; never below the kept list nor above n."""
    P = engine.graph.DefaultSearchParams
    p = P(ef=32, lin_factor=12)  # ef_lin 384: first level 12,288 at 1M (32 x 384 > 5,000)
    assert p.rerank_rows(1_000_000, 3072) == 12_288
    assert p.residual_rows_(1_000_000, 3072) == int(p.residual_factor * 12_288)
    assert p.rerank_rows(1_000_000, 3072, residual=True) == max(3072, math.ceil(p.residual_rerank * 12_288))
    assert p.rerank_rows(10_000_000, 3072) == 50_000  # the share of n
    assert p.rerank_rows(500, 100, residual=True) == 500 and p.residual_rows_(500, 100) == 500
    q = P(ef=32, rerank=7000, residual_rows=40_000)
    assert q.rerank_rows(1_000_000, 3072, residual=True) == 7000 and q.residual_rows_(1_000_000, 3072) == 40_000
    assert P(rerank=10).rerank_rows(1_000_000, 3072, residual=True) == 3072
    assert P(residual_rows=0).residual_rows_(1_000_000, 3072) == 0  # the first level alone
    for bad in (dict(residual_rows=-1), dict(residual_factor=0.0), dict(residual_rerank=1.5),
                dict(residual_rerank=float("nan"))):
        with pytest.raises(ValueError):
            P(**bad)
    with pytest.raises(TypeError):
        P(residual_rows=2.5)


def test_typed_params_object(small):
    idx, q = small
    p = engine.graph.DefaultSearchParams(ef=20, passes=1)
    a = idx.search(q, 10, mode="graph", params=p)
    b = idx.search(q, 10, mode="graph", ef=20, passes=1)
    assert torch.equal(a.ids, b.ids) and a.stats.params == p


@pytest.mark.parametrize("impl", IMPLS)
def test_out_of_range_neighbour_is_a_value_error(impl):
    x = engine.synthetic.vectors(40, 8, seed=9)
    idx = engine.Index.from_vectors(x).build_graph(4, code_bytes=4)
    idx.graph = idx.graph.clone()
    idx.graph[:, 1] = 1000  # damaged after the checks of set_graph
    q = engine.synthetic.qnets(2, [8, 8, 1], seed=1)
    with pytest.raises(ValueError, match="neighbour"):
        idx.search(q, 5, mode="graph", impl=impl, ef=40, max_steps=2)


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


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
def test_cpu_isa_governs_every_native_function_table(small):
    """HYPENCODER_CPU_ISA / set_isa select the table of every native path: the q-net
    kernels and the graph search's scan kernels (dot products, codes, linearisation)."""
    from engine import _C
    from engine.backends import cpu

    idx, q = small
    ref = idx.search(q, 10, mode="graph", ef=16)
    try:
        for name in cpu.supported_isas():
            cpu.set_isa(name)
            tables = _C.cpu_kernel_tables()
            assert tables["qnet"] == name
            assert tables["scan"] == {"avx512_bf16": "avx512"}.get(name, name)
            r = idx.search(q, 10, mode="graph", ef=16)
            assert recall(r.ids, ref.ids) >= 0.95  # other rounding, the same search
    finally:
        cpu.set_isa("auto")


@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_candidates_return_exact_scores(impl):
    """precision="bf16" scores candidates with bf16-rounded weights and activations, then
    the final list exactly: every returned score is the q-net's own, the ranking exact
    among what was found, and the documents found nearly those of an exact search."""
    x = engine.synthetic.vectors(3000, 32, seed=5, dtype=torch.bfloat16)
    idx = engine.Index.from_vectors(x).build_graph(12, code_bytes=8)
    q = engine.synthetic.qnets(4, [32, 32, 32, 1], seed=7, corpus_seed=5)
    opts = dict(mode="graph", impl=impl, ef=16)
    r = idx.search(q, 16, precision="bf16", **opts)
    ref = engine.score_gather(q, idx.vectors, r.ids, backend="torch")  # float32 arithmetic
    torch.testing.assert_close(r.scores, ref, rtol=1e-5, atol=1e-5)
    assert (r.scores[:, :-1] >= r.scores[:, 1:]).all()
    assert r.stats.precision == "bf16"  # asked for (kernels without a bf16 dot use float32)
    b = idx.search(q, 16, precision="exact", **opts)
    assert recall(r.ids, b.ids) >= 0.9
    ex = idx.search(q, 10)
    assert recall(r.ids[:, :10], ex.ids) >= 0.9


def test_precision_auto_and_reported(small):
    idx, q = small  # float32 vectors: exact
    assert idx.search(q, 10, mode="graph").stats.precision == "exact"
    assert idx.search(q, 10, mode="graph", preset="paper", num_entry_points=20).stats.precision is None
    low = engine.Index.from_vectors(idx.vectors.to(torch.bfloat16)).build_graph(8, code_bytes=8)
    want = "bf16" if engine.graph.native.bf16_dot() else "exact"
    assert low.search(q, 10, mode="graph").stats.precision == (want if len(IMPLS) > 1 else "exact")
    from engine.native_args import precision_scope

    with precision_scope("fp32"):  # the CPU precision policy decides "auto"
        assert low.search(q, 10, mode="graph").stats.precision == "exact"
    assert low.search(q, 10, mode="graph", impl="torch").stats.precision == "exact"
    with pytest.raises(ValueError, match="precision"):
        idx.search(q, 10, mode="graph", precision="fp8")


def test_populated_load_is_the_same_index(tmp_path, small):
    idx, q = small
    idx.save(tmp_path / "i")
    lazy = engine.Index.load(tmp_path / "i")
    eager = engine.Index.load(tmp_path / "i", populate=True)
    assert torch.equal(lazy.vectors, eager.vectors) and torch.equal(lazy.graph, eager.graph)
    a = lazy.search(q, 10, mode="graph")
    b = eager.search(q, 10, mode="graph")
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


@pytest.mark.skipif(len(IMPLS) < 2, reason="C++ graph search not built")
@pytest.mark.parametrize("rerank", [1, 37, 500, 2999])
def test_native_codes_keep_the_best_estimates_ties_by_id(coded, rerank):
    """The re-ranked set is exactly the top `rerank` table sums under (sum desc, id asc),
    ties at the cut included; threads change nothing."""
    from engine import _C

    x, codes, w = coded
    for q in range(2):
        lut = _C.graph_codes_lut(codes.native(), 3000, w[q].numpy())
        sums = _C.graph_codes_sums(codes.codes.numpy(), lut, 3000)[:3000].astype(np.int64)
        order = sorted(range(3000), key=lambda i: (-sums[i], i))[:rerank]
        for nt in (1, 2):
            _, got = _C.graph_codes_topk(codes.native(), _np(x), w[q : q + 1].numpy(), rerank, rerank, nt)
            assert set(got[0].tolist()) == set(order)
