"""The sharded index format: a directory whose ``manifest.json`` names ordinary indexes.

``manifest.json``::

    {"format": "hypencoder-engine-sharded-index", "version": 1,
     "count": N, "dim": d, "dtype": "float32" | "float16" | "bfloat16" | "int8" | "float8_e4m3",
     "ids": "none" | "int" | "str",
     "shards": [{"path": "shard-00000", "offset": 0, "count": n_0,
                 "manifest_sha256": hex, "graph": bool, "codes": bool}, ...]}

Shard ``i`` holds the global rows ``offset_i .. offset_i + count_i - 1``; offsets are the
running sums of the counts (shards in row order, any of them may be empty). ``path`` is
relative to the manifest's directory (or absolute). ``manifest_sha256`` is the SHA-256 of
the shard's own ``manifest.json``, which lists the SHA-256 of each of its files: a shard
replaced, rebuilt or edited after the sharded manifest was written fails its check when
it is opened. Without stored ids a document's id is its global row, as in one index.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from .. import storage
from ..storage import IndexFormatError

VERSION = 1
MAX_SHARDS = 1 << 20


class ShardCheckError(IndexFormatError):
    """A shard is missing, damaged, or not the one the sharded manifest names (a
    ``ValueError``); raised on every rank of a sharded search."""


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the sharded manifest lists it."""

    path: str
    offset: int
    count: int
    manifest_sha256: str
    graph: bool
    codes: bool

    def to_json(self) -> dict:
        return {"path": self.path, "offset": self.offset, "count": self.count,
                "manifest_sha256": self.manifest_sha256, "graph": self.graph, "codes": self.codes}


@dataclass(frozen=True)
class ShardedManifest:
    """A sharded index as its manifest describes it. ``root``: the directory holding the
    manifest; ``sha256``: of the manifest file (the ranks compare it)."""

    root: str
    count: int
    dim: int
    dtype: str
    ids: str
    shards: tuple[ShardEntry, ...]
    sha256: str = ""

    def shard_dir(self, i: int) -> str:
        return os.path.normpath(os.path.join(self.root, self.shards[i].path))

    def to_json(self) -> dict:
        return {"format": storage.SHARDED_FORMAT, "version": VERSION, "count": self.count, "dim": self.dim,
                "dtype": self.dtype, "ids": self.ids, "shards": [s.to_json() for s in self.shards]}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(path: str) -> tuple[dict, bytes]:
    with storage.open_regular(path, storage.MANIFEST) as f:
        raw = f.read(storage._MAX_MANIFEST_BYTES + 1)
    if len(raw) > storage._MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{path} is larger than {storage._MAX_MANIFEST_BYTES} bytes: not a manifest")
    try:
        return json.loads(raw.decode("utf-8")), raw
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IndexFormatError(f"{path} is not valid JSON: {type(e).__name__}: {e}") from None


def is_sharded(path) -> bool:
    """Whether ``path`` is a directory holding a sharded manifest (no other check)."""
    try:
        m, _ = _read_json(os.path.join(os.fspath(path), storage.MANIFEST))
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(m, dict) and m.get("format") == storage.SHARDED_FORMAT


def read_sharded_manifest(path) -> ShardedManifest:
    """Read and check the manifest of the sharded index at ``path``: every field's type
    and range, and offsets that tile ``0 .. count`` in order.

    Raises ``TypeError`` for a path that is not a str/PathLike, ``FileNotFoundError`` when
    ``path`` is not a directory, and :class:`engine.storage.IndexFormatError` naming the
    field otherwise (an ordinary index is refused with a pointer to ``Index.load``).
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"sharded index path must be a str or os.PathLike, got {type(path).__name__}")
    root = os.path.abspath(os.fspath(path))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"no sharded index directory at {path}")
    mpath = os.path.join(root, storage.MANIFEST)
    if not os.path.lexists(mpath):
        raise IndexFormatError(f"{path} has no {storage.MANIFEST}: not a sharded index")
    m, raw = _read_json(mpath)
    if isinstance(m, dict) and m.get("format") == storage.FORMAT:
        raise IndexFormatError(f"{path} is an ordinary index, not a sharded one: open it with engine.Index.load "
                               "(or split it with `python -m engine shard`)")
    if not isinstance(m, dict) or m.get("format") != storage.SHARDED_FORMAT:
        raise IndexFormatError(f"{mpath}: manifest field 'format' is not {storage.SHARDED_FORMAT!r}")
    if m.get("version") != VERSION or not _is_int(m.get("version")):
        raise IndexFormatError(f"unsupported sharded index version {m.get('version')!r} in {mpath} "
                               f"(manifest field 'version'); this engine reads version {VERSION}")
    for key, ok, want in (
        ("count", lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
        ("dim", lambda x: _is_int(x) and x >= 1, "a positive integer"),
        ("dtype", lambda x: isinstance(x, str) and x in storage.VECTOR_DTYPES, f"one of {storage.VECTOR_DTYPES}"),
        ("ids", lambda x: isinstance(x, str) and x in storage.ID_KINDS, f"one of {storage.ID_KINDS}"),
        ("shards", lambda x: isinstance(x, list) and 1 <= len(x) <= MAX_SHARDS,
         f"a list of 1 to {MAX_SHARDS} shards"),
    ):
        if not ok(m.get(key)):
            raise IndexFormatError(f"{mpath}: manifest field {key!r} must be {want}, got {m.get(key)!r}")
    shards, offset = [], 0
    for i, s in enumerate(m["shards"]):
        field = f"shards[{i}]"
        if not isinstance(s, dict):
            raise IndexFormatError(f"{mpath}: manifest field {field} must be an object, got {type(s).__name__}")
        p, off, n, sha = s.get("path"), s.get("offset"), s.get("count"), s.get("manifest_sha256")
        if not isinstance(p, str) or not p.strip() or "\0" in p:
            raise IndexFormatError(f"{mpath}: manifest field {field}.path must be a non-empty path, got {p!r}")
        if not _is_int(n) or n < 0:
            raise IndexFormatError(f"{mpath}: manifest field {field}.count must be a non-negative integer, got {n!r}")
        if off != offset or not _is_int(off):
            raise IndexFormatError(f"{mpath}: manifest field {field}.offset must be {offset} (the rows of the shards "
                                   f"before it), got {off!r}")
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise IndexFormatError(f"{mpath}: manifest field {field}.manifest_sha256 must be 64 hex digits, "
                                   f"got {sha!r}")
        flags = {}
        for key in ("graph", "codes"):
            if not isinstance(s.get(key), bool):
                raise IndexFormatError(f"{mpath}: manifest field {field}.{key} must be true or false, "
                                       f"got {s.get(key)!r}")
            flags[key] = s[key]
        shards.append(ShardEntry(p, off, n, sha, **flags))
        offset += n
    if offset != m["count"]:
        raise IndexFormatError(f"{mpath}: manifest field 'count' is {m['count']}, the shards hold {offset} rows")
    return ShardedManifest(root, m["count"], m["dim"], m["dtype"], m["ids"], tuple(shards),
                           hashlib.sha256(raw).hexdigest())


def shard_manifest_sha256(shard_dir: str) -> str:
    """SHA-256 of an index directory's ``manifest.json``."""
    return storage.sha256_file(os.path.join(shard_dir, storage.MANIFEST), storage.MANIFEST)


def open_shard(m: ShardedManifest, i: int, *, verify: bool = False, populate: bool = False):
    """Shard ``i`` of ``m`` as an :class:`engine.Index` (memory-mapped), after checking that
    it is the index the manifest names: its manifest's SHA-256, its row count, width,
    dtype, id kind, graph and codes; ``verify`` also checks every file's SHA-256;
    ``populate`` maps every page at once (see :meth:`engine.Index.load`).

    Raises :class:`ShardCheckError` naming the shard and what failed.
    """
    from ..index import Index

    e, where = m.shards[i], f"shard {i} ({m.shard_dir(i)})"
    try:
        sha = shard_manifest_sha256(m.shard_dir(i))
        if sha != e.manifest_sha256:
            raise ShardCheckError(f"{where}: its manifest.json has SHA-256 {sha[:16]}..., the sharded manifest "
                                  f"names {e.manifest_sha256[:16]}... (the shard was replaced or changed)")
        index = Index.load(m.shard_dir(i), verify=verify, populate=populate)
    except ShardCheckError:
        raise
    except (OSError, ValueError) as err:
        raise ShardCheckError(f"{where}: {err}") from err
    got = {"count": len(index), "dim": index.dim, "dtype": storage.TORCH_TO_NAME[index.dtype],
           "ids": index.ids_kind, "graph": index.graph is not None, "codes": index.codes is not None}
    want = {"count": e.count, "dim": m.dim, "dtype": m.dtype, "ids": m.ids, "graph": e.graph, "codes": e.codes}
    bad = [f"{k} {got[k]!r} (expected {want[k]!r})" for k in want if got[k] != want[k]]
    if bad:
        raise ShardCheckError(f"{where} does not match the sharded manifest: " + ", ".join(bad))
    return index
