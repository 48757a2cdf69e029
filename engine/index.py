"""``Index``: document vectors, optional external ids and a neighbour graph, on disk or in
memory, with exact and graph search."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from . import backends, storage
from .qnet import QNet
from .results import SearchResult, SearchStats
from .scoring import as_vectors, check_pair, check_qnets
from .search.exact import exact_search

SEARCH_MODES = ("exact", "graph")


def _normalise_ids(ids, n: int):
    """External ids: None, an int64 array, or a list of str."""
    if ids is None:
        return None
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.dtype.kind not in "iu":
            raise TypeError(f"integer ids must have an integer dtype, got {ids.dtype}")
        if ids.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
        return ids.astype(np.int64)
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} vectors")
    if all(isinstance(i, str) for i in ids):
        return ids
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return np.asarray(ids, dtype=np.int64)
    raise TypeError("ids must be all str or all int")


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
    """Document vectors ``(n, d)`` (float32, float16 or bfloat16), optional external ids
    (integers or strings) and an optional neighbour graph ``(n, R)`` int32.

    Build with :meth:`from_vectors`, persist with :meth:`save`, open with :meth:`load`
    (memory-mapped), search with :meth:`search`.
    """

    def __init__(self, vectors: torch.Tensor, ids=None, graph: torch.Tensor | None = None,
                 graph_params: dict | None = None, *, _checked: bool = False):
        if not _checked:
            vectors = as_vectors(vectors)
            ids = _normalise_ids(ids, vectors.shape[0])
        self.vectors = vectors
        self._ids = ids
        self.graph: torch.Tensor | None = None
        self.graph_params: dict = {}
        self.codes = None  # engine.graph.codes.LinearCodes: the default graph search's candidates
        self.path: str | None = None
        if graph is not None:
            self.set_graph(graph, graph_params or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vectors(cls, vectors, ids: Sequence | np.ndarray | None = None) -> "Index":
        """An in-memory index over ``vectors`` (n, d); ``ids``: n str or n int, optional."""
        return cls(vectors, ids)

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
    def ids_kind(self) -> str:
        if self._ids is None:
            return "none"
        return "int" if isinstance(self._ids, np.ndarray) else "str"

    def __repr__(self) -> str:
        g = f", graph degree {self.graph.shape[1]}" if self.graph is not None else ""
        c = f", codes {self.codes.params.get('bytes_per_vector')} B" if self.codes is not None else ""
        return f"Index(n={len(self)}, dim={self.dim}, dtype={self.dtype}, ids={self.ids_kind}{g}{c})"

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Index":
        """A copy with the vectors on ``device`` / in ``dtype`` (graph and ids kept)."""
        out = Index(self.vectors.to(device=device, dtype=dtype), self._ids, _checked=True)
        if self.graph is not None:
            out.set_graph(self.graph, self.graph_params)
        if self.codes is not None and dtype in (None, self.dtype):
            out.codes = self.codes  # codes of other values would be wrong: rebuild them
        return out

    def set_graph(self, neighbors: torch.Tensor, params: dict) -> None:
        """Attach a neighbour graph: ``(n, R)`` int32 row indices, -1 for no neighbour."""
        if not isinstance(neighbors, torch.Tensor):
            raise TypeError("neighbors must be a torch.Tensor")
        if neighbors.dim() != 2 or neighbors.shape[0] != len(self):
            raise ValueError(f"neighbors must have shape ({len(self)}, R), got {tuple(neighbors.shape)}")
        if neighbors.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"neighbors must be int32 or int64, got {neighbors.dtype}")
        if neighbors.numel():
            lo, hi = int(neighbors.min()), int(neighbors.max())
            if lo < -1 or hi >= len(self):
                raise ValueError(f"graph neighbour out of range ({lo}..{hi}) for {len(self)} documents")
        self.graph = neighbors.to(torch.int32)
        self.graph_params = dict(params)

    def build_graph(self, degree: int = 32, *, codes: bool = True, code_bytes: int = 64,
                    progress: bool = False, **kwargs) -> "Index":
        """Build what graph search needs: the ``degree`` nearest other documents of every
        document by L2 (see :func:`engine.graph.build.build_knn_graph`, which takes the
        other keyword options) and, with ``codes``, the compressed candidate codes of
        ``code_bytes`` bytes per document (:meth:`build_codes`); returns self."""
        from .graph.build import build_knn_graph

        if codes:
            self.build_codes(code_bytes, progress=progress)
        neighbors, params = build_knn_graph(self.vectors, degree, progress=progress, **kwargs)
        self.set_graph(neighbors, params)
        return self

    def build_codes(self, bytes_per_vector: int = 64, **kwargs) -> "Index":
        """Build the compressed codes the default graph search draws its candidates from
        (:func:`engine.graph.codes.build_codes`: ``bytes_per_vector`` per document); returns
        self."""
        from .graph.codes import build_codes

        self.codes = build_codes(self.vectors, bytes_per_vector=bytes_per_vector, **kwargs)
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
               block_size: int | None = None, **graph_options) -> SearchResult:
        """Top-``k`` documents for each q-net, best first.

        Args:
            qnets: :class:`QNet` of ``Q`` q-nets reading ``dim``-wide vectors.
            k: number of results per query (> 0). When ``k`` exceeds what the search can
                return, the remaining slots are padded with score ``-inf`` and id ``-1``
                (shapes stay ``(Q, k)``).
            mode: ``"exact"`` (a full streaming scan) or ``"graph"`` (needs a graph; see
                :meth:`build_graph`; ``graph_options`` go to the graph search).
            backend: ``"auto"``, ``"torch"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.
            block_size: documents per streamed block in exact search.

        Returns:
            :class:`SearchResult` with ``scores`` (Q, k) float32 and ``ids`` (Q, k) int64 on
            the q-nets' device.
        """
        import time

        qnets = check_qnets(qnets)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {SEARCH_MODES}, got {mode!r}")
        if qnets.dim != self.dim:
            raise ValueError(f"dimension mismatch: q-nets read {qnets.dim}-d vectors, the index holds {self.dim}-d")
        if self.vectors.device == qnets.device:
            check_pair(qnets, self.vectors)
        t0 = time.perf_counter()
        if mode == "exact":
            if graph_options:
                raise TypeError(f"unexpected options for exact search: {sorted(graph_options)}")
            scores, ids = exact_search(qnets, self.vectors, int(k), backend=backend, block_size=block_size)
            be = backends.get_backend(backend, qnets.device)
            impl = "fused" if hasattr(be, "exact_topk") and self.vectors.device == qnets.device else "stream"
            stats = SearchStats("exact", backends.backend_name(be), impl,
                                documents_scored=len(self) * qnets.num_queries)
        else:
            if self.graph is None:
                raise ValueError("graph search needs a graph: call index.build_graph() first")
            if block_size is not None:
                raise TypeError("block_size applies to exact search only")
            from .graph.search import graph_search

            scores, ids, st = graph_search(self, qnets, int(k), backend=backend, **graph_options)
            stats = SearchStats("graph", **st)
        if qnets.device.type == "cuda":
            torch.cuda.synchronize(qnets.device)
        stats.seconds = time.perf_counter() - t0
        return SearchResult(scores, ids, stats)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to directory ``path`` atomically (format v1, see
        :mod:`engine.storage`); an existing index there is replaced in one step."""
        path = os.fspath(path)
        n, d = self.vectors.shape
        # Stream in row chunks: a memory-mapped source is never read whole.
        step = max(1, (64 << 20) // max(1, d * self.vectors.element_size()))
        chunks = (self.vectors[s : s + step] for s in range(0, n, step))
        write_index_files(path, chunks, n, d, storage.TORCH_TO_NAME[self.dtype],
                          ids=self._ids, graph=self.graph, graph_params=self.graph_params, codes=self.codes,
                          vectors_link=self._unchanged_vectors_file())
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify: bool = False, mmap: bool = True) -> "Index":
        """Open an index directory.

        Arrays are memory-mapped (``mmap=True``): opening reads only the manifest. Sizes
        are always checked; ``verify=True`` also checks every file's SHA-256 (reads all).
        Raises ``FileNotFoundError`` for a missing directory and
        :class:`engine.storage.IndexFormatError` (a ``ValueError``) for an unknown version
        or a missing, truncated or tampered file.
        """
        path = os.fspath(path)
        m = storage.read_manifest(path)
        files = m["files"]
        n, d = m["count"], m["dim"]

        def get(name, dtype, shape):
            entry = files.get(name)
            if entry is None:
                raise storage.IndexFormatError(f"manifest of {path} does not list {name}")
            if entry.get("dtype") != dtype or (shape is not None and list(entry.get("shape", [])) != shape):
                raise storage.IndexFormatError(f"{name}: manifest says {entry.get('dtype')} {entry.get('shape')}, expected {dtype} {shape}")
            fpath = storage.check_file(path, name, entry, verify)
            t = storage.map_array(fpath, entry)
            return t if mmap else t.clone()

        for name in files:  # every listed file must be present and intact
            storage.check_file(path, name, files[name], verify)
        vectors = get("vectors.bin", m["dtype"], [n, d])
        ids = None
        if m["ids"] == "int":
            ids = get("ids.i64.bin", "int64", [n]).numpy()
        elif m["ids"] == "str":
            offsets = get("ids.offsets.bin", "int64", [n + 1])
            blob = get("ids.utf8.bin", "uint8", None)
            o = offsets.numpy()
            if n and (o[0] != 0 or o[-1] != blob.shape[0] or np.any(np.diff(o) < 0)):
                raise storage.IndexFormatError(f"{path}: string id offsets are inconsistent")
            ids = _StringIds(offsets, blob)
        index = cls(vectors, ids, _checked=True)
        if mmap:
            st = os.stat(os.path.join(path, "vectors.bin"))
            index._vectors_file = (os.path.join(path, "vectors.bin"), dict(files["vectors.bin"]), vectors,
                                   vectors._version, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        if m.get("graph"):
            g = m["graph"]
            neighbors = get("graph.i32.bin", "int32", [n, int(g["degree"])])
            index.graph = neighbors  # bounds were checked when it was set before saving
            index.graph_params = dict(g.get("params", {}))
            if verify:
                index.set_graph(neighbors, index.graph_params)
        if m.get("codes"):
            from .graph.codes import LinearCodes

            c = m["codes"]
            if not isinstance(c, dict) or not isinstance(c.get("params", {}), dict):
                raise storage.IndexFormatError(f"manifest of {path}: 'codes' must be an object")
            arrays = {}
            for attr, fname, dt in _CODE_FILES:
                entry = files.get(fname)
                if entry is None:
                    raise storage.IndexFormatError(f"manifest of {path} does not list {fname}")
                arrays[attr] = get(fname, dt, None)
            codes = LinearCodes(**arrays, n=n, params=dict(c.get("params", {})))
            try:
                codes.check(n, d)
            except ValueError as e:
                raise storage.IndexFormatError(f"{path}: {e}") from None
            index.codes = codes
        index.path = path
        return index


_CODE_FILES = (("codes", "codes.u8.bin", "uint8"), ("rotation", "codes.rotation.f32.bin", "float32"),
               ("dims", "codes.dims.i32.bin", "int32"), ("bits", "codes.bits.i32.bin", "int32"),
               ("levels", "codes.levels.f32.bin", "float32"), ("mean", "codes.mean.f32.bin", "float32"))


def write_index_files(path: str, vector_chunks, n: int, d: int, dtype_name: str, *, ids=None,
                      graph: torch.Tensor | None = None, graph_params: dict | None = None,
                      codes=None, vectors_link=None) -> None:
    """Write an index directory atomically from an iterator of vector row chunks.

    ``vectors_link``: ``(path, manifest entry)`` of an existing vectors file with exactly
    these rows, hard-linked instead of written (same file system; else written)."""
    tmp = storage.temp_dir_for(path)
    try:
        files = {}
        info = None
        if vectors_link is not None:
            try:
                os.link(vectors_link[0], os.path.join(tmp, "vectors.bin"))
                info = {k: vectors_link[1][k] for k in ("size", "sha256")}
            except OSError:  # another file system: write the rows
                info = None
        if info is None:
            info = storage.write_array(os.path.join(tmp, "vectors.bin"), vector_chunks)
        expect = n * d * storage.DTYPES[dtype_name][0].itemsize
        if info["size"] != expect:
            raise ValueError(f"vector chunks gave {info['size']} bytes, expected {expect}")
        files["vectors.bin"] = {"dtype": dtype_name, "shape": [n, d], **info}
        kind = "none" if ids is None else ("int" if isinstance(ids, np.ndarray) else "str")
        if kind == "int":
            info = storage.write_array(os.path.join(tmp, "ids.i64.bin"), torch.from_numpy(ids))
            files["ids.i64.bin"] = {"dtype": "int64", "shape": [n], **info}
        elif kind == "str":
            encoded = [x.encode("utf-8") for x in ids]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum([len(b) for b in encoded], out=offsets[1:])
            info = storage.write_array(os.path.join(tmp, "ids.offsets.bin"), torch.from_numpy(offsets))
            files["ids.offsets.bin"] = {"dtype": "int64", "shape": [n + 1], **info}
            info = storage.write_bytes(os.path.join(tmp, "ids.utf8.bin"), b"".join(encoded))
            files["ids.utf8.bin"] = {"dtype": "uint8", "shape": [info["size"]], **info}
        graph_entry = None
        if graph is not None:
            info = storage.write_array(os.path.join(tmp, "graph.i32.bin"), graph)
            files["graph.i32.bin"] = {"dtype": "int32", "shape": list(graph.shape), **info}
            graph_entry = {"degree": int(graph.shape[1]), "params": dict(graph_params or {})}
        codes_entry = None
        if codes is not None:
            for attr, fname, dt in _CODE_FILES:
                t = getattr(codes, attr).contiguous()
                info = storage.write_array(os.path.join(tmp, fname), t)
                files[fname] = {"dtype": dt, "shape": list(t.shape), **info}
            codes_entry = {"params": dict(codes.params)}
        manifest = {
            "format": storage.FORMAT,
            "version": storage.VERSION,
            "count": n,
            "dim": d,
            "dtype": dtype_name,
            "ids": kind,
            "graph": graph_entry,
            "codes": codes_entry,
            "files": files,
        }
        storage.commit_dir(tmp, path, manifest)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
