"""Build the engine and its C++ CPU extension ``engine._C``.

Every ``csrc/**/*.cpp`` file goes into one extension. The CUDA sources under
``csrc/cuda`` are not compiled here: they ship as package data (``engine.cuda_src``) and
the CUDA backend compiles them for the local GPU at first use. The Triton kernels of the
top-level folder ``kernels/`` install as ``engine.kernels``, so the package adds no
top-level import name besides ``engine``. SIMD code paths
carry their own ``target`` attributes and are picked at run time from the CPU's features,
so the build uses no ``-march`` flag and one wheel runs on any x86-64.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
except ImportError:  # pragma: no cover - pybind11 is a build requirement
    sys.exit("pybind11 is needed to build the engine: pip install pybind11")

# Compile the C++ files in parallel (every core; NPY_NUM_BUILD_JOBS=N to choose), in a
# plain `pip install .` too, which passes no -j.
ParallelCompile("NPY_NUM_BUILD_JOBS").install()

sources = sorted(
    p for p in glob.glob("csrc/**/*.cpp", recursive=True) if not p.startswith(os.path.join("csrc", "cuda"))
)

# No OpenMP: the engine's threads are its own pool (csrc/parallel.h), which survives fork()
# and sleeps instead of spinning at barriers.
extra_compile = ["-O3", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]
extra_link = ["-pthread"]
# HYPENCODER_SANITIZE=address,undefined builds the extension under those sanitizers (the
# CI job .ci/sanitize.sh; a Python host then needs libasan preloaded).
_sanitize = os.environ.get("HYPENCODER_SANITIZE", "").strip()
if _sanitize:
    flags = [f"-fsanitize={_sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g1"]
    extra_compile = ["-O1"] + flags + extra_compile[2:]
    extra_link += flags

ext_modules = [
    Pybind11Extension(
        "engine._C",
        sources,
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )
]

setup(
    name="hypencoder-engine",
    version="0.1.0",
    description="Fast inference engine for Hypencoder retrieval",
    packages=find_packages(include=["engine", "engine.*"]) + ["engine.kernels", "engine.cuda_src"],
    package_dir={"engine.kernels": "kernels", "engine.cuda_src": "csrc/cuda"},
    package_data={"engine.cuda_src": ["*.cu", "*.cpp", "*.h"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.9",
    install_requires=["numpy", "safetensors", "tqdm"],
    extras_require={
        "hf": ["transformers", "tokenizers"],
        "triton": ["triton"],
        "faiss": ["faiss-cpu"],
        "eval": ["ir-measures"],
        "bench": ["pytest-benchmark", "matplotlib"],
        "test": ["pytest", "pytest-benchmark"],
    },
    entry_points={"console_scripts": ["hypencoder-engine=engine.cli:main"]},
)
