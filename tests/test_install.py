"""``pip install .`` (not editable) into a fresh virtual environment gives a working
package: it imports from the environment, runs the demo, holds the Triton kernels as
``engine.kernels`` and the CUDA sources as package resources (``engine.cuda_src``, what the
CUDA backend compiles at first use), and adds no other top-level import name.

The environment sees this interpreter's packages (torch, pybind11, setuptools) through a
path file, so nothing is downloaded or reinstalled; the build compiles the C++ extension
(about a minute on two cores)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "*.so",
                                ".pytest_cache", ".benchmarks", "out", "gpu_out")

CHECK = textwrap.dedent("""
    import importlib.metadata, importlib.resources, importlib.util, json, sys
    import engine
    import engine.kernels
    from engine.backends import cuda
    files = importlib.metadata.files("hypencoder-engine")
    # (entries outside site-packages, such as the console script, start with "..")
    tops = sorted({f.parts[0] for f in files if f.parts[0] != ".." and not f.parts[0].endswith(".dist-info")})
    src = importlib.resources.files("engine.cuda_src")
    print(json.dumps({
        "engine": engine.__file__,
        "kernels": engine.kernels.__file__,
        "tops": tops,
        "cuda_sources": sorted(p.name for p in src.iterdir() if p.suffix in (".cu", ".cpp", ".h")),
        "cuda_source_dir": str(cuda.source_dir()),
        "backends": engine.available_backends(),
    }))
""")


@pytest.mark.slow
def test_pip_install_non_editable(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=IGNORE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # This interpreter's packages, after the new environment's own (a plain path: the
    # path files there, such as an editable install of this repository, stay unread).
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "outer_packages.pth").write_text("\n".join(sorted(here)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", str(src)],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    run = tmp_path / "run"  # away from any source tree
    run.mkdir()
    r = subprocess.run([str(py), "-c", CHECK], capture_output=True, text=True, env=env, cwd=run, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["engine"].startswith(str(site)), info
    assert info["kernels"].startswith(str(site / "engine" / "kernels")), info
    assert info["tops"] == ["engine"], f"the package installs top-level names {info['tops']}"
    assert info["cuda_sources"] == ["bindings.cpp", "qnet_fused.cu", "qnet_fused.h"], info
    assert info["cuda_source_dir"].startswith(str(site / "engine" / "cuda_src")), info
    assert info["backends"]["cpu"] == "ok", info  # the C++ extension was built and loads

    r = subprocess.run([str(py), "-m", "engine", "demo", "--n", "2000", "--dim", "32", "--queries", "2", "-k", "3"],
                       capture_output=True, text=True, env=env, cwd=run, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "2,000" in r.stdout or "2000" in r.stdout, r.stdout
