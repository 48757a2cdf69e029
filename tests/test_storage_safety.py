"""Saving never destroys data; loading refuses malformed manifests and non-regular files."""

import fcntl
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from engine import Index, synthetic
from engine.storage import IndexFormatError, SaveTargetError


def small(n=50, seed=0):
    return Index.from_vectors(synthetic.vectors(n, 8, seed=seed))


# ------------------------------------------------------------------------------- saving
def test_save_refuses_a_directory_of_user_files(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(SaveTargetError, match="not an index"):
        small().save(d)
    assert (d / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(os.listdir(tmp_path)) == ["photos"]  # nothing left beside it either


def test_save_refuses_a_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    with pytest.raises(SaveTargetError, match="not a directory"):
        small().save(f)
    assert f.read_text() == "keep me"


def test_save_refuses_the_current_directory_and_an_empty_path(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="empty"):
        small().save("")
    for p in (".", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(SaveTargetError, match="current directory"):
            small().save(p)
    assert os.listdir(tmp_path) == ["mine.txt"]
    with pytest.raises(TypeError, match="path"):
        small().save(42)


def test_save_refuses_an_index_holding_files_it_does_not_list(tmp_path):
    small().save(tmp_path / "idx")
    (tmp_path / "idx" / "my-notes.txt").write_text("x")
    with pytest.raises(SaveTargetError, match="not list"):
        small(seed=1).save(tmp_path / "idx")
    assert (tmp_path / "idx" / "my-notes.txt").read_text() == "x"


def test_save_into_an_empty_directory_and_over_an_index(tmp_path):
    (tmp_path / "empty").mkdir()
    a, b = small(seed=1), small(n=30, seed=2)
    a.save(tmp_path / "empty")
    assert torch.equal(Index.load(tmp_path / "empty").vectors, a.vectors)
    b.save(tmp_path / "empty")  # now an index of ours: replaced
    assert torch.equal(Index.load(tmp_path / "empty", verify=True).vectors, b.vectors)


def test_symlink_to_an_index_stays_a_symlink(tmp_path):
    real = tmp_path / "store" / "idx-v1"
    small(seed=1).save(real)
    link = tmp_path / "current"
    link.symlink_to(real)
    new = small(n=20, seed=3)
    new.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert torch.equal(Index.load(real, verify=True).vectors, new.vectors)
    assert sorted(os.listdir(tmp_path)) == ["current", "store"]
    assert sorted(os.listdir(tmp_path / "store")) == ["idx-v1"]  # no leftovers beside it


def test_dangling_symlink_names_where_to_write(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "later")
    small().save(link)
    assert link.is_symlink() and len(Index.load(tmp_path / "later")) == 50


def test_symlink_to_a_user_directory_is_refused(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a")
    (tmp_path / "link").symlink_to(tmp_path / "docs")
    with pytest.raises(SaveTargetError):
        small().save(tmp_path / "link")
    assert os.listdir(tmp_path / "docs") == ["a.txt"]


def test_leftovers_of_dead_writers_are_removed_by_the_next_save(tmp_path):
    small().save(tmp_path / "idx")
    for name in (".idx.tmp-999999-aaaa", ".idx.old-999999-bbbb", f".idx.tmp-{os.getpid()}-cccc"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vectors.bin").write_bytes(b"junk")
    live = tmp_path / ".idx.tmp-1-dddd"  # a writer still at work holds its lock
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        small(seed=4).save(tmp_path / "idx")
        assert sorted(os.listdir(tmp_path)) == [".idx.tmp-1-dddd", "idx"]
    finally:
        os.close(fd)
    small(seed=5).save(tmp_path / "idx")
    assert os.listdir(tmp_path) == ["idx"]


def test_failed_write_leaves_the_old_index_and_no_leftovers(tmp_path):
    from engine.index import write_index_files

    old = small(seed=1)
    old.save(tmp_path / "idx")

    def chunks():
        yield torch.zeros(10, 8)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_index_files(tmp_path / "idx", chunks(), 50, 8, "float32")
    assert os.listdir(tmp_path) == ["idx"]
    assert torch.equal(Index.load(tmp_path / "idx", verify=True).vectors, old.vectors)


# ------------------------------------------------------------------------------- loading
def _load_in_child(path, timeout=60):
    """Load in a subprocess so that a blocking open fails the test instead of hanging it."""
    code = textwrap.dedent(f"""
        from engine import Index
        try:
            Index.load({str(path)!r}, verify=True)
        except ValueError as e:
            print(type(e).__name__, e)
        else:
            print("loaded")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return r.stdout.strip() + r.stderr.strip()


@pytest.mark.parametrize("name", ["vectors.bin", "manifest.json"])
def test_fifo_in_an_index_is_refused_not_blocking(tmp_path, name):
    small().save(tmp_path / "idx")
    os.remove(tmp_path / "idx" / name)
    os.mkfifo(tmp_path / "idx" / name)
    out = _load_in_child(tmp_path / "idx")
    assert out.startswith("IndexFormatError") and "not a regular file" in out and name in out, out


@pytest.mark.parametrize("name", ["vectors.bin", "manifest.json"])
def test_directory_in_place_of_a_file_is_refused(tmp_path, name):
    small().save(tmp_path / "idx")
    os.remove(tmp_path / "idx" / name)
    os.mkdir(tmp_path / "idx" / name)
    with pytest.raises(IndexFormatError, match="directory"):
        Index.load(tmp_path / "idx")


def test_interrupted_fallback_save_is_pointed_at(tmp_path):
    small().save(tmp_path / "idx")
    os.rename(tmp_path / "idx", tmp_path / ".idx.old-123-abcd")
    with pytest.raises(FileNotFoundError, match="interrupted save"):
        Index.load(tmp_path / "idx")


def _mutate(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _set(keys, value):
    def fn(m):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


@pytest.mark.parametrize("keys,value,field", [
    (["count"], True, "count"),
    (["count"], "50", "count"),
    (["count"], -1, "count"),
    (["dim"], 0, "dim"),
    (["dim"], 8.0, "dim"),
    (["dtype"], ["float32"], "dtype"),
    (["ids"], None, "ids"),
    (["files"], [], "files"),
    (["graph"], [1, 2], "graph"),
    (["version"], "1", "version"),
    (["files", "vectors.bin"], "vectors.bin", "vectors.bin"),
    (["files", "vectors.bin", "size"], "1600", "size"),
    (["files", "vectors.bin", "size"], 10**30, "size"),
    (["files", "vectors.bin", "shape"], [50, -8], "shape"),
    (["files", "vectors.bin", "shape"], [[50], 8], "shape"),
    (["files", "vectors.bin", "shape"], [2**62, 2**62], "vectors.bin"),
    (["files", "vectors.bin", "dtype"], "float64", "dtype"),
    (["files", "vectors.bin", "sha256"], None, "sha256"),
    (["files", "other.bin"], {"size": 0}, "other.bin"),
])
def test_malformed_manifest_field_is_an_index_format_error(tmp_path, keys, value, field):
    small().save(tmp_path / "idx")
    _mutate(tmp_path / "idx", _set(keys, value))
    with pytest.raises(IndexFormatError, match=field.replace(".", r"\.")):
        Index.load(tmp_path / "idx")


def test_malformed_graph_entry(tmp_path):
    idx = small()
    idx.set_graph(torch.zeros(50, 2, dtype=torch.int32), {"degree": 2})
    idx.save(tmp_path / "idx")
    for value, field in (({"degree": "2"}, "graph.degree"), ({"degree": 2, "params": [1]}, "graph.params"),
                         ({"degree": 3}, "graph.i32.bin")):
        _mutate(tmp_path / "idx", _set(["graph"], value))
        with pytest.raises(IndexFormatError, match=field.replace(".", r"\.")):
            Index.load(tmp_path / "idx")


def test_absurdly_nested_manifest(tmp_path):
    small().save(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(IndexFormatError, match="JSON"):
        Index.load(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(IndexFormatError, match="JSON"):
        Index.load(tmp_path / "idx")
