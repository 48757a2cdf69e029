"""Filtered search (allow-lists) and the deletion mask: exact search equals brute force over
the allowed rows on every CPU backend and strategy; graph search returns allowed rows
only, searches selective queries exactly (flagged), honours Index.deleted; results do not
depend on the thread count; bad allow-lists raise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
from engine.backends import get_backend
from engine.graph import native
from engine.graph.common import sort_by_key
from engine.search.filtered import filtered_exact_search, strategy
from engine.search.filters import resolve

N, D, Q = 600, 32, 6
IMPLS = ["torch"] + (["native"] if native.availability()[0] else [])
BACKENDS = ["torch"] + (["cpu"] if engine.backends.availability("cpu")[0] else [])


@pytest.fixture(scope="module")
def data():
    x = engine.synthetic.vectors(N, D, seed=5)
    idx = engine.Index.from_vectors(x).build_graph(12)
    q = engine.synthetic.qnets(Q, [D, D, D, 1], seed=7, corpus_seed=5)
    return idx, q


def scores_of(idx, q, backend: str) -> torch.Tensor:
    be = get_backend(backend, torch.device("cpu"))
    return be.score_dense(q.weights, q.biases, q.config, idx.vectors, None)


def brute(full: torch.Tensor, mask: torch.Tensor, k: int):
    """Reference: the top-k of each row's allowed entries by (score desc, id asc), padded."""
    Qn, n = full.shape
    mask = mask.expand(Qn, n)
    ids = torch.where(mask, torch.arange(n).expand(Qn, n), torch.full((Qn, n), -1))
    s, i = sort_by_key(full.masked_fill(~mask, float("-inf")), ids)
    if k > n:
        s = torch.cat([s, s.new_full((Qn, k - n), float("-inf"))], 1)
        i = torch.cat([i, i.new_full((Qn, k - n), -1)], 1)
    return s[:, :k], i[:, :k]


def rand_mask(shape, share: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random(shape) < share)


def allowed_only(ids: torch.Tensor, mask: torch.Tensor) -> bool:
    mask = mask.expand(ids.shape[0], -1)
    return bool((torch.gather(mask, 1, ids.clamp_min(0)) | (ids < 0)).all())


def recall(found, ref) -> float:
    hit = tot = 0
    for a, b in zip(found.tolist(), ref.tolist()):
        b = [x for x in b if x >= 0]
        hit += len(set(a) & set(b))
        tot += len(b)
    return hit / max(tot, 1)


# ---------------------------------------------------------------- exact search
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", [None, "gather", "dense"])
@pytest.mark.parametrize("per_query", [True, False])
def test_exact_equals_brute_force(data, backend, how, per_query):
    idx, q = data
    mask = rand_mask((Q, N) if per_query else (N,), 0.3, 1)
    full = scores_of(idx, q, backend)
    for k in (1, 10, 700):
        rf = resolve(idx, mask, Q)
        s, i = filtered_exact_search(q, idx.vectors, k, rf, backend=backend, how=how, block_size=128)
        rs, ri = brute(full, mask, k)
        assert torch.equal(i, ri)
        torch.testing.assert_close(s, rs, rtol=1e-5, atol=1e-5)
    r = idx.search(q, 10, backend=backend, allow=mask)
    assert torch.equal(r.ids, brute(full, mask, 10)[1])
    assert r.stats.filtered and r.stats.exact == [True] * Q


@pytest.mark.parametrize("backend", BACKENDS)
def test_shared_bitmap_in_chunks(data, backend, monkeypatch):
    """A shared bitmap is gathered in bounded chunks; ties across chunks go to the lower row."""
    import engine.search.filtered as filtered

    idx, q = data
    monkeypatch.setattr(filtered, "SHARED_CHUNK", 64)
    x = idx.vectors.clone()
    x[500] = x[3]  # equal scores in different chunks
    mask = rand_mask((N,), 0.9, 12)
    mask[[3, 500]] = True
    full = scores_of(engine.Index.from_vectors(x), q, backend)
    rf = resolve(idx, mask, Q)
    for k in (1, 10, 700):
        s, i = filtered_exact_search(q, x, k, rf, backend=backend)
        assert torch.equal(i, brute(full, mask, k)[1])


def test_strategy_by_cost(data):
    idx, _ = data
    assert strategy(resolve(idx, rand_mask((N,), 0.99, 0), Q), N, True) == "gather"  # shared: always
    assert strategy(resolve(idx, rand_mask((Q, N), 0.1, 0), Q), N, True) == "gather"
    assert strategy(resolve(idx, rand_mask((Q, N), 0.99, 0), Q), N, True) == "dense"
    assert strategy(resolve(idx, rand_mask((Q, N), 0.1, 0), Q), N, False) == "dense"


@pytest.mark.parametrize("kind", ["int", "str", "none"])
def test_external_ids_both_kinds_and_per_query_lists(data, kind):
    idx0, q = data
    ext = {"int": np.arange(N, dtype=np.int64) * 7 + 1000, "str": [f"doc-{i}" for i in range(N)], "none": None}[kind]
    idx = engine.Index.from_vectors(idx0.vectors, ext)
    idx.set_graph(idx0.graph, idx0.graph_params)
    rng = np.random.default_rng(3)
    rows = [np.sort(rng.choice(N, size=s, replace=False)) for s in (5, 40, 200, 0, 1, 599)]
    name = lambda r: int(r) if kind == "none" else (int(ext[r]) if kind == "int" else ext[r])  # noqa: E731
    allow = [[name(r) for r in rr] for rr in rows]
    mask = torch.zeros(Q, N, dtype=torch.bool)
    for j, rr in enumerate(rows):
        mask[j, torch.from_numpy(rr)] = True
    full = scores_of(idx, q, "torch")
    ref = brute(full, mask, 10)[1]
    assert torch.equal(idx.search(q, 10, backend="torch", allow=allow).ids, ref)
    # one list for the whole batch, as a tensor or ndarray for int ids
    shared = allow[2]
    if kind != "str":
        for form in (shared, np.asarray(shared), torch.tensor(shared)):
            assert torch.equal(idx.search(q, 10, backend="torch", allow=form).ids, brute(full, mask[2], 10)[1])
    else:
        assert torch.equal(idx.search(q, 10, backend="torch", allow=shared).ids, brute(full, mask[2], 10)[1])
    for mode in ("exact", "graph"):  # an empty allow-list: padding only
        r = idx.search(q, 10, mode=mode, allow=[])
        assert (r.ids == -1).all() and torch.isinf(r.scores).all()


def test_an_id_on_several_rows_allows_all_of_them(data):
    idx0, q = data
    ext = np.arange(N, dtype=np.int64)
    ext[10] = ext[20] = 99999
    idx = engine.Index.from_vectors(idx0.vectors, ext)
    r = idx.search(q, 5, backend="torch", allow=[99999])
    assert sorted(r.ids[0, :2].tolist()) == [10, 20] and (r.ids[:, 2:] == -1).all()


def test_bitmap_forms(data):
    idx, q = data
    mask = rand_mask((Q, N), 0.2, 9)
    ref = brute(scores_of(idx, q, "torch"), mask, 10)[1]
    for allow in (mask, mask.numpy(), list(mask), [m.numpy() for m in mask]):
        assert torch.equal(idx.search(q, 10, backend="torch", allow=allow).ids, ref)


# ---------------------------------------------------------------- graph search
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", ["default", "paper"])
def test_graph_above_threshold_returns_allowed_top(data, impl, preset):
    idx, q = data
    mask = rand_mask((Q, N), 0.5, 2)
    r = idx.search(q, 10, mode="graph", impl=impl, preset=preset, allow=mask, filter_exact_below=0.1)
    ref = brute(scores_of(idx, q, "torch"), mask, 10)[1]
    assert allowed_only(r.ids, mask)
    assert r.stats.exact == [False] * Q
    assert recall(r.ids, ref) >= 0.9
    assert (r.ids >= 0).all()


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_graph_native_equals_torch_twin_filtered(data, preset):
    if len(IMPLS) < 2:
        pytest.skip("the native extension is not built")
    idx, q = data
    mask = rand_mask((Q, N), 0.3, 4)
    a = idx.search(q, 10, mode="graph", impl="native", preset=preset, allow=mask, filter_exact_below=0.0,
                   **({"precision": "exact"} if preset == "default" else {}))
    b = idx.search(q, 10, mode="graph", impl="torch", preset=preset, allow=mask, filter_exact_below=0.0,
                   **({"precision": "exact"} if preset == "default" else {}))
    assert torch.equal(a.ids, b.ids)


@pytest.mark.parametrize("impl", IMPLS)
def test_graph_selectivity_both_sides_of_threshold_in_one_batch(data, impl):
    idx, q = data
    shares = [0.01, 0.6, 0.03, 0.9, 0.0, 0.5]
    mask = torch.stack([rand_mask((N,), s, 10 + j) for j, s in enumerate(shares)])
    r = idx.search(q, 10, mode="graph", impl=impl, allow=mask, filter_exact_below=0.05)
    below = [int(c) < 0.05 * N or int(c) <= 10 for c in mask.sum(1)]
    assert all(r.stats.exact[j] for j in range(Q) if below[j])
    ref_s, ref = brute(scores_of(idx, q, "cpu" if impl == "native" else "torch"), mask, 10)
    for j in range(Q):
        if r.stats.exact[j]:  # searched exactly: the true top-10 of its allowed rows
            assert torch.equal(r.ids[j], ref[j])
    assert allowed_only(r.ids, mask)
    assert (r.ids[4] == -1).all()  # nothing allowed
    # forced to the graph throughout, the selective queries fall back only when short
    r0 = idx.search(q, 10, mode="graph", impl=impl, allow=mask, filter_exact_below=0.0)
    assert allowed_only(r0.ids, mask)
    for j in range(Q):
        assert int((r0.ids[j] >= 0).sum()) == min(10, int(mask[j].sum()))


def test_filter_exact_below_is_a_typed_parameter():
    p = engine.graph.DefaultSearchParams()
    assert 0.0 < p.filter_exact_below < 1.0
    assert 0.0 < engine.graph.PaperSearchParams().filter_exact_below < 1.0
    for bad, err in ((1.5, ValueError), (-0.1, ValueError), ("0.1", TypeError), (float("nan"), ValueError)):
        with pytest.raises(err):
            engine.graph.DefaultSearchParams(filter_exact_below=bad)


# ---------------------------------------------------------------- deletion mask
# (the native graph search scores with the cpu backend only)
@pytest.mark.parametrize("mode,impl,preset,backend", [("exact", None, None, b) for b in BACKENDS]
                         + [("graph", i, p, b) for i in IMPLS for p in ("default", "paper") for b in BACKENDS
                            if i == "torch" or b == "cpu"])
def test_deleted_rows_are_never_returned(data, mode, impl, preset, backend):
    idx0, q = data
    idx = engine.Index.from_vectors(idx0.vectors)
    idx.set_graph(idx0.graph, idx0.graph_params)
    full = scores_of(idx, q, backend)
    top = brute(full, torch.ones(N, dtype=torch.bool), 3)[1]
    deleted = rand_mask((N,), 0.3, 5)
    deleted[top.flatten()] = True  # the unfiltered best must disappear
    idx.deleted = deleted
    opts = {} if mode == "exact" else {"impl": impl, "preset": preset}
    r = idx.search(q, 10, mode=mode, backend=backend, **opts)
    assert allowed_only(r.ids, ~deleted) and (r.ids >= 0).all()
    if mode == "exact":
        assert torch.equal(r.ids, brute(full, ~deleted, 10)[1])
    else:
        assert recall(r.ids, brute(full, ~deleted, 10)[1]) >= 0.9
    # with an allow-list: allowed AND NOT deleted
    allow = rand_mask((Q, N), 0.4, 6)
    r = idx.search(q, 10, mode=mode, backend=backend, allow=allow, **opts)
    assert allowed_only(r.ids, allow & ~deleted)
    if mode == "exact":
        assert torch.equal(r.ids, brute(full, allow & ~deleted, 10)[1])
    # everything deleted: padding
    idx.deleted = torch.ones(N, dtype=torch.bool)
    r = idx.search(q, 4, mode=mode, backend=backend, **opts)
    assert (r.ids == -1).all()
    # kept by Index.to
    idx.deleted = deleted
    assert idx.to(dtype=torch.float32).deleted is deleted


# ---------------------------------------------------------------- threads
@pytest.mark.parametrize("mode", ["exact", "graph"])
def test_results_do_not_depend_on_threads(data, mode):
    if "cpu" not in BACKENDS:
        pytest.skip("the cpu backend is not built")
    idx, q = data
    mask = rand_mask((Q, N), 0.2, 8)
    opts = {"filter_exact_below": 0.0} if mode == "graph" else {"backend": "cpu"}
    runs = [idx.search(q, 10, mode=mode, allow=mask, num_threads=t, **opts) for t in (1, 2, 3)]
    for r in runs[1:]:
        assert torch.equal(r.ids, runs[0].ids) and torch.equal(r.scores, runs[0].scores)


# ---------------------------------------------------------------- bad input
def test_bad_allow_lists(data):
    idx0, q = data
    idx = engine.Index.from_vectors(idx0.vectors, [f"d{i}" for i in range(N)])
    iidx = engine.Index.from_vectors(idx0.vectors, np.arange(N) + 5)
    cases = [
        (idx, ["d1", "nope"], ValueError, "unknown id"),
        (iidx, [3], ValueError, "unknown id"),
        (idx0, [N], ValueError, "unknown id"),
        (idx0, [-1], ValueError, "unknown id"),
        (iidx, ["d1"], TypeError, "integer"),
        (idx, [5, 6], TypeError, "string ids"),
        (idx0, [1.5], TypeError, "int or all str"),
        (idx0, [1, "a"], TypeError, "int or all str"),
        (idx0, [True], TypeError, "int or all str"),
        (idx0, "d1", TypeError, "single string"),
        (idx0, torch.zeros(N + 1, dtype=torch.bool), ValueError, "shape"),
        (idx0, torch.zeros(Q + 1, N, dtype=torch.bool), ValueError, "shape"),
        (idx0, torch.zeros(2, 3, 4, dtype=torch.bool), ValueError, "shape"),
        (idx0, [[1], [2]], ValueError, "per-query"),
        (idx0, torch.tensor([1.0]), TypeError, "float"),
        (idx0, np.array([[1, 2]]), ValueError, "1-D"),
        (idx0, 3, TypeError, "bitmap or a sequence"),
    ]
    for index, allow, err, msg in cases:
        for mode in ("exact", "graph"):
            if mode == "graph" and index.graph is None:
                continue
            with pytest.raises(err, match=msg):
                index.search(q, 5, mode=mode, allow=allow)


def test_bad_deleted_attribute(data):
    idx0, q = data
    idx = engine.Index.from_vectors(idx0.vectors)
    for bad, err in ((np.zeros(N, bool), TypeError), (torch.zeros(N, dtype=torch.uint8), TypeError),
                     (torch.zeros(N - 1, dtype=torch.bool), ValueError)):
        idx.deleted = bad
        with pytest.raises(err, match="deleted"):
            idx.search(q, 5)


# ---------------------------------------------------------------- triton (interpreted on CPU)
def _triton_on_cpu() -> bool:
    if not engine.backends.availability("triton")[0]:
        return False
    from engine.backends import triton as tb

    return tb.supports(torch.device("cpu"))


@pytest.mark.skipif(not _triton_on_cpu(), reason="the triton backend runs on CPU tensors only under TRITON_INTERPRET=1")
def test_triton_backend_honours_filters_and_deletions(data):
    """The dispatch level: filtered exact search (both strategies) and graph search (the
    torch twin) through the triton backend's scoring."""
    idx0, q = data
    n = 160
    idx = engine.Index.from_vectors(idx0.vectors[:n]).build_graph(8)
    q = q[:3]
    full = scores_of(idx, q, "triton")
    mask = rand_mask((3, n), 0.3, 13)
    for how in ("gather", "dense"):
        s, i = filtered_exact_search(q, idx.vectors, 5, resolve(idx, mask, 3), backend="triton", how=how)
        assert torch.equal(i, brute(full, mask, 5)[1])
    idx.deleted = rand_mask((n,), 0.5, 14)
    r = idx.search(q, 5, backend="triton")
    assert torch.equal(r.ids, brute(full, ~idx.deleted, 5)[1])
    r = idx.search(q, 5, mode="graph", backend="triton", allow=mask, filter_exact_below=0.0)
    assert r.stats.backend == "triton" and allowed_only(r.ids, mask & ~idx.deleted)


@pytest.mark.parametrize("mode", ["exact", "graph"])
def test_deletions_changed_in_place_or_replaced_are_seen(data, mode):
    """The filter of the deleted rows is kept between searches, but never a stale one."""
    idx0, q = data
    idx = engine.Index.from_vectors(idx0.vectors)
    idx.set_graph(idx0.graph, idx0.graph_params)
    full = scores_of(idx, q, "torch")
    idx.deleted = torch.zeros(N, dtype=torch.bool)
    first = idx.search(q, 3, mode=mode, backend="torch").ids
    assert torch.equal(first, brute(full, torch.ones(N, dtype=torch.bool), 3)[1])
    idx.deleted[first.flatten()] = True  # in place
    second = idx.search(q, 3, mode=mode, backend="torch").ids
    assert allowed_only(second, ~idx.deleted) and (second >= 0).all()
    idx.deleted = torch.zeros(N, dtype=torch.bool)  # replaced
    assert torch.equal(idx.search(q, 3, mode=mode, backend="torch").ids, first)
    idx.deleted = None
    assert torch.equal(idx.search(q, 3, mode=mode, backend="torch").ids, first)


@pytest.mark.parametrize("kind", ["int8", "float8_e4m3"])
@pytest.mark.parametrize("how", ["gather", "dense"])
def test_filtered_exact_search_on_quantised_storage_equals_brute_force(kind, how):
    from engine import quant
    from engine.search.filtered import filtered_exact_search
    from engine.search.filters import resolve

    x = engine.synthetic.vectors(900, 24, seed=4)
    idx = engine.Index.from_vectors(x, storage=kind)
    q = engine.synthetic.qnets(4, [24, 16, 1], seed=2)
    g = torch.Generator().manual_seed(1)
    allow = torch.rand(4, 900, generator=g) < 0.2
    s, i = filtered_exact_search(q, idx.vectors, 10, resolve(idx, allow, 4), backend="torch", how=how,
                                 scales=idx.scales)
    full = engine.score(q, quant.dequantize(idx.vectors, idx.scales), backend="torch")
    full = full.masked_fill(~allow, float("-inf"))
    ts, ti = full.topk(10, dim=1)
    assert torch.equal(i, ti)
    torch.testing.assert_close(s, ts)
    r = idx.search(q, 10, allow=allow)
    assert torch.equal(r.ids, ti)
