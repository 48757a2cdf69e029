"""Serving: thread settings, many Python threads searching one index, fork safety, the ISA
switch under load, caches built once, the GIL released by native calls.

The suite runs with HYPENCODER_HANDOFF_US=0 (tests/conftest.py): every native call that
can split its work does, so that small data exercises the engine's thread pool.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import engine
from engine import threads
from engine.backends import cpu
from engine.graph import common, native

pytestmark = pytest.mark.skipif(not native.availability()[0], reason="engine._C is not built")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def served():
    """An index with graph and codes, a q-net batch, and the serial results of a mix of
    searches (mode, k, query slice, num_threads)."""
    idx = engine.Index.from_vectors(engine.synthetic.vectors(3000, 48, seed=11)).build_graph(16)
    q = engine.synthetic.qnets(12, [48, 48, 48, 1], seed=12, corpus_seed=11)
    jobs = []
    for mode in ("exact", "graph"):
        for k, sl, nt in ((10, slice(0, 1), 1), (5, slice(1, 4), 2), (40, slice(4, 12), 3), (3000, slice(2, 3), 2)):
            jobs.append((mode, k, sl, nt))
    serial = [idx.search(q[sl], k, mode=mode, num_threads=1) for mode, k, sl, nt in jobs]
    return idx, q, jobs, serial


def same(a, b) -> bool:
    return torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


# ------------------------------------------------------------------ thread settings
def test_num_threads_setting_and_validation(served):
    idx, q, _, _ = served
    before = engine.get_num_threads()
    try:
        engine.set_num_threads(3)
        assert engine.get_num_threads() == 3 and threads.resolve(None) == 3 and threads.resolve(2) == 2
        engine.set_num_threads(None)
        assert engine.get_num_threads() == before
    finally:
        engine.set_num_threads(None)
    for bad, err in ((0, ValueError), (1025, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError),
                     ("2", TypeError)):
        with pytest.raises(err, match="num_threads"):
            engine.set_num_threads(bad)
        with pytest.raises(err, match="num_threads"):
            idx.search(q[:1], 5, num_threads=bad)
        with pytest.raises(err, match="num_threads"):
            idx.search(q[:1], 5, mode="graph", num_threads=bad)


def test_num_threads_environment():
    code = "import engine; print(engine.get_num_threads())"
    env = dict(os.environ, HYPENCODER_NUM_THREADS="3", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
    env["HYPENCODER_NUM_THREADS"] = "many"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "HYPENCODER_NUM_THREADS='many'" in out.stderr


def test_results_do_not_depend_on_threads(served):
    idx, q, jobs, serial = served
    for (mode, k, sl, _), ref in zip(jobs, serial):
        for nt in (2, 4, 7):
            assert same(idx.search(q[sl], k, mode=mode, num_threads=nt), ref), (mode, k, sl, nt)
    # The default hand-off threshold (this suite forces 0): the same results.
    code = (
        "import torch, engine\n"
        "idx = engine.Index.from_vectors(engine.synthetic.vectors(3000, 48, seed=11)).build_graph(16)\n"
        "q = engine.synthetic.qnets(12, [48, 48, 48, 1], seed=12, corpus_seed=11)\n"
        "for mode in ('exact', 'graph'):\n"
        "    r = idx.search(q[4:12], 40, mode=mode, num_threads=4)\n"
        "    print(mode, r.ids.tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HYPENCODER_HANDOFF_US"}
    env["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    for (mode, k, sl, _), ref in zip(jobs, serial):
        if (k, sl) == (40, slice(4, 12)):
            assert got[mode] == str(ref.ids.tolist())


# ------------------------------------------------------------------ concurrency
def test_eight_threads_give_the_serial_results(served):
    idx, q, jobs, serial = served
    start = threading.Barrier(8)
    errors, wrong = [], []

    def worker(t: int) -> None:
        try:
            start.wait()
            for rep in range(3):
                for j in range(len(jobs)):
                    i = (j + t + rep) % len(jobs)  # every thread a different order
                    mode, k, sl, nt = jobs[i]
                    if not same(idx.search(q[sl], k, mode=mode, num_threads=nt), serial[i]):
                        wrong.append((t, jobs[i]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in ts), "a searching thread hung"
    assert errors == [] and wrong == []


def test_caches_are_built_once(monkeypatch):
    idx = engine.Index.from_vectors(engine.synthetic.vectors(500, 16, seed=3)).build_graph(8, codes=False)
    calls = []
    real = common._corpus_mean

    def slow_mean(v):
        calls.append(1)
        time.sleep(0.05)  # a window for the other threads to miss the cache too
        return real(v)

    monkeypatch.setattr(common, "_corpus_mean", slow_mean)
    got = []
    ts = [threading.Thread(target=lambda: got.append(common.corpus_mean(idx))) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)

    ents = []
    ts = [threading.Thread(target=lambda: ents.append(common.entry_points(idx, 100))) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(e is ents[0] for e in ents)

    # The cpu backend's packed weights: one packing for 8 threads that miss at once.
    qn = engine.synthetic.qnets(2, [16, 16, 1], seed=4)
    packs = []

    class CountingC:
        def __getattr__(self, name):
            return getattr(real_c, name)

        def cpu_pack_qnets(self, **kw):
            packs.append(1)
            time.sleep(0.05)
            return real_c.cpu_pack_qnets(**kw)

    real_c = cpu._C
    monkeypatch.setattr(cpu, "_C", CountingC())
    cpu.clear_pack_cache()
    outs = []
    vec = engine.synthetic.vectors(50, 16, seed=5)
    ts = [threading.Thread(target=lambda: outs.append(cpu.score_dense(qn.weights, qn.biases, qn.config, vec)))
          for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(packs) == 1 and len(outs) == 8 and all(torch.equal(o, outs[0]) for o in outs)


def test_packings_go_with_their_qnets():
    """A service scores a new q-net per request: the cache keeps no packing of a q-net
    that is gone."""
    import gc

    cpu.clear_pack_cache()
    vec = engine.synthetic.vectors(50, 16, seed=5)
    for s in range(5):
        qn = engine.synthetic.qnets(2, [16, 16, 1], seed=s)
        first = cpu.score_dense(qn.weights, qn.biases, qn.config, vec)
        assert cpu.pack_cache_info()["entries"] >= 1
        assert torch.equal(cpu.score_dense(qn.weights, qn.biases, qn.config, vec), first)  # a hit
        del qn
        gc.collect()
        assert cpu.pack_cache_info()["entries"] == 0


def test_isa_switch_during_searches(served):
    """Searches keep running, without an error, while another thread switches the ISA;
    each result is the serial result under one of the ISAs."""
    idx, q, jobs, _ = served
    isas = cpu.supported_isas()
    before = cpu.isa()
    per_isa = {}
    try:
        for name in isas:
            cpu.set_isa(name)
            per_isa[name] = [idx.search(q[sl], k, mode=mode, num_threads=nt) for mode, k, sl, nt in jobs]
        stop = threading.Event()
        errors, wrong, done = [], [], [0]

        def searcher(t: int) -> None:
            try:
                i = t
                while not stop.is_set():
                    mode, k, sl, nt = jobs[i % len(jobs)]
                    r = idx.search(q[sl], k, mode=mode, num_threads=nt)
                    if not any(same(r, per_isa[name][i % len(jobs)]) for name in isas):
                        wrong.append(jobs[i % len(jobs)])
                    i += 1
                    done[0] += 1
            except Exception as e:  # pragma: no cover - reported below
                errors.append(repr(e))

        ts = [threading.Thread(target=searcher, args=(t,)) for t in range(4)]
        for t in ts:
            t.start()
        for rep in range(60):
            cpu.set_isa(isas[rep % len(isas)])
        stop.set()
        for t in ts:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in ts)
        assert errors == [] and wrong == [] and done[0] > 0
    finally:
        cpu.set_isa(before)


def test_packing_for_another_isa_is_not_used():
    """A packing made before an ISA switch is left unused by the kernels (no error)."""
    from engine import _C

    isas = cpu.supported_isas()
    before = cpu.isa()
    qn = engine.synthetic.qnets(2, [32, 32, 1], seed=6)
    args = cpu._qnet_args(qn.weights, qn.biases, qn.config)
    vec = engine.synthetic.vectors(40, 32, seed=7).numpy()
    try:
        cpu.set_isa(isas[0])
        packed = _C.cpu_pack_qnets(**args, num_threads=1)
        cpu.set_isa(isas[-1])
        out = np.zeros((2, 40), np.float32)
        _C.cpu_score_dense(**args, vectors=vec, out=out, num_threads=2, packed=packed)
        ref = _C.cpu_exact_topk(**args, vectors=vec, k=40, num_threads=1)
        srt = -np.sort(-out, axis=1)
        np.testing.assert_allclose(srt, ref[0], rtol=1e-5, atol=1e-5)
    finally:
        cpu.set_isa(before)


# ------------------------------------------------------------------ fork
def _search_all(idx, q, jobs):
    return [idx.search(q[sl], k, mode=mode, num_threads=nt) for mode, k, sl, nt in jobs]


def _child_matches(args) -> bool:
    i, = args
    idx, q, jobs, serial = _FORKED
    mode, k, sl, nt = jobs[i]
    return same(idx.search(q[sl], k, mode=mode, num_threads=nt), serial[i])


_FORKED = None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_search_in_a_child_forked_after_searches(served):
    idx, q, jobs, serial = served
    for r, ref in zip(_search_all(idx, q, jobs), serial):  # the pool is up in the parent
        assert same(r, ref)
    # os.fork: the child searches with several threads and exits 0 when all match.
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if all(same(r, ref) for r, ref in zip(_search_all(idx, q, jobs), serial)) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 300
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in a search")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    # multiprocessing with the fork start method: a pool of forked workers.
    global _FORKED
    _FORKED = served
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            res = pool.map_async(_child_matches, [(i,) for i in range(len(jobs))])
            assert all(res.get(timeout=300))
    finally:
        _FORKED = None
    # The parent's pool still works.
    assert all(same(r, ref) for r, ref in zip(_search_all(idx, q, jobs), serial))


# ------------------------------------------------------------------ the GIL
@pytest.mark.parametrize("mode", ["exact", "graph"])
def test_native_calls_release_the_gil(mode):
    """While one thread is inside a long native search, another Python thread keeps
    running: its longest pause is a small part of the search's duration (with the GIL
    held it would span the whole call)."""
    n = 60000 if mode == "exact" else 20000
    idx = engine.Index.from_vectors(engine.synthetic.vectors(n, 64, seed=1))
    if mode == "graph":
        idx.build_graph(8, codes=False, method="exact" if n < 5000 else "auto")
    q = engine.synthetic.qnets(8 if mode == "exact" else 64, [64, 64, 64, 1], seed=2)
    opts = {"mode": mode, "num_threads": 1}
    if mode == "graph":
        opts.update(ef=256, candidates="scan")
    idx.search(q[:1], 10, **opts)  # warm caches
    span = {}

    def search():
        t0 = time.perf_counter()
        idx.search(q, 10, **opts)
        span["t"] = (t0, time.perf_counter())

    th = threading.Thread(target=search)
    ticks = []
    th.start()
    while th.is_alive():
        ticks.append(time.perf_counter())
    th.join()
    t0, t1 = span["t"]
    inside = [t for t in ticks if t0 <= t <= t1]
    gaps = np.diff([t0] + inside + [t1])
    assert t1 - t0 > 0.05, "the search was too short to tell"
    assert gaps.max() < 0.5 * (t1 - t0), (gaps.max(), t1 - t0)


# ------------------------------------------------------------------ reopening saved versions
def _save_versions(path: str, versions: int) -> None:
    """Saves versions 1..versions of a small index at ``path``: every value of version v
    says v (vectors, ids, graph params), and every version has the same file sizes, so
    that only the contents tell versions apart."""
    for v in range(1, versions + 1):
        idx = engine.Index.from_vectors(torch.full((64, 8), float(v)), ids=np.arange(64) + 1000 * v)
        idx.set_graph(torch.zeros((64, 4), dtype=torch.int32), {"version": v})
        idx.save(path)


def test_reopening_an_index_while_new_versions_are_saved(tmp_path):
    path = str(tmp_path / "live")
    _save_versions(path, 1)
    writer = multiprocessing.get_context("spawn").Process(target=_save_versions, args=(path, 60))
    writer.start()
    seen, errors = set(), []
    try:
        while writer.is_alive() or not seen:
            try:
                idx = engine.Index.load(path)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(repr(e))
                continue
            v = idx.graph_params["version"]
            ids = idx.external_ids(torch.arange(64))
            if not (torch.all(idx.vectors == v) and ids == list(range(1000 * v, 1000 * v + 64))):
                errors.append(f"version {v} mixed with another")
            seen.add(v)
    finally:
        writer.join(timeout=300)
    assert writer.exitcode == 0
    assert errors == []
    assert len(seen) > 1
