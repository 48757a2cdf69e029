import subprocess
import sys

import numpy as np
import torch

from engine import QNet, synthetic
from engine.cli import main


def test_demo_runs(capsys):
    assert main(["demo", "--n", "3000", "--dim", "32", "--queries", "2", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "exact search, per query" in out and "query 1: top 3" in out


def test_build_info_search(tmp_path, capsys):
    v = synthetic.vectors(400, 16, seed=2).numpy()
    np.save(tmp_path / "v.npy", v)
    (tmp_path / "ids.txt").write_text("".join(f"pkg-{i}\n" for i in range(400)))
    assert main(["build", str(tmp_path / "idx"), "--vectors", str(tmp_path / "v.npy"),
                 "--ids", str(tmp_path / "ids.txt"), "--dtype", "float16"]) == 0
    assert main(["info", str(tmp_path / "idx"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "n=400" in out and "checksums: ok" in out and "float16" in out
    q = synthetic.qnets(2, [16, 16, 1], seed=3)
    q.save(tmp_path / "q.safetensors")
    assert main(["search", "--index", str(tmp_path / "idx"), "--qnets", str(tmp_path / "q.safetensors"), "-k", "4"]) == 0
    out = capsys.readouterr().out
    from engine import Index

    r = Index.load(tmp_path / "idx").search(QNet.load(tmp_path / "q.safetensors"), 4)
    assert f"pkg-{int(r.ids[1, 0])}" in out.split("query 1:")[1].splitlines()[3]


def test_bad_input_is_an_error_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "engine", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout
