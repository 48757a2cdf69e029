"""Where the engine's non-``engine/`` parts are found: source checkout or installed package.

The repository keeps the Triton kernels in the top-level folder ``kernels/`` and the CUDA
sources in ``csrc/cuda/``. An installed package has them inside the engine's namespace,
as ``engine.kernels`` and ``engine.cuda_src`` (setup.py maps the folders there), so no
top-level import named ``kernels`` exists. In a source checkout (tests, benchmarks, a
copy run through ``PYTHONPATH``) :func:`mount` gives the same two names to the top-level
folders, so code imports ``engine.kernels`` and reads ``engine.cuda_src`` resources
(``importlib.resources``) the same way in both.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# name inside the package -> folder in the repository
SOURCE_FOLDERS = {"kernels": ("kernels",), "cuda_src": ("csrc", "cuda")}


def mount(package) -> None:
    """Give ``package.<name>`` to each folder of :data:`SOURCE_FOLDERS` that the installed
    package lacks and the repository around it has. Imports nothing from the folders."""
    here = Path(package.__file__).resolve().parent
    repo = here.parent
    for name, parts in SOURCE_FOLDERS.items():
        full = f"{package.__name__}.{name}"
        folder = repo.joinpath(*parts)
        if full in sys.modules or (here / name).is_dir() or not (folder / "__init__.py").is_file():
            continue
        spec = importlib.util.spec_from_file_location(
            full, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
