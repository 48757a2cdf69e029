"""``python -m engine build``: an index from a .npy matrix or synthetic vectors."""

from __future__ import annotations

from ..quant import STORAGE_DTYPES
from .common import DTYPES, positive_int, read_ids, write_index


def add_parser(sub) -> None:
    p = sub.add_parser("build", help="build an index from vectors (.npy) or synthetic data")
    p.add_argument("output", help="index directory to write")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vectors", help="(n, d) float32/float16 .npy file")
    src.add_argument("--synthetic", type=positive_int, metavar="N", help="N synthetic structured vectors")
    p.add_argument("--dim", type=positive_int, default=768, help="width of synthetic vectors")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ids", help="text file with one external id per line")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="stored dtype (default: as given; bfloat16 for synthetic)")
    p.add_argument("--storage", choices=list(STORAGE_DTYPES), default=None,
                   help="how the vectors are stored: a float dtype (as --dtype), or int8 / float8_e4m3 "
                        "(quantised with one float32 scale per row: half the memory of bfloat16; "
                        "see docs/storage.md)")
    p.add_argument("--graph", type=positive_int, metavar="R",
                   help="also build what graph search needs: an R-neighbour graph and the candidate codes")
    p.set_defaults(run=run)


def load_vectors(path: str, dtype: str | None):
    """The (n, d) matrix of a .npy file as a tensor in ``dtype`` (None: as stored, which
    must then be float32 or float16). Read lazily (copy-on-write memory map) unless a
    conversion is asked for."""
    import numpy as np
    import torch

    from ..scoring import as_vectors

    arr = np.load(path, mmap_mode="c", allow_pickle=False)
    if arr.dtype.kind not in "fiu" or arr.dtype.itemsize > 8:
        raise ValueError(f"{path} holds {arr.dtype} values, not numbers")
    if dtype is None and (arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4)):
        raise ValueError(f"{path} holds {arr.dtype} vectors; the index stores float32, float16 or bfloat16: "
                         "pass --dtype float32 (or float16, bfloat16) to convert them")
    native = arr.dtype.newbyteorder("=")
    vectors = torch.from_numpy(np.ascontiguousarray(arr, dtype=native))
    if dtype is not None:
        vectors = vectors.to(DTYPES[dtype])
        if vectors.numel() and not bool(torch.isfinite(vectors).all()) and np.isfinite(arr).all():
            raise ValueError(f"{path}: values beyond {dtype}'s range (largest magnitude "
                             f"{float(np.abs(arr).max()):g}); use --dtype float32")
    return as_vectors(vectors, name=f"vectors of {path}")


def _is_float_npy(path: str) -> bool:
    import numpy as np

    dt = np.load(path, mmap_mode="r", allow_pickle=False).dtype
    return dt.kind == "f" and dt.itemsize in (2, 4)


def run(args) -> int:
    from .. import synthetic
    from ..index import Index
    from ..storage import save_target

    save_target(args.output)  # refuse a target it may not replace before any work
    storage = args.storage
    if storage is not None and args.dtype is not None and storage != args.dtype:
        raise ValueError(f"--dtype {args.dtype} and --storage {storage} disagree: give one")
    if storage in DTYPES:  # a float storage is a --dtype
        args.dtype, storage = storage, None
    if args.synthetic is not None:
        if args.ids:
            raise ValueError("--ids needs --vectors (synthetic documents are numbered)")
        synthetic.write_index(args.output, args.synthetic, args.dim, seed=args.seed,
                              dtype=STORAGE_DTYPES[storage or args.dtype or "bfloat16"], progress=True)
        if args.graph:
            # The vectors stay where they were streamed (memory-mapped; the save links them).
            index = Index.load(args.output)
            index.build_graph(args.graph, progress=True)
            index.save(args.output)
        print(Index.load(args.output))
        return 0
    vectors = load_vectors(args.vectors, args.dtype if storage is None else None if _is_float_npy(args.vectors)
                           else "float32")
    ids = read_ids(args.ids) if args.ids else None
    write_index(vectors, ids, args.output, args.graph, storage=storage)
    return 0
