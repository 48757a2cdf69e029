import os
import pathlib

import pytest

# Triton kernels are tested on CPU through the interpreter; it must be set before any
# module imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "debian-minilm"


@pytest.fixture(scope="session")
def debian_dir() -> pathlib.Path:
    if not SHARED.is_dir():
        pytest.fail(f"the data set ../shared/data/debian-minilm is missing (looked in {SHARED})")
    return SHARED
