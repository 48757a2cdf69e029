"""Every CLI error is one line on stderr and exit code 2: argparse's refusals, the
commands' own, and exceptions nobody expected; meaningless numbers are refused."""

import json
import subprocess
import sys

import numpy as np
import pytest

from engine import Index, synthetic
from engine.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-errors")
    np.save(d / "f32.npy", synthetic.vectors(50, 16, seed=1).numpy())
    np.save(d / "f64.npy", synthetic.vectors(50, 16, seed=1).numpy().astype(np.float64))
    np.save(d / "big.npy", np.full((5, 16), 1e6, dtype=np.float32))
    np.save(d / "ints.npy", np.arange(80).reshape(5, 16))
    Index.from_vectors(synthetic.vectors(50, 16, seed=1)).save(d / "idx")
    synthetic.qnets(3, [16, 16, 1]).save(d / "q.safetensors")
    (d / "junk.safetensors").write_bytes(b"\x07" * 100)
    (d / "bad-idx").mkdir()
    (d / "bad-idx" / "manifest.json").write_text(json.dumps({"format": "hypencoder-engine-index", "version": 1,
                                                             "count": "many"}))
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("years of work")
    (d / "ids-blank.txt").write_text("a\n\nb\n")
    return d


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


CASES = [
    # argparse: meaningless numbers and bad values
    (["build", "{d}/o1", "--vectors", "{d}/f32.npy", "--graph", "0"], "--graph: must be a positive integer"),
    (["build", "{d}/o1", "--synthetic", "-5"], "--synthetic: must be a positive integer"),
    (["build", "{d}/o1", "--synthetic", "10", "--dim", "0"], "--dim: must be a positive integer"),
    (["search", "--index", "{d}/idx", "--qnets", "{d}/q.safetensors", "--queries", "-1"], "--queries"),
    (["search", "--index", "{d}/idx", "--qnets", "{d}/q.safetensors", "-k", "0"], "-k: must be a positive"),
    (["search", "--index", "{d}/idx", "--qnets", "{d}/q.safetensors", "-k", "x"], "-k: must be a positive"),
    (["search", "--index", "{d}/idx", "--qnets", "{d}/q.safetensors", "--mode", "fuzzy"], "invalid choice"),
    (["demo", "--n", "0"], "--n: must be a positive integer"),
    (["demo", "--layers", "-1"], "--layers: must be a non-negative integer"),
    (["eval", "--index", "{d}/idx", "--queries", "q", "--qrels", "r", "--chunk", "0"], "--chunk"),
    (["encode", "{d}/o1", "--corpus", "c", "--model", "m", "--batch-size", "0"], "--batch-size"),
    (["nope"], "invalid choice"),
    (["search"], "required"),
    # the commands' own refusals, with hints
    (["build", "{d}/o1", "--vectors", "{d}/f64.npy"], "float64 vectors.*--dtype float32"),
    (["build", "{d}/o1", "--vectors", "{d}/ints.npy"], "int64 vectors.*--dtype float32"),
    (["build", "{d}/o1", "--vectors", "{d}/big.npy", "--dtype", "float16"], "beyond float16's range.*float32"),
    (["build", "{d}/o1", "--vectors", "{d}/f32.npy", "--ids", "{d}/ids-blank.txt"], "ids-blank.txt:2: empty id"),
    (["build", "{d}/mine", "--vectors", "{d}/f32.npy"], "not an index"),
    (["build", "{d}/o1", "--vectors", "{d}/missing.npy"], "No such file"),
    (["search", "--index", "{d}/idx", "--qnets", "{d}/junk.safetensors"], "not a readable safetensors file"),
    (["search", "--index", "{d}/idx", "--qnets", "{d}/q.safetensors", "-k", "99999999999999999999"], "k must be"),
    (["info", "{d}/bad-idx"], "manifest field 'count'"),
    (["info", "{d}/nothing"], "no index directory"),
]


@pytest.mark.parametrize("argv,match", CASES, ids=[" ".join(a[:3]) + f" #{i}" for i, (a, _) in enumerate(CASES)])
def test_cli_error_is_one_line(files, capsys, argv, match):
    argv = [a.format(d=files) for a in argv]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    import re

    line = one_error_line(capsys)
    assert re.search(match, line), line


def test_refused_build_keeps_the_users_files(files, capsys):
    assert main(["build", str(files / "mine"), "--vectors", str(files / "f32.npy")]) == 2
    assert (files / "mine" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in (files / "mine").iterdir()) == ["thesis.tex"]


def test_build_converts_with_dtype(files, tmp_path, capsys):
    assert main(["build", str(tmp_path / "i"), "--vectors", str(files / "f64.npy"), "--dtype", "float32"]) == 0
    assert np.array_equal(Index.load(tmp_path / "i").vectors.numpy(), np.load(files / "f64.npy").astype(np.float32))
    swapped = tmp_path / "be.npy"
    np.save(swapped, np.load(files / "f32.npy").astype(">f4"))
    assert main(["build", str(tmp_path / "j"), "--vectors", str(swapped)]) == 0
    assert np.array_equal(Index.load(tmp_path / "j").vectors.numpy(), np.load(files / "f32.npy"))


@pytest.mark.parametrize("exc,match", [
    (PermissionError(13, "Permission denied", "/root/x"), r"^error: \[Errno 13\] Permission denied: '/root/x'$"),
    (OverflowError("Python int too large to convert to C long"), "^error: OverflowError: Python int too large"),
    (KeyError("weight.3"), "^error: KeyError: 'weight.3'$"),
    (ValueError("first line\nsecond line"), "^error: first line second line$"),
    (RuntimeError(""), "^error: RuntimeError$"),
])
def test_unexpected_exceptions_are_one_line(monkeypatch, capsys, exc, match):
    import re

    from engine.commands import info

    def boom(args):
        raise exc

    monkeypatch.setattr(info, "run", boom)
    assert main(["info"]) == 2
    assert re.search(match, one_error_line(capsys))


def test_interrupt_exits_130(monkeypatch, capsys):
    from engine.commands import info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "run", interrupted)
    assert main(["info"]) == 130
    assert one_error_line(capsys) == "error: interrupted"


def test_entry_point_prints_one_line(files):
    r = subprocess.run([sys.executable, "-m", "engine", "build", str(files / "o2"), "--vectors",
                        str(files / "f64.npy")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--dtype float32" in r.stderr
