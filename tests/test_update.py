"""Incremental updates: add, delete (tombstones), compact, in memory and on disk, against
an index built from scratch on the same rows; crashes and concurrent writers."""

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from engine import Index, synthetic, storage
from engine.graph.insert import Rows, insert

DIM = 32


def corpus(n=600, seed=0):
    return synthetic.vectors(n, DIM, seed=seed)


def qnets(nq=8):
    return synthetic.qnets(nq, [DIM, 32, 1], seed=3)


def ids_of(n):
    return np.arange(n, dtype=np.int64) * 3 + 5


def neighbour_sets_equal(a, b):
    return np.mean([set(x.tolist()) == set(y.tolist()) for x, y in zip(a, b)])


def recall(found, truth, k=10):
    return sum(len(set(a[:k]) & set(b[:k])) for a, b in zip(found.tolist(), truth.tolist())) / (k * len(truth))


# ------------------------------------------------------------------------------- add
def test_exact_search_after_add_equals_a_fresh_index():
    x, ids = corpus(), ids_of(600)
    idx = Index.from_vectors(x[:500], ids=ids[:500])
    idx.add(x[500:550], ids[500:550])
    idx.add(x[550:], ids[550:])
    fresh = Index.from_vectors(x, ids=ids)
    q = qnets()
    a, b = idx.search(q, 20), fresh.search(q, 20)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    assert idx.external_ids(a.ids) == fresh.external_ids(b.ids)


def test_exact_insertion_gives_the_rebuilt_graph():
    x = corpus(700)
    full = Index.from_vectors(x).build_graph(16, codes=False)
    part = Index.from_vectors(x[:560]).build_graph(16, codes=False)
    part.add(x[560:], method="exact")
    assert part.graph.shape == full.graph.shape
    assert neighbour_sets_equal(part.graph, full.graph) >= 0.99


def test_search_insertion_keeps_graph_search_recall():
    x = corpus(3000, seed=2)
    q = synthetic.qnets(16, [DIM, 32, 1], seed=5, corpus_seed=2)
    full = Index.from_vectors(x).build_graph(16)
    part = Index.from_vectors(x[:2700]).build_graph(16)
    part.add(x[2700:], method="search")
    truth = full.search(q, 10).ids
    r_full = recall(full.search(q, 10, mode="graph", ef=8).ids, truth)
    r_part = recall(part.search(q, 10, mode="graph", ef=8).ids, truth)
    assert r_part >= r_full - 0.05, (r_part, r_full)
    # The inserted lists are mostly the true neighbours.
    assert neighbour_sets_equal(part.graph[2700:], full.graph[2700:]) > 0.5
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 16 for a, b in zip(part.graph, full.graph)])
    assert overlap > 0.9


def test_insert_rows_over_pieces_equals_one_tensor():
    x = corpus(300)
    g = Index.from_vectors(x[:250]).build_graph(8, codes=False).graph
    assert torch.equal(insert(Rows(x[:250], x[250:]), g, method="exact"), insert(Rows(x), g, method="exact"))


def test_appended_codes_are_encoded_with_the_stored_quantisers():
    x = corpus(333)
    full = Index.from_vectors(x).build_codes(16).codes
    head = full.select(torch.arange(250))
    grown = head.appended(Rows(x).slice, 333)
    assert torch.equal(grown.codes, full.codes)
    assert torch.equal(head.codes, Index.from_vectors(x).build_codes(16).codes.select(torch.arange(250)).codes)


@pytest.mark.parametrize("kind", ["int", "str", "none"])
def test_add_on_disk_appends_and_reopens_verified(tmp_path, kind):
    x = corpus(400)
    ids = {"int": ids_of(400), "str": [f"d{i}" for i in range(400)], "none": None}[kind]
    part = lambda a, b: None if ids is None else ids[a:b]  # noqa: E731
    p = tmp_path / "idx"
    Index.from_vectors(x[:300], ids=part(0, 300)).build_graph(8).save(p)
    ino = os.stat(p / "vectors.bin").st_ino
    idx = Index.load(p)
    idx.add(x[300:350], part(300, 350))
    idx.add(x[350:], part(350, 400))
    assert os.stat(p / "vectors.bin").st_ino == ino  # appended, never rewritten
    back = Index.load(p, verify=True)
    mem = Index.from_vectors(x[:300], ids=part(0, 300)).build_graph(8)
    mem.add(x[300:350], part(300, 350))
    mem.add(x[350:], part(350, 400))
    assert torch.equal(back.vectors, x) and torch.equal(back.graph, mem.graph) and torch.equal(idx.graph, mem.graph)
    assert torch.equal(back.codes.codes, mem.codes.codes)
    assert back.external_ids(torch.arange(400)) == mem.external_ids(torch.arange(400))
    m = json.loads((p / "manifest.json").read_text())
    assert m["version"] == 3 and len(m["files"]["vectors.bin"]["parts"]) == 3
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]
    q = qnets()
    assert torch.equal(back.search(q, 10, mode="graph").ids, mem.search(q, 10, mode="graph").ids)


def test_readers_of_the_old_version_keep_their_rows(tmp_path):
    x = corpus(300)
    p = tmp_path / "idx"
    Index.from_vectors(x[:200]).build_graph(8).save(p)
    reader, writer = Index.load(p), Index.load(p)
    q = qnets()
    before = reader.search(q, 10)
    writer.add(x[200:])
    after = reader.search(q, 10)
    assert len(reader) == 200 and torch.equal(before.ids, after.ids) and torch.equal(before.scores, after.scores)
    assert len(Index.load(p, verify=True)) == 300


def test_an_old_format_index_is_copied_once_then_appended(tmp_path):
    x = corpus(200)
    p = tmp_path / "idx"
    Index.from_vectors(x[:150]).save(p)
    m = json.loads((p / "manifest.json").read_text())
    e = m["files"]["vectors.bin"]
    e.pop("parts")
    e["sha256"] = storage.sha256_file(str(p / "vectors.bin"))
    m["version"] = 2
    (p / "manifest.json").write_text(json.dumps(m))
    idx = Index.load(p, verify=True)
    idx.add(x[150:180])
    idx.add(x[180:])
    assert torch.equal(Index.load(p, verify=True).vectors, x)


def test_add_refuses_bad_input():
    x = corpus(100)
    idx = Index.from_vectors(x[:80], ids=ids_of(80))
    with pytest.raises(ValueError, match="dimension mismatch"):
        idx.add(torch.zeros(2, DIM + 1), [1000, 1001])
    with pytest.raises(TypeError, match="float16"):
        idx.add(x[80:82].half(), [1000, 1001])
    with pytest.raises(ValueError, match="NaN or Inf.*row 1"):
        idx.add(torch.stack([x[80], torch.full((DIM,), float("nan"))]), [1000, 1001])
    with pytest.raises(ValueError, match="got 1 ids for 2 vectors"):
        idx.add(x[80:82], [1000])
    with pytest.raises(TypeError, match="stores int ids"):
        idx.add(x[80:82], ["a", "b"])
    with pytest.raises(TypeError, match="pass one id"):
        idx.add(x[80:82])
    with pytest.raises(ValueError, match="2-D"):
        idx.add(x[80], [1])
    with pytest.raises(ValueError, match="on_existing"):
        idx.add(x[80:82], [1000, 1001], on_existing="merge")
    with pytest.raises(TypeError, match="no ids"):
        Index.from_vectors(x).add(x[:1], [1])
    assert len(idx) == 80


def test_existing_ids_error_replace_or_append():
    x = corpus(100)
    idx = Index.from_vectors(x[:80], ids=ids_of(80))
    existing = int(ids_of(80)[3])
    with pytest.raises(ValueError, match=f"id {existing} is already in the index"):
        idx.add(x[80:82], [existing, 10_000])
    with pytest.raises(ValueError, match="repeated"):
        idx.add(x[80:82], [10_000, 10_000])
    assert len(idx) == 80
    idx.add(x[80:82], [existing, 10_000], on_existing="replace")
    assert len(idx) == 82 and idx.deleted.nonzero().flatten().tolist() == [3]
    idx.add(x[82:83], [10_000], on_existing="append")
    assert len(idx) == 83 and int(idx.deleted.sum()) == 1
    # A replaced id is live again: replacing it again hides the added row.
    idx.add(x[83:84], [existing], on_existing="replace")
    assert idx.deleted.nonzero().flatten().tolist() == [3, 80]


# ------------------------------------------------------------------------------- delete
def test_delete_sets_tombstones_and_persists_them(tmp_path):
    x = corpus(200)
    p = tmp_path / "idx"
    Index.from_vectors(x, ids=[f"d{i}" for i in range(200)]).build_graph(8).save(p)
    idx = Index.load(p)
    assert idx.deleted is None
    assert idx.delete(["d3", "d7"]) == 2
    assert idx.delete(["d3", "d9"], missing_ok=True) == 1
    with pytest.raises(ValueError, match="'d3' is not a live document"):
        idx.delete(["d3"])
    with pytest.raises(TypeError, match="sequence"):
        idx.delete("d4")
    back = Index.load(p, verify=True)
    assert back.deleted.dtype == torch.bool and back.deleted.shape == (200,)
    assert back.deleted.nonzero().flatten().tolist() == [3, 7, 9] == idx.deleted.nonzero().flatten().tolist()
    assert json.loads((p / "manifest.json").read_text())["deleted"] == {"count": 3}
    q = qnets()
    for mode in ("exact", "graph"):
        found = back.search(q, 100, mode=mode).ids
        assert not set(found.flatten().tolist()) & {3, 7, 9}, mode


def test_delete_by_row_without_ids():
    idx = Index.from_vectors(corpus(50))
    assert idx.delete([4, 4, 9]) == 2
    with pytest.raises(ValueError, match="out of range"):
        idx.delete([50])
    assert idx.deleted.nonzero().flatten().tolist() == [4, 9]


def test_deleted_ids_never_appear_in_results():
    x = corpus(600)
    idx = Index.from_vectors(x, ids=ids_of(600)).build_graph(16)
    q = qnets()
    top = idx.search(q, 5).ids
    gone = sorted(set(top.flatten().tolist()))
    idx.delete(ids_of(600)[gone])
    for mode in ("exact", "graph"):
        found = idx.search(q, 50, mode=mode).ids
        assert not set(found.flatten().tolist()) & set(gone), mode


# ------------------------------------------------------------------------------- compact
@pytest.mark.parametrize("on_disk", [False, True])
def test_compaction_keeps_the_live_rows_results(tmp_path, on_disk):
    x = corpus(500)
    ids = ids_of(500)
    idx = Index.from_vectors(x, ids=ids).build_graph(16)
    codes_before = idx.codes
    if on_disk:
        idx.save(tmp_path / "idx")
        idx = Index.load(tmp_path / "idx")
    rng = np.random.default_rng(0)
    gone = np.sort(rng.choice(500, size=60, replace=False))
    idx.delete(ids[gone])
    idx.compact()
    live = np.setdiff1d(np.arange(500), gone)
    assert len(idx) == 440 and idx.deleted is None
    fresh = Index.from_vectors(x[live], ids=ids[live])
    q = qnets()
    a, b = idx.search(q, 20), fresh.search(q, 20)
    assert torch.equal(a.scores, b.scores) and idx.external_ids(a.ids) == fresh.external_ids(b.ids)
    assert torch.equal(idx.codes.codes, codes_before.select(torch.from_numpy(live)).codes)
    g = idx.graph
    assert int(g.min()) >= 0 and int(g.max()) < 440  # every list full, no link to a removed row
    rebuilt = Index.from_vectors(x[live]).build_graph(16, codes=False).graph
    overlap = np.mean([len(set(u.tolist()) & set(v.tolist())) / 16 for u, v in zip(g, rebuilt)])
    assert overlap > 0.9  # two hops find most of what a rebuild does
    truth = fresh.search(q, 10).ids
    assert recall(idx.search(q, 10, mode="graph").ids, truth) >= 0.9
    if on_disk:
        back = Index.load(tmp_path / "idx", verify=True)
        assert torch.equal(back.graph, g) and back.deleted is None and len(back) == 440


def test_compact_command(tmp_path):
    x = corpus(100)
    p = tmp_path / "idx"
    idx = Index.from_vectors(x).build_graph(8)
    idx.save(p)
    Index.load(p).delete([1, 2, 3])
    out = subprocess.run([sys.executable, "-m", "engine", "compact", str(p)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    assert "3 deleted rows removed, 97 kept" in out.stdout
    assert len(Index.load(p, verify=True)) == 97


# ------------------------------------------------------------------------------- atomicity
_CHILD = textwrap.dedent("""
    import sys, torch
    from engine import Index, synthetic
    path, op = sys.argv[1], sys.argv[2]
    x = synthetic.vectors(260, 32, seed=0)
    idx = Index.load(path)
    if op == "add":
        idx.add(x[200:260], list(range(1200, 1260)))
    else:
        idx.compact()
    print("done")
""")


def _run_child(path, op, point):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), storage.CRASH_ENV: point}
    return subprocess.run([sys.executable, "-c", _CHILD, str(path), op], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("point", ["after-append", "files-written", "before-manifest", "before-swap", "after-swap"])
def test_killed_add_leaves_an_intact_index(tmp_path, point):
    x = corpus(260)
    p = tmp_path / "idx"
    Index.from_vectors(x[:200], ids=list(range(1000, 1200))).build_graph(8).save(p)
    r = _run_child(p, "add", point)
    assert r.returncode == -9, r.stderr
    back = Index.load(p, verify=True)
    assert len(back) == (260 if point == "after-swap" else 200)
    assert torch.equal(back.vectors, x[: len(back)])
    # The next writer finishes the job over what the dead one left.
    if len(back) == 200:
        back.add(x[200:260], list(range(1200, 1260)))
    back.add(x[:1] + 1, [5000])
    again = Index.load(p, verify=True)
    assert len(again) == 261 and torch.equal(again.vectors[:260], x)
    assert sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]


@pytest.mark.parametrize("point", ["before-manifest", "before-swap", "after-swap"])
def test_killed_compaction_leaves_an_intact_index(tmp_path, point):
    x = corpus(200)
    p = tmp_path / "idx"
    Index.from_vectors(x, ids=list(range(1000, 1200))).build_graph(8).save(p)
    Index.load(p).delete([1000, 1001])
    r = _run_child(p, "compact", point)
    assert r.returncode == -9, r.stderr
    back = Index.load(p, verify=True)
    if point == "after-swap":
        assert len(back) == 198 and back.deleted is None
    else:
        assert len(back) == 200 and back.deleted.nonzero().flatten().tolist() == [0, 1]
    back.compact()
    assert len(Index.load(p, verify=True)) == 198


def test_a_second_writer_is_refused(tmp_path):
    x = corpus(120)
    p = tmp_path / "idx"
    Index.from_vectors(x[:100]).save(p)
    idx = Index.load(p)
    with storage.writer_lock(storage.save_target(p)):
        with pytest.raises(storage.IndexBusyError, match="another writer"):
            idx.add(x[100:110])
    idx.add(x[100:110])
    stale = Index.load(p)
    Index.load(p).add(x[110:])
    with pytest.raises(storage.IndexChangedError, match="load it again"):
        stale.delete([0])
    assert len(Index.load(p, verify=True)) == 120


def test_concurrent_readers_see_whole_versions(tmp_path):
    x = corpus(400)
    p = tmp_path / "idx"
    Index.from_vectors(x[:200]).build_graph(8).save(p)
    q = qnets(2)
    errors, seen = [], set()
    stop = threading.Event()

    def read():
        while not stop.is_set():
            try:
                r = Index.load(p, verify=True)
                n = len(r)
                seen.add(n)
                got = r.search(q, 5)
                want = Index.from_vectors(x[:n]).search(q, 5)
                assert torch.equal(got.ids, want.ids), n
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

    t = threading.Thread(target=read)
    t.start()
    try:
        idx = Index.load(p)
        for s in range(200, 400, 20):
            idx.add(x[s : s + 20])
        idx.delete([0])
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert len(seen) >= 1


def test_shards_keep_their_rows_tombstones(tmp_path):
    from engine.distributed.split import shard_index

    idx = Index.from_vectors(corpus(100), ids=ids_of(100))
    idx.delete(ids_of(100)[[2, 70]])
    shard_index(idx, tmp_path / "sharded", 2, graph=False, codes=False)
    a, b = (Index.load(tmp_path / "sharded" / f"shard-0000{i}", verify=True) for i in range(2))
    assert a.deleted.nonzero().flatten().tolist() == [2] and b.deleted.nonzero().flatten().tolist() == [20]


# ------------------------------------------------------------------ quantised storage
@pytest.mark.parametrize("kind", ["int8", "float8_e4m3"])
@pytest.mark.parametrize("on_disk", [False, True])
def test_add_and_compact_on_quantised_storage_equal_a_fresh_index(tmp_path, kind, on_disk):
    x, ids = corpus(), ids_of(600)
    idx = Index.from_vectors(x[:500], ids=ids[:500], storage=kind).build_graph(16)
    if on_disk:
        idx.save(tmp_path / "idx")
        idx = Index.load(tmp_path / "idx")
    idx.add(x[500:], ids[500:])
    fresh = Index.from_vectors(x, ids=ids, storage=kind)
    # Rows are quantised one by one: the same bytes and scales as a build over all rows.
    assert torch.equal(idx.vectors.view(torch.uint8), fresh.vectors.view(torch.uint8))
    assert torch.equal(idx.scales, fresh.scales)
    q = qnets()
    a, b = idx.search(q, 20), fresh.search(q, 20)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    g = idx.search(q, 10, mode="graph", ef=32)
    assert recall(g.ids, b.ids) >= 0.9
    idx.delete(ids[::7].tolist())
    idx.compact()
    if on_disk:
        idx = Index.load(tmp_path / "idx", verify=True)
    keep = np.setdiff1d(np.arange(600), np.arange(0, 600, 7))
    live = Index.from_vectors(x[keep], ids=ids[keep], storage=kind)
    assert torch.equal(idx.scales, live.scales)
    a, b = idx.search(q, 20), live.search(q, 20)
    assert torch.equal(a.scores, b.scores) and idx.external_ids(a.ids) == live.external_ids(b.ids)


def test_add_to_quantised_storage_refuses_quantised_rows():
    idx = Index.from_vectors(corpus(), storage="int8")
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        idx.add(torch.zeros(3, DIM, dtype=torch.int8))
