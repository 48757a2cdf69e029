"""What is particular to the CUDA C++ backend (its kernels are checked against the
reference on the shared grid of tests/test_kernels.py): the build at first use from the
package's CUDA sources, the tile choice, the measured automatic choice. The sources are
checked on any machine; the rest needs a GPU (the first test compiles the kernels, which
takes a minute or two)."""

import pytest
import torch

from engine import scoring
from engine.backends import availability, torch_ref
from kernel_cases import assert_close, make_qnet, make_vectors


def test_cuda_sources_are_package_resources():
    from engine.backends import cuda

    src = cuda.source_dir()
    for name in ("bindings.cpp", "qnet_fused.cu", "qnet_fused.h"):
        assert (src / name).is_file(), f"{name} missing under {src}"


ok, why = availability("cuda")
needs_cuda = pytest.mark.skipif(not ok, reason=f"CUDA backend unavailable here: {why}")
DEV = torch.device("cuda")


@needs_cuda
@pytest.mark.gpu
def test_extension_builds_and_picks_tiles():
    from engine.backends import cuda as cb

    ext = cb.extension()
    assert ext.choose_block_rows(True, 784, 0) in (16, 32, 64)


@needs_cuda
@pytest.mark.gpu
def test_auto_picks_a_measured_backend():
    from engine import backends

    q = make_qnet(2, [64, 64, 1], torch.bfloat16, DEV)
    v = make_vectors(4096, 64, torch.bfloat16, DEV)
    got = scoring.score(q, v)  # auto: measured once for this shape, then cached
    assert_close(got, torch_ref.score_dense(q.weights, q.biases, q.config, v), torch.bfloat16)
    assert backends.auto_choices()  # the measurement is recorded
