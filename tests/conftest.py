import os
import pathlib

import pytest

# Triton kernels are tested on CPU through the interpreter; it must be set before any
# module imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Every native call that can split its work over threads does (the hand-off threshold of
# csrc/parallel.h forced to 0), so that the tests' small data exercises the thread pool;
# tests/test_serving.py checks the default threshold gives the same results.
os.environ.setdefault("HYPENCODER_HANDOFF_US", "0")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "debian-minilm"


@pytest.fixture(scope="session")
def debian_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        msg = f"the data set ../shared/data/debian-minilm is missing (looked in {SHARED})"
        # Only a machine that cannot have the data (the lent GPU machine) may skip.
        if os.environ.get("HYPENCODER_NO_SHARED_DATA") == "1":
            pytest.skip(msg)
        pytest.fail(msg)
    return SHARED
