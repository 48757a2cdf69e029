"""Incremental updates of an index: add documents, delete them (tombstones), compact.

Every update changes the ``Index`` object and, when the index lives on disk (it was
loaded with :meth:`Index.load` or saved: ``index.path`` is set), commits a new version of
the directory atomically, like a save (:mod:`engine.storage`, format v3):

- ``add``: the new rows are appended to the append-only ``vectors.bin`` (O(m) bytes; the
  committed rows are never rewritten), the ids, graph and codes are written anew (O(n)
  small arrays: 4 R + code bytes + 8 bytes a row), every other file is hard-linked.
- ``delete``: writes ``deleted.u8.bin`` (a byte a row), links everything else.
- ``compact``: writes the whole index without its deleted rows (like a save).

Writers of one index serialise on its lock (:func:`engine.storage.writer_lock`): a
second one is refused with :class:`engine.storage.IndexBusyError`. An index object whose
directory another writer replaced since it was loaded refuses to update it
(:class:`engine.storage.IndexChangedError`: load it again). A crash at any point leaves
the previous version loadable and intact; readers that opened a version keep reading it.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from . import once, quant, storage
from .graph.insert import Rows, insert, remove

ON_EXISTING = ("error", "replace", "append")


# ---------------------------------------------------------------------------- checks
def _check_vectors(index, vectors) -> torch.Tensor:
    if isinstance(vectors, np.ndarray):
        if vectors.dtype.kind != "f":
            raise TypeError(f"vectors must be floating point, got numpy {vectors.dtype}")
        vectors = torch.from_numpy(vectors)
    if not isinstance(vectors, torch.Tensor):
        raise TypeError(f"vectors must be a torch.Tensor or numpy array, got {type(vectors).__name__}")
    if vectors.dim() != 2:
        raise ValueError(f"vectors must be 2-D (m, {index.dim}), got shape {tuple(vectors.shape)}")
    if vectors.shape[1] != index.dim:
        raise ValueError(f"dimension mismatch: the index holds {index.dim}-d vectors, got {vectors.shape[1]}-d")
    if index.scales is not None:  # quantised storage: float rows, quantised below like the build's
        if not vectors.is_floating_point() or quant.is_quantized(vectors.dtype):
            raise TypeError(f"vectors for an index of {index.storage} storage must be float32, float16 or "
                            f"bfloat16 rows (quantised here with per-row scales), got {vectors.dtype}")
    elif vectors.dtype != index.dtype:
        raise TypeError(f"vectors are {vectors.dtype}, the index stores {index.dtype}: convert them first "
                        f"(.to({index.dtype}))")
    if vectors.device != index.device:
        raise ValueError(f"vectors are on {vectors.device}, the index on {index.device}")
    if vectors.numel() and not bool(torch.isfinite(vectors).all()):
        row = int((~torch.isfinite(vectors)).any(1).nonzero()[0, 0])
        raise ValueError(f"vectors hold a NaN or Inf value (row {row}): no search could rank it")
    return vectors.contiguous()


def _check_ids(index, ids, m: int):
    from .index import _normalise_ids

    kind = index.ids_kind
    if kind == "none":
        if ids is not None:
            raise TypeError("this index stores no ids (documents are known by row): add without ids")
        return None
    if ids is None:
        raise TypeError(f"this index stores {kind} ids: pass one id per added vector")
    new = _normalise_ids(ids, m)
    got = "int" if isinstance(new, np.ndarray) else "str"
    if got != kind and m:
        raise TypeError(f"this index stores {kind} ids, got {got} ids")
    if kind == "int" and not isinstance(new, np.ndarray):
        new = np.asarray(new, dtype=np.int64)
    return new


def _live(index) -> np.ndarray:
    n = len(index)
    return np.ones(n, dtype=bool) if index.deleted is None else ~index.deleted.numpy()


def _rows_with_ids(index, wanted) -> tuple[np.ndarray, set]:
    """``(live rows whose id is in wanted, the wanted ids found)``."""
    live = _live(index)
    ids = index._ids
    if isinstance(ids, np.ndarray):
        w = np.asarray(sorted(wanted), dtype=np.int64) if wanted else np.empty(0, np.int64)
        hit = np.isin(ids, w) & live
        rows = np.flatnonzero(hit)
        return rows, set(ids[rows].tolist())
    rows = [i for i, x in enumerate(ids) if x in wanted and live[i]]
    return np.asarray(rows, dtype=np.int64), {ids[i] for i in rows}


def _repeats(new) -> list:
    seen, rep = set(), []
    for x in (new.tolist() if isinstance(new, np.ndarray) else new):
        if x in seen:
            rep.append(x)
        seen.add(x)
    return rep


# ---------------------------------------------------------------------------- in memory
def _clear_caches(index) -> None:
    for key in [k for k in index.__dict__ if k.endswith("_cache") or k == "_vectors_file"]:
        del index.__dict__[key]


def _adopt(index, fresh) -> None:
    """Make ``index`` the freshly loaded ``fresh`` (the object stays the same)."""
    _clear_caches(index)
    for key, value in fresh.__dict__.items():
        if not key.endswith("_cache") and key != once._LOCK_ATTR:
            index.__dict__[key] = value


def _grown(index, x: torch.Tensor, new_ids, hide: np.ndarray, method: str) -> dict:
    """The arrays of ``index`` with the rows ``x`` appended (and rows ``hide`` deleted)."""
    n_old, m = len(index), x.shape[0]
    n = n_old + m
    rows = Rows(index.float_rows(), x)
    out = {"graph": None, "graph_params": dict(index.graph_params), "codes": None, "ids": None}
    if index.graph is not None:
        out["graph"] = insert(rows, index.graph, method=method, seed=int(index.graph_params.get("seed", 0)))
        out["graph_params"]["inserted"] = int(index.graph_params.get("inserted", 0)) + m
    if index.codes is not None:
        out["codes"] = index.codes.appended(rows.slice, n)
    if new_ids is not None:
        old = index._ids
        out["ids"] = np.concatenate([np.asarray(old), new_ids]) if isinstance(old, np.ndarray) \
            else list(old) + list(new_ids)
    deleted = torch.zeros(n, dtype=torch.bool)
    if index.deleted is not None:
        deleted[:n_old] = index.deleted
    deleted[torch.from_numpy(hide)] = True
    out["deleted"] = deleted if bool(deleted.any()) else None
    return out


def _apply(index, vectors, state: dict, scales=None) -> None:
    _clear_caches(index)
    index.vectors = vectors
    index.scales = scales
    index._ids = state["ids"]
    index.graph = state["graph"]
    index.graph_params = state["graph_params"]
    index.codes = state["codes"]
    index.deleted = state["deleted"]


# ---------------------------------------------------------------------------- on disk
def _on_disk(index) -> bool:
    return index.path is not None and getattr(index, "_disk", None) is not None


def _check_unchanged(index, target: str) -> dict:
    st = os.stat(target)
    if (st.st_dev, st.st_ino) != index._disk[0]:
        raise storage.IndexChangedError(
            f"the index at {index.path} was replaced since this object read it (another writer): "
            "load it again and repeat the update")
    return storage.read_manifest(target)


def _append_vectors(target: str, tmp: str, entry: dict, old: torch.Tensor, x: torch.Tensor, dtype: str) -> dict:
    """``vectors.bin`` of the new version: the committed file linked and ``x`` appended
    past its listed size (O(m)); a copy where the file cannot be appended to."""
    src, dst = os.path.join(target, "vectors.bin"), os.path.join(tmp, "vectors.bin")
    n, d = old.shape[0] + x.shape[0], x.shape[1]
    parts = entry.get("parts")
    st = os.stat(src)
    if parts is None or st.st_nlink != 1:
        # Versions 1/2 list an exact size, and a file shared with another index (a save
        # elsewhere links it) must not grow under it: write a new file, append-only from here.
        step = max(1, (64 << 20) // max(1, d * x.element_size()))
        chunks = [old[s : s + step] for s in range(0, old.shape[0], step)] + [x]
        info = storage.write_array(dst, chunks)
        parts = [[info["size"], info["sha256"]]]
    else:
        os.link(src, dst)
        h = hashlib.sha256()
        with open(dst, "r+b") as f:
            if st.st_size > entry["size"]:  # the rows of an add that died before its commit
                f.truncate(entry["size"])
            f.seek(entry["size"])
            data = memoryview(storage._np_view(x)).cast("B")
            f.write(data)
            h.update(data)
            f.flush()
            os.fsync(f.fileno())
        storage.crash_point("after-append")
        parts = parts + [[data.nbytes, h.hexdigest()]]
    size = sum(p[0] for p in parts)
    return {"dtype": dtype, "shape": [n, d], "size": size, "parts": parts, "sha256": storage.parts_digest(parts)}


def _commit(index, *, n: int, arrays: dict, manifest: dict, append=None) -> None:
    """Commit a new version of ``index.path``: ``arrays`` (file name -> (tensor, dtype))
    written, ``append`` rows appended to the vectors, every other listed file linked."""
    target = storage.save_target(index.path)
    with storage.writer_lock(target):
        m = _check_unchanged(index, target)
        drop = set(manifest.pop("drop", ()))
        with storage.temp_dir(target) as tmp:
            files = {}
            for name, entry in m["files"].items():
                if name in arrays or name in drop or (append is not None and name == "vectors.bin"):
                    continue
                os.link(os.path.join(target, name), os.path.join(tmp, name))
                files[name] = entry
            if append is not None:
                files["vectors.bin"] = _append_vectors(target, tmp, m["files"]["vectors.bin"], index.vectors,
                                                       append, m["dtype"])
            for name, (t, dtype) in arrays.items():
                info = storage.write_array(os.path.join(tmp, name), t)
                files[name] = {"dtype": dtype, "shape": list(t.shape), **info}
            storage.crash_point("files-written")
            new = {k: m[k] for k in ("format", "count", "dim", "dtype", "ids", "graph", "codes", "deleted")}
            new.update(manifest, version=storage.VERSION, count=n, files=files)
            storage.commit_dir(tmp, target, new)
        st = os.stat(target)
        return (st.st_dev, st.st_ino), storage.read_manifest(target)


def _ids_arrays(ids, n: int) -> dict:
    if isinstance(ids, np.ndarray):
        return {"ids.i64.bin": (torch.from_numpy(np.ascontiguousarray(ids)), "int64")}
    encoded = [s.encode("utf-8") for s in ids]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return {"ids.offsets.bin": (torch.from_numpy(offsets), "int64"), "ids.utf8.bin": (torch.from_numpy(blob), "uint8")}


def _state_arrays(state: dict, n: int) -> tuple[dict, dict]:
    """(files to write, manifest fields) of a grown index's ids, graph, codes, tombstones."""
    arrays, fields = {}, {"drop": []}
    if state["ids"] is not None:
        arrays.update(_ids_arrays(state["ids"], n))
    if state["graph"] is not None:
        arrays["graph.i32.bin"] = (state["graph"], "int32")
        fields["graph"] = {"degree": int(state["graph"].shape[1]), "params": state["graph_params"]}
    if state["codes"] is not None:
        arrays.update(storage.code_arrays(state["codes"]))
        fields["codes"] = storage.codes_entry(state["codes"])
        if state["codes"].residual is None:  # no stale second level beside new codes
            fields["drop"] += [fname for fname, _ in storage.RESIDUAL_FILES.values()]
    deleted = _deleted_fields(state["deleted"], arrays)
    fields["drop"] += deleted.pop("drop", [])  # both lists of files to drop
    fields.update(deleted)
    return arrays, fields


def _deleted_fields(deleted, arrays: dict) -> dict:
    if deleted is None or not bool(deleted.any()):
        return {"deleted": None, "drop": [storage.DELETED_FILE]}
    arrays[storage.DELETED_FILE] = (deleted.to(torch.uint8), "uint8")
    return {"deleted": {"count": int(deleted.sum())}}


def _finish_disk(index, identity, manifest, vectors_in_memory, state=None, scales=None) -> None:
    """After a commit: a memory-mapped index maps the new version; an in-memory one takes
    the new arrays."""
    mapped = index._disk[2]
    if mapped:
        from .index import Index

        fresh = Index.load(index.path)
        _adopt(index, fresh)
        return
    if state is not None:
        _apply(index, vectors_in_memory(), state, scales)
    index._disk = (identity, manifest, False)


# ---------------------------------------------------------------------------- the API
def add(index, vectors, ids=None, *, on_existing: str = "error", method: str = "auto") -> None:
    """Append documents to ``index``.

    Args:
        vectors: ``(m, d)`` of the index's dtype and device (finite values); for an index
            of int8 / float8_e4m3 storage, float rows (float32, float16 or bfloat16),
            quantised here with per-row scales as the build quantises them.
        ids: ``m`` ids of the index's kind (int or str); None when the index stores none.
        on_existing: an id already live in the index (or repeated in ``ids``):
            ``"error"`` (ValueError, the default), ``"replace"`` (the live rows holding it
            are deleted in the same commit: an upsert) or ``"append"`` (both kept, as
            ``Index.from_vectors`` keeps repeated ids; a repeat within ``ids`` is then allowed).
        method: how the graph's new lists are found (:func:`engine.graph.insert.insert`):
            ``"auto"``, ``"exact"`` or ``"search"``.

    The graph (if any) takes the new documents under the build's rule, the codes (if any)
    encode them with the existing quantisers. On disk the new version is committed
    atomically (vectors appended, O(m)).

    Raises:
        TypeError: vectors/ids of the wrong type, dtype or kind.
        ValueError: wrong shape or dimension, non-finite values, an id count mismatch, an
            existing id under ``on_existing="error"``, a bad option.
        engine.storage.IndexBusyError / IndexChangedError: another writer.
    """
    if on_existing not in ON_EXISTING:
        raise ValueError(f"on_existing must be one of {ON_EXISTING}, got {on_existing!r}")
    from .graph.insert import INSERT_METHODS

    if method not in INSERT_METHODS:
        raise ValueError(f"method must be one of {INSERT_METHODS}, got {method!r}")
    if index.device.type != "cpu":
        raise ValueError(f"add updates an index on the CPU (this one is on {index.device}); add, then move it")
    x = _check_vectors(index, vectors)
    m = x.shape[0]
    new_ids = _check_ids(index, ids, m)
    if m == 0:
        return
    hide = np.empty(0, dtype=np.int64)
    if new_ids is not None and on_existing != "append":
        rep = _repeats(new_ids)
        if rep:
            raise ValueError(f"id {rep[0]!r} is repeated among the added ids (on_existing={on_existing!r}); "
                             "pass on_existing='append' to keep repeats")
        hide, found = _rows_with_ids(index, set(new_ids.tolist() if isinstance(new_ids, np.ndarray) else new_ids))
        if found and on_existing == "error":
            first = next(iter(sorted(found, key=str)))
            raise ValueError(f"id {first!r} is already in the index ({len(found)} of the added ids are): pass "
                             "on_existing='replace' to update those documents or 'append' to keep both")
    n = len(index) + m
    scales = None
    if index.scales is not None:  # the graph and codes see what the kernels will read
        x, new_scales = quant.quantize(x, index.dtype)
        scales = torch.cat([index.scales, new_scales])
        state = _grown(index, quant.dequantize(x, new_scales), new_ids, hide, method)
    else:
        state = _grown(index, x, new_ids, hide, method)
    if not _on_disk(index):
        _apply(index, torch.cat([index.vectors, x]), state, scales)
        return
    arrays, fields = _state_arrays(state, n)
    if scales is not None:
        arrays[storage.SCALES_FILE] = (scales, "float32")
    identity, manifest = _commit(index, n=n, arrays=arrays, manifest=fields, append=x)
    _finish_disk(index, identity, manifest, lambda: torch.cat([index.vectors, x]), state, scales)


def delete(index, ids, *, missing_ok: bool = False) -> int:
    """Hide documents from every search: their rows are set in ``index.deleted`` (and the
    tombstones committed atomically on disk). ``ids``: external ids of the index's kind,
    or row indices when it stores none; every live row holding one of them is hidden.

    Returns the number of rows hidden. Raises ``ValueError`` when an id is not live in
    the index (unless ``missing_ok``), ``TypeError`` for ids of the wrong kind."""
    if isinstance(ids, (str, bytes, int, np.integer)):
        raise TypeError("ids must be a sequence of ids (wrap a single id in a list)")
    n = len(index)
    if index.ids_kind == "none":
        rows = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else list(ids))
        if rows.size and rows.dtype.kind not in "iu":
            raise TypeError("this index stores no ids: delete by row index (ints)")
        rows = rows.astype(np.int64)
        bad = rows[(rows < 0) | (rows >= n)]
        if bad.size:
            raise ValueError(f"row {int(bad[0])} out of range for {n} documents")
        live = _live(index)
        missing = [int(r) for r in rows if not live[r]]
        rows = rows[live[rows]]
    else:
        wanted = _check_ids(index, ids, len(ids))
        wanted = set(wanted.tolist() if isinstance(wanted, np.ndarray) else wanted)
        rows, found = _rows_with_ids(index, wanted)
        missing = sorted(wanted - found, key=str)
    if missing and not missing_ok:
        raise ValueError(f"id {missing[0]!r} is not a live document of the index ({len(missing)} of the ids are "
                         "not); pass missing_ok=True to ignore them")
    rows = np.unique(rows)
    if rows.size == 0:
        return 0
    deleted = torch.zeros(n, dtype=torch.bool) if index.deleted is None else index.deleted.clone()
    deleted[torch.from_numpy(rows)] = True
    if _on_disk(index):
        arrays = {}
        fields = _deleted_fields(deleted, arrays)
        identity, manifest = _commit(index, n=n, arrays=arrays, manifest=fields)
        if index._disk[2]:
            from .index import Index

            _adopt(index, Index.load(index.path))
            return int(rows.size)
        index._disk = (identity, manifest, False)
    index.deleted = deleted
    return int(rows.size)


def compact(index) -> None:
    """Rewrite ``index`` without its deleted rows: vectors, ids and codes of the live rows
    (codes kept, not re-encoded), the graph's lists that held a deleted row rebuilt
    (:func:`engine.graph.insert.remove`); rows keep their order. On disk the whole index
    is written and committed atomically like a save. Nothing deleted: nothing done."""
    if index.deleted is None or not bool(index.deleted.any()):
        return
    live = ~index.deleted
    keep = torch.nonzero(live).flatten()
    m = int(keep.numel())
    graph = remove(Rows(index.float_rows()), index.graph, live) if index.graph is not None else None
    scales = index.scales[keep] if index.scales is not None else None
    codes = index.codes.select(keep) if index.codes is not None else None
    ids = index._ids
    if ids is not None:
        ids = np.asarray(ids)[keep.numpy()] if isinstance(ids, np.ndarray) else [ids[i] for i in keep.tolist()]
    params = dict(index.graph_params)
    if graph is not None:
        params["compacted"] = int(params.get("compacted", 0)) + (len(index) - m)
    if not _on_disk(index):
        _clear_caches(index)
        index.vectors, index.scales = index.vectors[keep], scales
        index._ids, index.codes, index.deleted = ids, codes, None
        if graph is not None:
            index.graph, index.graph_params = graph, params
        return
    from .index import Index, write_index_files

    target = storage.save_target(index.path)
    with storage.writer_lock(target):
        _check_unchanged(index, target)
        d = index.dim
        step = max(1, (64 << 20) // max(1, d * index.vectors.element_size()))
        chunks = (index.vectors[keep[s : s + step]] for s in range(0, m, step))
        manifest = write_index_files(index.path, chunks, m, d, storage.TORCH_TO_NAME[index.dtype], ids=ids,
                                     scales=scales, graph=graph, graph_params=params, codes=codes)
        st = os.stat(target)
    if index._disk[2]:
        _adopt(index, Index.load(index.path))
        return
    _clear_caches(index)
    index.vectors, index.scales = index.vectors[keep], scales
    index._ids, index.codes, index.deleted = ids, codes, None
    if graph is not None:
        index.graph, index.graph_params = graph, params
    index._disk = ((st.st_dev, st.st_ino), manifest, False)
