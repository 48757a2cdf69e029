import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import engine
from engine import Index, synthetic
from engine.storage import IndexFormatError

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ids", ["none", "int", "str"])
def test_round_trip_bit_identical(tmp_path, dtype, ids):
    v = synthetic.vectors(1003, 24, seed=3, dtype=dtype)
    ext = {"none": None, "int": list(range(5000, 6003)), "str": [f"doc-é{i}" for i in range(1003)]}[ids]
    idx = Index.from_vectors(v, ext)
    g = torch.randint(0, 1003, (1003, 5), dtype=torch.int32)
    idx.set_graph(g, {"degree": 5, "metric": "l2"})
    idx.save(tmp_path / "i")
    back = Index.load(tmp_path / "i", verify=True)
    assert back.dtype == dtype and len(back) == 1003 and back.ids_kind == ids
    assert torch.equal(back.vectors.view(torch.uint8), v.view(torch.uint8))
    assert torch.equal(back.graph, g) and back.graph_params == {"degree": 5, "metric": "l2"}
    rows = torch.tensor([[0, 1002, -1]])
    want = {"none": [[0, 1002, None]], "int": [[5000, 6002, None]], "str": [["doc-é0", "doc-é1002", None]]}[ids]
    assert back.external_ids(rows) == want
    # Saving again over itself (from the memory map) is still identical.
    back.save(tmp_path / "i")
    again = Index.load(tmp_path / "i", verify=True)
    assert torch.equal(again.vectors.view(torch.uint8), v.view(torch.uint8))


def test_empty_index_round_trip(tmp_path):
    Index.from_vectors(torch.empty(0, 8)).save(tmp_path / "e")
    e = Index.load(tmp_path / "e", verify=True)
    assert len(e) == 0
    q = synthetic.qnets(2, [8, 8, 1])
    r = e.search(q, 3)
    assert r.ids.tolist() == [[-1] * 3] * 2 and torch.isinf(r.scores).all()


@pytest.fixture
def saved(tmp_path):
    idx = Index.from_vectors(synthetic.vectors(500, 16, seed=1), [f"d{i}" for i in range(500)])
    idx.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_truncated_file(saved):
    p = saved / "vectors.bin"
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 4)
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.load(saved)


def test_changed_byte_detected_with_verify(saved):
    p = saved / "vectors.bin"
    with open(p, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0x40]))
    Index.load(saved)  # sizes still match: without verification it opens
    with pytest.raises(IndexFormatError, match="SHA-256"):
        Index.load(saved, verify=True)


def test_unknown_version(saved):
    m = json.loads((saved / "manifest.json").read_text())
    m["version"] = 99
    (saved / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="version 99"):
        Index.load(saved)


@pytest.mark.parametrize("name", ["ids.utf8.bin", "vectors.bin", "manifest.json"])
def test_missing_file(saved, name):
    os.remove(saved / name)
    with pytest.raises(IndexFormatError, match="missing|no manifest"):
        Index.load(saved)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "nope")


def test_manifest_path_escape_rejected(saved):
    m = json.loads((saved / "manifest.json").read_text())
    m["files"]["../evil"] = {"size": 1, "sha256": "0"}
    (saved / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="invalid file name"):
        Index.load(saved)


def test_killed_save_leaves_previous_index(tmp_path):
    target = tmp_path / "idx"
    old = synthetic.vectors(1000, 32, seed=5)
    Index.from_vectors(old).save(target)
    # A child process saves a big index over it, slowly, and is killed midway.
    script = textwrap.dedent(
        f"""
        import sys, torch, time
        import engine.storage as st
        from engine.index import write_index_files
        def chunks():
            for i in range(400):
                yield torch.full((1000, 32), float(i))
                if i == 2:
                    print("writing", flush=True)
                time.sleep(0.01)
        write_index_files({str(target)!r}, chunks(), 400000, 32, "float32")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    back = Index.load(target, verify=True)
    assert torch.equal(back.vectors, old)
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".idx.tmp-")]
    assert len(leftovers) == 1  # the dead writer's partial directory, beside the index
    Index.from_vectors(old[:10]).save(target)  # the next save clears it
    assert [p for p in os.listdir(tmp_path) if p.startswith(".idx.")] == []
    assert len(Index.load(target, verify=True)) == 10


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_load_memory_maps(tmp_path):
    # 200k x 768 float16 = 293 MiB on disk; opening it must not read it in.
    synthetic.write_index(tmp_path / "big", 200_000, 768, dtype=torch.float16)
    before = _rss_mb()
    t0 = time.perf_counter()
    idx = Index.load(tmp_path / "big")
    assert time.perf_counter() - t0 < 2.0
    assert _rss_mb() - before < 64
    assert idx.vectors.shape == (200_000, 768)
    # Reading one block pages in just that block.
    assert torch.equal(idx.vectors[-5:], synthetic.vectors(200_000, 768, dtype=torch.float16)[-5:])


@pytest.mark.parametrize(
    "make,err,match",
    [
        (lambda: Index.from_vectors(torch.randn(4, 3).double()), TypeError, "dtype"),
        (lambda: Index.from_vectors(torch.randn(4)), ValueError, "2-D"),
        (lambda: Index.from_vectors(torch.tensor([[1.0, float("nan")]])), ValueError, "NaN"),
        (lambda: Index.from_vectors(torch.randn(4, 3), ids=["a", "b"]), ValueError, "ids"),
        (lambda: Index.from_vectors(torch.randn(2, 3), ids=["a", 1]), TypeError, "str or all int"),
        (lambda: Index.from_vectors(torch.randn(2, 3)).set_graph(torch.tensor([[5], [0]], dtype=torch.int32), {}), ValueError, "out of range"),
    ],
)
def test_index_validation(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_numpy_vectors_accepted():
    idx = Index.from_vectors(np.ones((3, 4), dtype=np.float16))
    assert idx.dtype == torch.float16
