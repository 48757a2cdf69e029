"""Sharded search (engine.distributed): the format, the merge, and real gloo process
groups of 2 and 4 ranks compared with one index; faults (a shard failing its checks, a
rank killed mid-search, a rank that stalls) end in an error on every surviving rank."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import Index, QNet, synthetic
from engine.cli import main as cli_main
from engine.distributed import (ShardCheckError, ShardedSearcher, is_sharded, join_shards, merge_topk,
                                read_sharded_manifest, shard_index, shards_of_rank)
from engine.storage import IndexFormatError, SaveTargetError

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "dist_worker.py"
DIMS = [32, 32, 32, 1]


# ---------------------------------------------------------------------------- launching ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(world: int, port: int, rank: int) -> dict:
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
               RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def launch(spec: dict, world: int, out: Path, *, timeout: float = 240, survivors=None):
    """Run ``world`` ranks of the worker on ``spec``; wait for the ranks in ``survivors``
    (default all) at most ``timeout`` s, then kill whatever still runs. Returns
    ``(return codes, {rank: results}, wall seconds, logs)``."""
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(spec, out=str(out))
    (out / "spec.json").write_text(json.dumps(spec))
    port = _free_port()
    logs = [open(out / f"log{r}.txt", "w") for r in range(world)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(out / "spec.json")], env=_env(world, port, r),
                              cwd=REPO, stdout=logs[r], stderr=subprocess.STDOUT) for r in range(world)]
    survivors = range(world) if survivors is None else survivors
    try:
        for r in survivors:
            procs[r].wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        pass
    wall = time.perf_counter() - t0
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for f in logs:
        f.close()
    text = {r: (out / f"log{r}.txt").read_text() for r in range(world)}
    results = {r: torch.load(out / f"rank{r}.pt") for r in range(world) if (out / f"rank{r}.pt").exists()}
    return [p.returncode for p in procs], results, wall, text


def _same(res, ref):
    assert "error" not in res, res
    assert torch.equal(res["ids"], ref.ids)
    assert torch.equal(res["scores"], ref.scores)


# ---------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """A 240-row index with int ids; sharded unevenly in 4 (one shard of 7 rows, one
    empty) with graphs, and evenly in 2; a copy of the even one with a damaged shard."""
    d = tmp_path_factory.mktemp("syn")
    x = synthetic.vectors(240, 32, seed=5)
    src = Index.from_vectors(x, (np.arange(240) * 7 + 1000).astype(np.int64))
    src.save(d / "src")
    shard_index(src, d / "uneven", sizes=[100, 7, 0, 133], graph=8, codes=16)
    shard_index(d / "src", d / "two", num_shards=2)
    shutil.copytree(d / "two", d / "bad")
    with open(d / "bad" / "shard-00001" / "vectors.bin", "r+b") as f:
        f.truncate(100)
    q16 = synthetic.qnets(16, DIMS, seed=6)
    q16.save(d / "q16.safetensors")
    q16[:1].save(d / "q1.safetensors")
    return d, src, {"q16": QNet.load(d / "q16.safetensors"), "q1": QNet.load(d / "q1.safetensors")}


def _suite_jobs():
    jobs = []
    for ix in ("uneven", "two"):
        for qn in ("q1", "q16"):
            for k in (1, 10, 150, 300):  # 150 exceeds every shard, 300 the corpus
                jobs.append({"name": f"{ix}-{qn}-{k}", "index": ix, "qnets": qn, "k": k})
    jobs += [
        {"name": "given-everywhere", "index": "uneven", "qnets": "q16", "k": 10, "src": None},
        {"name": "from-rank-1", "index": "uneven", "qnets": "q16", "k": 20, "src": 1},
        {"name": "graph", "index": "uneven", "qnets": "q16", "k": 10, "mode": "graph", "options": {"ef": 16}},
        {"name": "ids", "index": "uneven", "qnets": "q16", "k": 5, "external_ids": True},
        {"name": "k0", "index": "uneven", "qnets": "q16", "k": 0},
        {"name": "no-graph", "index": "two", "qnets": "q16", "k": 5, "mode": "graph"},
        {"name": "disagree", "index": "uneven", "qnets": "q16", "k": 5, "src": None, "k_by_rank": True},
        {"name": "after-errors", "index": "uneven", "qnets": "q1", "k": 3},
    ]
    return jobs


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_search_equals_one_index(syn, tmp_path, world):
    d, src, q = syn
    spec = {"scenario": "suite", "timeout": 60,
            "indexes": {name: str(d / name) for name in ("uneven", "two", "bad")},
            "qnets": {name: str(d / f"{name}.safetensors") for name in ("q1", "q16")}, "jobs": _suite_jobs()}
    codes, results, _, logs = launch(spec, world, tmp_path)
    assert codes == [0] * world, logs
    one = ShardedSearcher.open(d / "uneven")  # the same shards in this one process
    graph_ref = one.search(q["q16"], 10, mode="graph", ef=16)
    for r in range(world):
        res = results[r]
        for job in _suite_jobs()[:16]:
            _same(res[job["name"]], src.search(q[job["qnets"]], job["k"]))
        _same(res["given-everywhere"], src.search(q["q16"], 10))
        _same(res["from-rank-1"], src.search(q["q16"], 20))
        _same(res["after-errors"], src.search(q["q1"], 3))
        _same(res["graph"], graph_ref)
        assert res["ids"]["external_ids"] == src.external_ids(src.search(q["q16"], 5).ids)
        assert res["k0"]["error"] == "ValueError" and "k must be positive" in res["k0"]["message"]
        assert res["no-graph"]["error"] == "ValueError" and "shards [0, 1] have none" in res["no-graph"]["message"]
        assert res["disagree"]["error"] == "ValueError" and "different searches" in res["disagree"]["message"]
        # A damaged shard: every rank refuses to open the index, naming the shard.
        bad = res["open:bad"]
        assert bad["error"] == "ShardCheckError", bad
        assert "shard 1" in bad["message"] and "vectors.bin" in bad["message"]
        # Every document of every shard was scored exactly once.
        assert res["uneven-q16-10"]["documents_scored"] == 16 * 240


def test_rank_killed_mid_search_fails_every_other_rank(syn, tmp_path):
    d, _, _ = syn
    spec = {"scenario": "kill", "victim": 1, "timeout": 30, "indexes": {"uneven": str(d / "uneven")},
            "qnets": {"q16": str(d / "q16.safetensors")},
            "jobs": [{"name": "s", "index": "uneven", "qnets": "q16", "k": 10}]}
    codes, results, wall, logs = launch(spec, 3, tmp_path, timeout=120, survivors=[0, 2])
    assert codes[1] == -signal.SIGKILL, logs
    for r in (0, 2):
        assert codes[r] == 0, logs[r]
        err = results[r]["s"]
        assert err["error"] == "ShardedSearchError", err
        assert "no result is returned" in err["message"] and "a peer rank died" in err["message"]
        assert "ids" not in results[r]["s"]
    assert wall < 60, f"the surviving ranks took {wall:.0f} s to fail"


def test_rank_that_stalls_fails_the_others_within_the_timeout(syn, tmp_path):
    d, _, _ = syn
    spec = {"scenario": "stall", "victim": 1, "timeout": 4, "indexes": {"uneven": str(d / "uneven")},
            "qnets": {"q16": str(d / "q16.safetensors")},
            "jobs": [{"name": "s", "index": "uneven", "qnets": "q16", "k": 10}]}
    codes, results, wall, logs = launch(spec, 2, tmp_path, timeout=120, survivors=[0])
    assert codes[0] == 0, logs[0]
    err = results[0]["s"]
    assert err["error"] == "ShardedSearchError" and "4 s" in err["message"], err
    assert results[0]["seconds"] < 30


def test_sharded_graph_recall_on_debian(debian_dir, tmp_path):
    """Sharded graph search (2 gloo ranks, a graph per shard) keeps the single index's
    recall@10 against exact search, within 0.02."""
    x = torch.from_numpy(np.load(debian_dir / "docs.f16.npy"))
    q = QNet.load(debian_dir / "qnets.dev64.safetensors", dtype=torch.float32)[:16]
    q.save(tmp_path / "q.safetensors")
    single = Index.from_vectors(x)
    # Cluster-built graphs keep this test short; the shards are rebuilt the same way.
    single.build_graph(32, method="cluster", dims=96)
    truth = single.search(q, 10).ids
    one = single.search(q, 10, mode="graph")
    shard_index(single, tmp_path / "sharded", num_shards=2)
    m = read_sharded_manifest(tmp_path / "sharded")
    assert all(s.graph and s.codes for s in m.shards)
    params = Index.load(m.shard_dir(1)).graph_params  # rebuilt the way the source's graph was
    assert (params["method"], params["dims"], params["degree"]) == ("cluster", 96, 32)
    spec = {"scenario": "suite", "timeout": 120, "indexes": {"d": str(tmp_path / "sharded")},
            "qnets": {"q": str(tmp_path / "q.safetensors")},
            "jobs": [{"name": "g", "index": "d", "qnets": "q", "k": 10, "mode": "graph"}]}
    codes, results, _, logs = launch(spec, 2, tmp_path / "run")
    assert codes == [0, 0], logs

    def recall(ids):
        return float(np.mean([len(set(ids[i].tolist()) & set(truth[i].tolist())) / 10 for i in range(len(q))]))

    r_one, r_sharded = recall(one.ids), recall(results[0]["g"]["ids"])
    assert torch.equal(results[0]["g"]["ids"], results[1]["g"]["ids"])
    assert r_sharded >= r_one - 0.02, (r_one, r_sharded)
    assert r_one > 0.9, r_one


def test_torchrun_cli_prints_what_one_index_prints(syn, tmp_path, capsys):
    d, _, _ = syn
    env = _env(1, 0, 0)
    for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key)
    base = ["--qnets", str(d / "q16.safetensors"), "-k", "7", "--queries", "3"]
    assert cli_main(["search", "--index", str(d / "src"), *base]) == 0
    one = capsys.readouterr()
    run = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "engine", "search"]
    two = subprocess.run(run + ["--index", str(d / "uneven"), *base], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=180)
    assert two.returncode == 0, two.stderr
    lines = lambda s: [x for x in s.splitlines() if " search: " not in x]  # noqa: E731 (timing line)
    assert lines(two.stdout) == lines(one.out)
    assert "2 ranks" in two.stdout.splitlines()[-1]
    # A damaged shard: the ranks report it on one line each and the launch fails (torchrun
    # ends the other ranks once one has failed, so not every rank may get to print).
    bad = subprocess.run(run + ["--index", str(d / "bad"), *base], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=180)
    assert bad.returncode != 0
    errors = [x for x in bad.stderr.splitlines() if x.startswith("error: ")]
    assert errors and all("shard 1" in e and "vectors.bin" in e for e in errors), bad.stderr


def test_shard_command(syn, tmp_path, capsys):
    d, _, _ = syn
    assert cli_main(["shard", str(d / "src"), str(tmp_path / "s"), "--shards", "3"]) == 0
    assert "3 shards" in capsys.readouterr().out
    m = read_sharded_manifest(tmp_path / "s")
    assert [s.count for s in m.shards] == [80, 80, 80] and m.ids == "int"
    assert cli_main(["info", str(tmp_path / "s"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "3 shards" in out and "rows 160..240 Index(n=80" in out and "checksums: ok" in out
    assert cli_main(["shard", str(tmp_path / "j"), "--join", str(tmp_path / "s" / "shard-00002"),
                     str(tmp_path / "s" / "shard-00000")]) == 0
    assert [s.offset for s in read_sharded_manifest(tmp_path / "j").shards] == [0, 80]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # argparse: one of --shards, --sizes, --join is required
        cli_main(["shard", str(d / "src"), str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "--shards" in err
    assert cli_main(["shard", str(d / "src"), str(tmp_path / "x"), "--sizes", "1,a"]) == 2
    assert "--sizes must be" in capsys.readouterr().err


# ---------------------------------------------------------------------------- one process
def test_merge_topk_rule():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        Q, m, k = 3, int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 50, (1,), generator=g))
        # Few distinct scores: many ties; some empty slots; rows unique per query.
        scores = torch.randint(0, 4, (Q, m), generator=g).float()
        rows = torch.stack([torch.randperm(1000, generator=g)[:m] for _ in range(Q)])
        rows[torch.rand(Q, m, generator=g) < 0.2] = -1
        s, r = merge_topk(scores, rows, k)
        for qi in range(Q):
            docs = sorted((-float(scores[qi, j]), int(rows[qi, j])) for j in range(m) if rows[qi, j] >= 0)[:k]
            want_r = [b for _, b in docs] + [-1] * (k - len(docs))
            want_s = [-a for a, _ in docs] + [float("-inf")] * (k - len(docs))
            assert r[qi].tolist() == want_r and s[qi].tolist() == want_s


def test_one_process_searcher_equals_index(syn):
    d, src, q = syn
    one = ShardedSearcher.open(d / "uneven", populate=True)
    assert sorted(one.local) == [0, 1, 2, 3] and len(one) == 240
    for k in (1, 7, 101, 241):
        r, ref = one.search(q["q16"], k), src.search(q["q16"], k)
        assert torch.equal(r.ids, ref.ids) and torch.equal(r.scores, ref.scores)
    assert one.external_ids(torch.tensor([[239, -1, 0]])) == [[239 * 7 + 1000, None, 1000]]
    with pytest.raises(ValueError, match="out of range"):
        one.external_ids(torch.tensor([240]))
    with pytest.raises(ValueError, match="dimension mismatch"):
        one.search(synthetic.qnets(2, [16, 1]), 3)
    with pytest.raises(TypeError, match="unexpected options for exact search"):
        one.search(q["q1"], 3, ef=3)


def test_shards_of_rank_cover_every_shard_once():
    for shards in range(1, 9):
        for size in range(1, 9):
            got = [i for r in range(size) for i in shards_of_rank(shards, size, r)]
            assert got == list(range(shards))


def test_manifest_checks(syn, tmp_path):
    d, _, _ = syn
    shutil.copytree(d / "two", tmp_path / "t")
    path = tmp_path / "t" / "manifest.json"
    good = json.loads(path.read_text())
    assert is_sharded(tmp_path / "t") and not is_sharded(d / "src")
    with pytest.raises(IndexFormatError, match="is a sharded index"):
        Index.load(tmp_path / "t")
    with pytest.raises(IndexFormatError, match="ordinary index"):
        read_sharded_manifest(d / "src")
    for edit, field in ((lambda m: m["shards"][1].update(offset=5), r"shards\[1\].offset"),
                        (lambda m: m.update(count=7), "'count'"),
                        (lambda m: m["shards"][0].update(manifest_sha256="x"), "manifest_sha256"),
                        (lambda m: m["shards"][0].update(graph=1), r"shards\[0\].graph"),
                        (lambda m: m.update(shards=[]), "'shards'"),
                        (lambda m: m.update(version=9), "version")):
        m = json.loads(json.dumps(good))
        edit(m)
        path.write_text(json.dumps(m))
        with pytest.raises(IndexFormatError, match=field):
            read_sharded_manifest(tmp_path / "t")
    # A shard rebuilt after the manifest was written fails its checksum.
    path.write_text(json.dumps(good))
    shard_manifest = tmp_path / "t" / "shard-00000" / "manifest.json"
    shard_manifest.write_text(json.dumps(json.loads(shard_manifest.read_text()), indent=2))
    with pytest.raises(ShardCheckError, match="shard 0 .*SHA-256"):
        ShardedSearcher.open(tmp_path / "t")


def test_shard_index_arguments_and_targets(syn, tmp_path):
    d, src, _ = syn
    with pytest.raises(ValueError, match="add up to 10 rows"):
        shard_index(src, tmp_path / "a", sizes=[5, 5])
    with pytest.raises(TypeError, match="exactly one"):
        shard_index(src, tmp_path / "a")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep")
    with pytest.raises(SaveTargetError):
        shard_index(src, tmp_path / "user", num_shards=2)
    assert (tmp_path / "user" / "notes.txt").read_text() == "keep"
    # A sharded index is replaced by another; more shards than rows leave empty ones.
    shard_index(src, tmp_path / "s", num_shards=2)
    m = shard_index(Index.from_vectors(src.vectors[:5]), tmp_path / "s", num_shards=8)
    assert [s.count for s in m.shards] == [1] * 5 + [0] * 3 and len(os.listdir(tmp_path / "s")) == 9
    with pytest.raises(ValueError, match="has dim 16, the first shard"):
        Index.from_vectors(torch.zeros(3, 16)).save(tmp_path / "narrow")
        join_shards(tmp_path / "j", [d / "two" / "shard-00000", tmp_path / "narrow"])


def test_empty_index_with_graph_round_trips(tmp_path):
    ix = Index.from_vectors(torch.empty(0, 8))
    ix.set_graph(torch.empty(0, 4, dtype=torch.int32), {})
    ix.save(tmp_path / "e")
    back = Index.load(tmp_path / "e", verify=True)
    assert len(back) == 0 and back.graph.shape == (0, 4)
