"""``Index``: document vectors, optional external ids and a neighbour graph, on disk or in
memory, with exact and graph search."""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np
import torch

from . import backends, quant, storage
from .qnet import QNet
from .devices import as_device
from .qnet import SUPPORTED_DTYPES
from .results import SearchResult, SearchStats
from .scoring import as_vectors, check_backend, check_pair, check_qnets
from .search.exact import exact_search
from .search.exact import check_block_size
from .search.filtered import filtered_exact_search
from .search.filtered import strategy as filter_strategy
from .search.filters import resolve as resolve_filter
from .threads import check_num_threads

SEARCH_MODES = ("exact", "graph")
MAX_K = 2**31 - 1  # results per query: the native kernels count them in 32 bits
_LOAD_ATTEMPTS = 5  # reads of an index that saves keep replacing meanwhile


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _normalise_ids(ids, n: int):
    """External ids: None, an int64 array, or a list of str; integers within int64.

    An id may repeat: real collections hold distinct documents under one id (the
    debian-minilm set has 13 such pairs); a run lists each id once, at its best rank.
    Raises ``TypeError`` for other kinds (floats, bools, a mix, a single string) and
    ``ValueError`` for a wrong count or an integer outside int64.
    """
    if ids is None:
        return None
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"integer ids must have an integer dtype, got {ids.dtype}")
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids must be a sequence of ids, one per vector, not a single string")
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"integer ids must have an integer dtype, got {ids.dtype}")
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
        if ids.dtype.kind == "u" and n and int(ids.max()) > INT64_MAX:
            raise ValueError(f"integer ids must fit int64 ({INT64_MIN}..{INT64_MAX}); "
                             f"id {int(ids.max())} does not")
        out = ids.astype(np.int64)
    else:
        ids = list(ids)
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} ids for {n} vectors")
        if all(isinstance(i, str) for i in ids):
            out = [str(i) for i in ids]
            try:
                "".join(out).encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"string ids must be valid Unicode (saved as UTF-8): {e}") from None
        elif all(isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in ids):
            bad = [i for i in ids if not INT64_MIN <= int(i) <= INT64_MAX]
            if bad:
                raise ValueError(f"integer ids must fit int64 ({INT64_MIN}..{INT64_MAX}); id {int(bad[0])} does not")
            out = np.asarray([int(i) for i in ids], dtype=np.int64)
        else:
            raise TypeError("ids must be all str or all int")
    return out


def check_search_args(qnets, k, mode, backend, dim: int):
    """The checks of a search's arguments (one index or a sharded one): ``(qnets, backend)``
    as the search reads them. Raises ``TypeError`` / ``ValueError`` naming the argument."""
    qnets = check_qnets(qnets)
    backend = check_backend(backend)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 0 < k <= MAX_K:
        raise ValueError(f"k must be positive and at most {MAX_K}, got {k}")
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, got {type(mode).__name__}")
    if mode not in SEARCH_MODES:
        raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
    if qnets.dim != dim:
        raise ValueError(f"dimension mismatch: q-nets read {qnets.dim}-d vectors, the index holds {dim}-d")
    return qnets, backend


class _StringIds:
    """String ids read lazily from the offsets + UTF-8 blob files."""

    def __init__(self, offsets: torch.Tensor, blob: torch.Tensor):
        self.offsets, self.blob = offsets.numpy(), blob.numpy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return bytes(self.blob[a:b]).decode("utf-8")

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class Index:
    """Document vectors ``(n, d)`` (float32, float16 or bfloat16, or int8 / float8_e4m3fn
    with one float32 scale per row in ``scales``: see :mod:`engine.quant`), optional
    external ids (integers or strings) and an optional neighbour graph ``(n, R)`` int32.

    Build with :meth:`from_vectors`, persist with :meth:`save`, open with :meth:`load`
    (memory-mapped), search with :meth:`search`.
    """

    def __init__(self, vectors: torch.Tensor, ids=None, graph: torch.Tensor | None = None,
                 graph_params: dict | None = None, *, scales: torch.Tensor | None = None,
                 _checked: bool = False):
        if not _checked:
            vectors = as_vectors(vectors, quantized=True)
            scales = quant.check_scales(vectors, scales)
            ids = _normalise_ids(ids, vectors.shape[0])
        self.vectors = vectors
        self.scales = scales  # (n,) float32 for int8 / float8_e4m3 vectors, else None
        self._ids = ids
        self.graph: torch.Tensor | None = None
        self.graph_params: dict = {}
        self.codes = None  # engine.graph.codes.LinearCodes: the default graph search's candidates
        # None or a torch.bool tensor (n,) on the CPU, True = deleted: every search treats
        # those rows as absent (graph search may still walk through them). Set by
        # delete() (engine.update) and persisted with the index.
        self.deleted: torch.Tensor | None = None
        self.path: str | None = None
        if graph is not None:
            self.set_graph(graph, graph_params or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vectors(cls, vectors, ids: Sequence | np.ndarray | None = None, *, storage=None,
                     scales: torch.Tensor | None = None) -> "Index":
        """An in-memory index over ``vectors`` (n, d); ``ids``: n str or n int, optional.

        ``storage``: how the vectors are held: ``"float32"``, ``"float16"``, ``"bfloat16"``,
        ``"int8"`` or ``"float8_e4m3"`` (or the torch dtype); None keeps their dtype. int8 and
        float8_e4m3 quantise float vectors with one scale per row (:func:`engine.quant.quantize`,
        in blocks of rows), halving the memory of bfloat16. Vectors that are already int8 /
        float8_e4m3fn come with their ``scales`` ((n,) float32).

        Raises ``TypeError`` / ``ValueError`` for a bad storage name, non-finite vectors,
        missing or misshapen scales.
        """
        index = cls(vectors, ids, scales=scales)
        if storage is not None and quant.storage_dtype(storage) != index.dtype:
            index = index.to(dtype=quant.storage_dtype(storage))
        return index

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.vectors.dtype

    @property
    def device(self) -> torch.device:
        return self.vectors.device

    @property
    def storage(self) -> str:
        """The storage name of the vectors: ``"float32"``, ``"float16"``, ``"bfloat16"``,
        ``"int8"`` or ``"float8_e4m3"``."""
        return quant.STORAGE_NAMES[self.dtype]

    @property
    def vectors_nbytes(self) -> int:
        """Bytes of the vectors and their scales (what the storage type sets)."""
        n = self.vectors.numel() * self.vectors.element_size()
        return n + (self.scales.numel() * 4 if self.scales is not None else 0)

    def float_rows(self):
        """The vectors as float rows for passes that read them in slices: the tensor itself
        for float storage, a :class:`engine.quant.DequantizedRows` view (float32, rows
        dequantised as they are read) for int8 / float8_e4m3."""
        return self.vectors if self.scales is None else quant.DequantizedRows(self.vectors, self.scales)

    @property
    def ids_kind(self) -> str:
        if self._ids is None:
            return "none"
        return "int" if isinstance(self._ids, np.ndarray) else "str"

    def __repr__(self) -> str:
        g = f", graph degree {self.graph.shape[1]}" if self.graph is not None else ""
        c = f", codes {self.codes.params.get('bytes_per_vector')} B" if self.codes is not None else ""
        return f"Index(n={len(self)}, dim={self.dim}, dtype={self.dtype}, ids={self.ids_kind}{g}{c})"

    def to(self, device=None, dtype: torch.dtype | str | None = None) -> "Index":
        """A copy with the vectors on ``device`` / in ``dtype`` (graph and ids kept).

        ``dtype``: a float dtype, or ``torch.int8`` / ``torch.float8_e4m3fn`` (or a storage
        name, see :meth:`from_vectors`): float vectors are quantised, quantised ones
        dequantised (both in blocks of rows); int8 <-> float8 goes through float32.

        Raises ``ValueError`` for a device that is not available, and when the cast
        overflows (a value beyond float16's range would become an Inf row that no search
        could rank)."""
        if isinstance(dtype, str) or (dtype is not None and dtype in quant.QUANTIZED_DTYPES):
            dtype = quant.storage_dtype(dtype)
        elif dtype is not None and dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"unsupported vector dtype {dtype}; use float32, float16, bfloat16, int8 or "
                            "float8_e4m3fn")
        if device is not None:
            device = as_device(device)
        if (dtype is not None and dtype != self.dtype) and (quant.is_quantized(dtype) or self.scales is not None):
            return self._convert_storage(dtype, device)
        scales = self.scales.to(device=device) if self.scales is not None else None
        vectors = self.vectors.to(device=device, dtype=dtype)
        if dtype is not None and dtype != self.dtype and vectors.numel() and not bool(torch.isfinite(vectors).all()):
            rows = (~torch.isfinite(vectors)).any(dim=1).nonzero()[:, 0]
            raise ValueError(f"converting the vectors to {dtype} overflows: {len(rows)} rows (first: row "
                             f"{int(rows[0])}) get Inf values; keep {self.dtype} or rescale the vectors")
        out = self._like(vectors, scales)
        if self.codes is not None and dtype in (None, self.dtype):
            out.codes = self.codes  # codes of other values would be wrong: rebuild them
        return out

    def _like(self, vectors: torch.Tensor, scales) -> "Index":
        """An index of these rows stored as ``vectors`` / ``scales``, with this one's ids,
        graph and tombstones (not its codes, which depend on the stored values)."""
        out = Index(vectors, self._ids, scales=scales, _checked=True)
        out.deleted = self.deleted
        if self.graph is not None:
            out.set_graph(self.graph, self.graph_params)
        return out

    def _convert_storage(self, dtype: torch.dtype, device) -> "Index":
        """:meth:`to` across float and quantised storage, ``step`` rows at a time (the
        float32 working copy of one block, never of the corpus)."""
        n, d = self.vectors.shape
        device = device if device is not None else self.device
        step = max(1, (64 << 20) // max(1, 4 * d))
        src = self.float_rows()
        if quant.is_quantized(dtype):
            vectors = torch.empty((n, d), dtype=dtype, device=device)
            scales = torch.empty(n, dtype=torch.float32, device=device)
            for s in range(0, n, step):
                q, sc = quant.quantize(src[s : s + step].to(device), dtype)
                vectors[s : s + step], scales[s : s + step] = q, sc
        else:
            vectors, scales = torch.empty((n, d), dtype=dtype, device=device), None
            for s in range(0, n, step):
                vectors[s : s + step] = src[s : s + step].to(device, dtype)
            if n and not bool(torch.isfinite(vectors).all()):
                raise ValueError(f"converting the vectors to {dtype} overflows; keep {self.dtype}")
        return self._like(vectors, scales)  # codes of other values would be wrong: rebuild them

    def set_graph(self, neighbors: torch.Tensor, params: dict) -> None:
        """Attach a neighbour graph: ``(n, R)`` int32 row indices, -1 for no neighbour."""
        if not isinstance(neighbors, torch.Tensor):
            raise TypeError("neighbors must be a torch.Tensor")
        if neighbors.dim() != 2 or neighbors.shape[0] != len(self):
            raise ValueError(f"neighbors must have shape ({len(self)}, R), got {tuple(neighbors.shape)}")
        if neighbors.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"neighbors must be int32 or int64, got {neighbors.dtype}")
        if neighbors.shape[1] < 1:
            raise ValueError("neighbors must hold at least one neighbour per document (R >= 1)")
        if not isinstance(params, dict):
            raise TypeError(f"graph params must be a dict, got {type(params).__name__}")
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"graph params must be JSON values (they are saved in the manifest): {e}") from None
        if neighbors.numel():
            lo, hi = int(neighbors.min()), int(neighbors.max())
            if lo < -1 or hi >= len(self):
                raise ValueError(f"graph neighbour out of range ({lo}..{hi}) for {len(self)} documents")
        self.graph = neighbors.to(torch.int32)
        self.graph_params = dict(params)

    def build_graph(self, degree: int = 32, *, codes: bool = True, code_bytes: int = 64,
                    residual_bytes: int = 64, progress: bool = False, **kwargs) -> "Index":
        """Build what graph search needs: the ``degree`` nearest other documents of every
        document by L2 (see :func:`engine.graph.build.build_knn_graph`, which takes the
        other keyword options) and, with ``codes``, the compressed candidate codes of
        ``code_bytes`` bytes per document and their second level of ``residual_bytes``
        (:meth:`build_codes`); returns self. Nothing changes unless both are built."""
        from .graph.build import build_knn_graph
        from .graph.codes import build_codes

        neighbors, params = build_knn_graph(self.float_rows(), degree, progress=progress, **kwargs)
        new_codes = None
        if codes:
            new_codes = build_codes(self.float_rows(), bytes_per_vector=code_bytes, residual_bytes=residual_bytes,
                                    progress=progress)
        self.set_graph(neighbors, params)
        if codes:
            self.codes = new_codes
        return self

    def build_codes(self, bytes_per_vector: int = 64, **kwargs) -> "Index":
        """Build the compressed codes the default graph search draws its candidates from
        (:func:`engine.graph.codes.build_codes`: ``bytes_per_vector`` per document); returns
        self."""
        from .graph.codes import build_codes

        self.codes = build_codes(self.float_rows(), bytes_per_vector=bytes_per_vector, **kwargs)
        return self

    def _unchanged_vectors_file(self):
        """``(path, manifest entry)`` of the file the vectors were mapped from, when they
        are still exactly its contents (same tensor, no in-place change, same file), so a
        save can link it instead of copying it; else None."""
        src = self.__dict__.get("_vectors_file")
        if src is None:
            return None
        fpath, entry, tensor, version, ident = src
        try:
            st = os.stat(fpath)
        except OSError:
            return None
        if tensor is not self.vectors or tensor._version != version or \
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != ident:
            return None
        return fpath, entry

    # ------------------------------------------------------------------ ids
    def external_ids(self, ids: torch.Tensor) -> list:
        """Map row indices (any shape, -1 for padding) to stored ids (None for padding).

        Without stored ids the row indices themselves are returned. Nested lists follow
        the shape of ``ids``.
        """
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise TypeError(f"row indices must be integers, got dtype {arr.dtype}")

        def one(i):
            i = int(i)
            if i < 0:
                return None
            if i >= len(self):
                raise ValueError(f"row index {i} out of range for {len(self)} documents")
            if self._ids is None:
                return i
            return int(self._ids[i]) if isinstance(self._ids, np.ndarray) else self._ids[i]

        def rec(a):
            return [rec(x) for x in a] if a.ndim > 0 else one(a)

        return rec(arr)

    # ------------------------------------------------------------------ search
    def search(self, qnets: QNet, k: int, *, mode: str = "exact", backend: str = "auto",
               block_size: int | None = None, num_threads: int | None = None, allow=None,
               **graph_options) -> SearchResult:
        """Top-``k`` documents for each q-net, best first.

        Args:
            qnets: :class:`QNet` of ``Q`` q-nets reading ``dim``-wide vectors.
            k: number of results per query (> 0). When ``k`` exceeds what the search can
                return, the remaining slots are padded with score ``-inf`` and id ``-1``
                (shapes stay ``(Q, k)``).
            mode: ``"exact"`` (a full streaming scan) or ``"graph"`` (needs a graph; see
                :meth:`build_graph`; ``graph_options`` go to the graph search).
            backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
            block_size: documents per streamed block in exact search (an int in
                ``1..65536``; None: the backend's choice). It changes speed and memory,
                never a result.
            num_threads: CPU threads of this call's native work (the ``cpu`` backend, the
                native graph search), an int in ``1..1024``; None: the engine-wide number
                (:func:`engine.set_num_threads`). A call splits its work over threads only
                when the work pays for the hand-off; it never changes a result. Other
                backends ignore it (torch has ``torch.set_num_threads``).
            allow: the documents each query may return (None: all). One allow-list for the
                batch or a list of ``Q``, one per query; each a bitmap over rows (bool
                tensor/ndarray ``(n,)``; ``(Q, n)`` for one per query) or a sequence of the
                index's external ids (int or str as stored; row indices when the index has
                no ids). Rows of :attr:`deleted` are never returned, with or without it.
                Exact search returns the true top-k of the allowed rows; graph search
                searches a query exactly when its allowed share of the index is under
                ``filter_exact_below`` (a graph search parameter), and flags it in
                ``stats.exact``. A query with fewer allowed rows than ``k`` gets padding.
                See :mod:`engine.search.filters`.

        Returns:
            :class:`SearchResult` with ``scores`` (Q, k) float32 and ``ids`` (Q, k) int64 on
            the q-nets' device.

        Raises:
            TypeError / ValueError: a bad argument, including an allow-list of the wrong
            kind or shape, or naming an id the index does not hold (ValueError).
        """
        import time

        qnets, backend = check_search_args(qnets, k, mode, backend, self.dim)
        if num_threads is not None:
            num_threads = check_num_threads(num_threads)
        if self.vectors.device == qnets.device:
            check_pair(qnets, self.vectors)
        t0 = time.perf_counter()
        rf = resolve_filter(self, allow, qnets.num_queries)
        if mode == "exact":
            if graph_options:
                raise TypeError(f"unexpected options for exact search: {sorted(graph_options)}")
            be = backends.get_backend(backend, qnets.device)
            if rf is None:
                scores, ids = exact_search(qnets, self.vectors, int(k), backend=backend, block_size=block_size,
                                           num_threads=num_threads, scales=self.scales)
                impl = "fused" if hasattr(be, "exact_topk") and self.vectors.device == qnets.device else "stream"
                scored = len(self) * qnets.num_queries
            else:
                check_block_size(block_size, len(self))
                scores, ids = filtered_exact_search(qnets, self.vectors, int(k), rf, backend=backend,
                                                    block_size=block_size, num_threads=num_threads,
                                                    scales=self.scales)
                impl = "filtered-" + filter_strategy(rf, len(self), self.vectors.device == qnets.device)
                scored = int(rf.counts.sum()) if impl == "filtered-gather" else len(self) * qnets.num_queries
            stats = SearchStats("exact", backends.backend_name(be), impl, documents_scored=scored,
                                filtered=rf is not None, exact=[True] * qnets.num_queries)
        else:
            if block_size is not None:
                raise TypeError("block_size applies to exact search only")
            if self.graph is None:
                raise ValueError("graph search needs a graph: call index.build_graph() first")
            from .graph.search import graph_search

            scores, ids, st = graph_search(self, qnets, int(k), backend=backend, num_threads=num_threads,
                                           allow=rf, **graph_options)
            stats = SearchStats("graph", **st, filtered=rf is not None, exact=list(st["per_query"].exact))
        if qnets.device.type == "cuda":
            torch.cuda.synchronize(qnets.device)
        stats.seconds = time.perf_counter() - t0
        return SearchResult(scores, ids, stats)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory ``path`` atomically (format v3, see
        :mod:`engine.storage`; int8 / float8_e4m3 vectors with ``scales.f32.bin``).

        ``path`` must not exist, or be an empty directory, or hold an index of this engine
        (replaced in one step; a symlink to it stays a symlink). Anything else raises
        :class:`engine.storage.SaveTargetError` (a ``ValueError`` and ``FileExistsError``)
        before anything is written.
        """
        n, d = self.vectors.shape
        # Stream in row chunks: a memory-mapped source is never read whole.
        step = max(1, (64 << 20) // max(1, d * self.vectors.element_size()))
        chunks = (self.vectors[s : s + step] for s in range(0, n, step))
        manifest = write_index_files(path, chunks, n, d, storage.TORCH_TO_NAME[self.dtype],
                                     ids=self._ids, scales=self.scales, graph=self.graph,
                                     graph_params=self.graph_params, codes=self.codes,
                                     vectors_link=self._unchanged_vectors_file(), deleted=self.deleted)
        self.path = os.fspath(path)
        st = os.stat(self.path)
        self._disk = ((st.st_dev, st.st_ino), manifest, False)

    # ------------------------------------------------------------------ updates
    def add(self, vectors, ids=None, *, on_existing: str = "error", method: str = "auto") -> "Index":
        """Append documents: see :func:`engine.update.add` (in memory, and on disk when the
        index was loaded or saved: committed atomically, vectors appended). Returns self."""
        from . import update

        update.add(self, vectors, ids, on_existing=on_existing, method=method)
        return self

    def delete(self, ids, *, missing_ok: bool = False) -> int:
        """Hide documents from every search (tombstones): see :func:`engine.update.delete`.
        Returns the number of rows newly hidden."""
        from . import update

        return update.delete(self, ids, missing_ok=missing_ok)

    def compact(self) -> "Index":
        """Rewrite the index without its deleted rows: see :func:`engine.update.compact`."""
        from . import update

        update.compact(self)
        return self

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = False, mmap: bool = True,
             populate: bool = False) -> "Index":
        """Open an index directory.

        Arrays are memory-mapped (``mmap=True``): opening reads only the manifest, and a
        search reads the pages it touches (a page fault each, the first time).
        ``populate=True`` maps every page at once instead (reading the files; the index
        then resides in memory, about its size on disk): what a service that searches a
        large index at low latency wants. Sizes are always checked; ``verify=True`` also
        checks every file's SHA-256 (reads all).
        Raises ``FileNotFoundError`` for a missing directory and
        :class:`engine.storage.IndexFormatError` (a ``ValueError``) for an unknown version,
        a malformed manifest, or a missing, truncated, tampered or non-regular file.
        """
        if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"index path must be a str or os.PathLike, got {type(path).__name__}")
        path = os.fspath(path)
        # A save may replace the directory while it is read: every file is read through a
        # name pinned to the directory opened first, and a version that a save removed
        # meanwhile (its files gone) is left for the new one.
        for attempt in range(_LOAD_ATTEMPTS):
            with storage.pinned_dir(path) as root:
                try:
                    index = cls._load_dir(root, path, verify, mmap, populate)
                except (storage.IndexFormatError, FileNotFoundError) as e:
                    if root != path and attempt + 1 < _LOAD_ATTEMPTS and storage.replaced_since(path, root):
                        continue
                    if root == path:
                        raise
                    raise type(e)(str(e).replace(root, path)) from None
                st = os.stat(root)
                index._disk = ((st.st_dev, st.st_ino), index._disk_manifest, mmap)
            index.path = path
            return index
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load_dir(cls, root: str, path: str, verify: bool, mmap: bool, populate: bool) -> "Index":
        """Index.load of the directory named ``root`` (``path``: the name it was opened by)."""
        m = storage.read_manifest(root)
        files = m["files"]
        n = m["count"]
        for name in files:  # every listed file must be present, regular and intact
            storage.check_file(root, name, files[name], verify)

        def get(name):
            t = storage.map_array(os.path.join(root, name), files[name])
            return t if mmap else t.clone()

        vectors = get("vectors.bin")
        ids = None
        if m["ids"] == "int":
            ids = get("ids.i64.bin").numpy()
        elif m["ids"] == "str":
            offsets, blob = get("ids.offsets.bin"), get("ids.utf8.bin")
            o = offsets.numpy()
            if o[0] != 0 or o[-1] != blob.shape[0] or np.any(np.diff(o) < 0):
                raise storage.IndexFormatError(f"{path}: string id offsets are inconsistent")
            ids = _StringIds(offsets, blob)
        scales = get(storage.SCALES_FILE) if storage.SCALES_FILE in files else None
        if scales is not None and verify:
            try:
                quant.check_scales(vectors, scales)
            except ValueError as e:
                raise storage.IndexFormatError(f"{path}: {e}") from None
        index = cls(vectors, ids, scales=scales, _checked=True)
        if mmap:
            st = os.stat(os.path.join(root, "vectors.bin"))
            index._vectors_file = (os.path.join(path, "vectors.bin"), dict(files["vectors.bin"]), vectors,
                                   vectors._version, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        if m["graph"] is not None:
            neighbors = get("graph.i32.bin")
            index.graph = neighbors  # bounds were checked when it was set before saving
            index.graph_params = dict(m["graph"].get("params", {}))
            if verify:
                index.set_graph(neighbors, index.graph_params)
        if m["codes"] is not None:
            from .graph.codes import LinearCodes

            from .graph.codes import ResidualBits

            arrays = {attr: get(fname) for attr, (fname, _) in storage.CODE_FILES.items()}
            residual = None
            has_residual = m["codes"].get("residual", False)
            if not isinstance(has_residual, bool):
                raise storage.IndexFormatError(f"{path}: the codes' \"residual\" must be true or false")
            if has_residual:
                missing = [f for f, _ in storage.RESIDUAL_FILES.values() if f not in files]
                if missing:
                    raise storage.IndexFormatError(f"{path}: the codes' second level lacks {missing}")
                residual = ResidualBits(**{attr: get(fname) for attr, (fname, _) in storage.RESIDUAL_FILES.items()})
            codes = LinearCodes(**arrays, n=n, params=dict(m["codes"].get("params", {})), residual=residual)
            try:
                codes.check(n, m["dim"])
            except ValueError as e:
                raise storage.IndexFormatError(f"{path}: {e}") from None
            index.codes = codes
        if m["deleted"] is not None:
            mask = storage.map_array(os.path.join(root, storage.DELETED_FILE), files[storage.DELETED_FILE])
            if mask.numel() and int(mask.max()) > 1:
                raise storage.IndexFormatError(f"{path}: {storage.DELETED_FILE} holds a value other than 0 and 1")
            index.deleted = mask.to(torch.bool)
        index._disk_manifest = m
        if populate and mmap:
            for t in (index.vectors, index.scales, index.graph,
                      *(getattr(index.codes, a) for a in ("codes",) if index.codes),
                      *((index.codes.residual.bits,) if index.codes and index.codes.residual is not None else ())):
                if t is not None:
                    storage.populate(t)
        return index


def write_index_files(path: str | os.PathLike, vector_chunks, n: int, d: int, dtype_name: str, *,
                      ids=None, scales: torch.Tensor | None = None, graph: torch.Tensor | None = None,
                      graph_params: dict | None = None, codes=None, vectors_link=None,
                      deleted: torch.Tensor | None = None,
                      extra_arrays: dict[str, torch.Tensor] | None = None) -> dict:
    """Write an index directory atomically from an iterator of vector row chunks.

    ``scales``: the (n,) float32 row scales, required for int8 / float8_e4m3 vectors.
    ``codes``: the graph search's candidate codes (:class:`engine.graph.codes.LinearCodes`).
    ``vectors_link``: ``(path, manifest entry)`` of an existing vectors file holding
    exactly these rows, hard-linked instead of written (when the file system allows).
    ``extra_arrays`` (file name -> tensor) are written and listed in the manifest beside
    the standard files. ``deleted``: tombstones (bool (n,)), written when any is set.
    The target is checked (:func:`engine.storage.save_target`) before anything is
    written. Returns the manifest written.
    """
    target = storage.save_target(path)
    with storage.temp_dir(target) as tmp:
        files = {}

        def add(name: str, rows, dtype: str, shape: list) -> None:
            info = storage.write_array(os.path.join(tmp, name), rows)
            expect = math.prod(shape) * storage.DTYPES[dtype][0].itemsize
            if info["size"] != expect:
                raise ValueError(f"{name}: got {info['size']} bytes, expected {expect} for {dtype} {shape}")
            files[name] = {"dtype": dtype, "shape": shape, **info}

        linked = False
        if vectors_link is not None:
            try:
                os.link(vectors_link[0], os.path.join(tmp, "vectors.bin"))
                src = vectors_link[1]
                parts = src.get("parts") or [[src["size"], src["sha256"]]]
                files["vectors.bin"] = {"dtype": dtype_name, "shape": [n, d], "size": src["size"],
                                        "parts": parts, "sha256": storage.parts_digest(parts)}
                linked = True
            except OSError:  # another file system: write the rows
                pass
        if not linked:
            add("vectors.bin", vector_chunks, dtype_name, [n, d])
            # Append-only from here on (engine.update appends its rows as further parts).
            e = files["vectors.bin"]
            e["parts"] = [[e["size"], e["sha256"]]]
            e["sha256"] = storage.parts_digest(e["parts"])
        if (dtype_name in storage.QUANTIZED_DTYPES) != (scales is not None):
            raise ValueError(f"{dtype_name} vectors " + ("need" if scales is None else "take no") + " row scales")
        if scales is not None:
            add(storage.SCALES_FILE, scales.to("cpu", torch.float32), "float32", [n])
        kind = "none" if ids is None else ("int" if isinstance(ids, np.ndarray) else "str")
        if kind == "int":
            add("ids.i64.bin", torch.from_numpy(ids), "int64", [n])
        elif kind == "str":
            encoded = [x.encode("utf-8") for x in ids]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum([len(b) for b in encoded], out=offsets[1:])
            add("ids.offsets.bin", torch.from_numpy(offsets), "int64", [n + 1])
            blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
            add("ids.utf8.bin", torch.from_numpy(blob.copy()), "uint8", [len(blob)])
        graph_entry = None
        if graph is not None:
            add("graph.i32.bin", graph, "int32", list(graph.shape))
            graph_entry = {"degree": int(graph.shape[1]), "params": dict(graph_params or {})}
        codes_entry = None
        if codes is not None:
            for fname, (t, dt) in storage.code_arrays(codes).items():
                add(fname, t, dt, list(t.shape))
            codes_entry = storage.codes_entry(codes)
        deleted_entry = None
        if deleted is not None and bool(deleted.any()):
            add(storage.DELETED_FILE, deleted.to(torch.uint8), "uint8", [n])
            deleted_entry = {"count": int(deleted.sum())}
        for name, arr in (extra_arrays or {}).items():
            if name in files:
                raise ValueError(f"extra array {name!r} would replace a standard index file")
            add(name, arr, storage.TORCH_TO_NAME[arr.dtype], list(arr.shape))
        manifest = {
            "format": storage.FORMAT,
            "version": storage.VERSION,
            "count": n,
            "dim": d,
            "dtype": dtype_name,
            "ids": kind,
            "graph": graph_entry,
            "codes": codes_entry,
            "deleted": deleted_entry,
            "files": files,
        }
        storage.commit_dir(tmp, target, manifest)
    return manifest
