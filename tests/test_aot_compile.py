"""The ahead-of-time compile step of CI (.ci/compile_triton.sh, engine.kernels.aot) catches
what the Triton interpreter lets through: a small kernel that reads a plain Python global
runs interpreted, and the compile step fails on it naming the global; the same kernel with
the global declared ``tl.constexpr`` compiles."""

import os
import pathlib
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

REPO = pathlib.Path(__file__).resolve().parents[1]

KERNEL = '''
import torch
import triton
import triton.language as tl

from engine.kernels.aot import Variant

SCALE = {scale}


@triton.jit
def scale_kernel(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    ok = i < n
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=ok) * SCALE, mask=ok)


def aot_variants():
    config = triton.Config({{"BLOCK": 16}}, num_warps=1, num_stages=1)
    return [Variant(scale_kernel, dict(x_ptr=torch.zeros(16), n=16), [config], "test")]
'''


def write_kernel(path: pathlib.Path, scale: str) -> pathlib.Path:
    path.write_text(KERNEL.format(scale=scale))
    return path


def compile_step(*args):
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)  # the script sets it off itself
    return subprocess.run(["bash", str(REPO / ".ci" / "compile_triton.sh"), "--arch", "90", "--jobs", "1", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_the_interpreter_runs_a_kernel_reading_a_global(tmp_path):
    import importlib.util

    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("this test shows what the interpreter accepts")
    spec = importlib.util.spec_from_file_location("global_kernel", write_kernel(tmp_path / "k.py", "3"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.arange(16, dtype=torch.float32)
    mod.scale_kernel[(1,)](x, 16, BLOCK=16)
    assert torch.equal(x, torch.arange(16, dtype=torch.float32) * 3)


def test_compile_step_fails_on_a_global_read_in_jit(tmp_path):
    r = compile_step("--file", str(write_kernel(tmp_path / "bad.py", "3")))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "FAILED" in out and "SCALE" in out and "global" in out, out
    assert "0 of 1 compiled, 1 failed" in out, out


def test_compile_step_passes_a_constexpr_global(tmp_path):
    r = compile_step("--file", str(write_kernel(tmp_path / "good.py", "tl.constexpr(3)")))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "1 of 1 compiled, 0 failed" in out, out
