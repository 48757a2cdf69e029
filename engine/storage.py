"""On-disk index format v2: a directory with ``manifest.json`` and raw little-endian arrays.

``manifest.json``::

    {"format": "hypencoder-engine-index", "version": 2,
     "count": n, "dim": d, "dtype": "float32" | "float16" | "bfloat16",
     "ids": "none" | "int" | "str",
     "graph": null | {"degree": R, "params": {...}},
     "codes": null | {"params": {...}},
     "files": {"vectors.bin": {"dtype": ..., "shape": [n, d], "size": bytes, "sha256": hex},
               ...}}

Files: ``vectors.bin`` (n, d); ``ids.i64.bin`` (n,) int64 for integer ids; ``ids.offsets.bin``
(n + 1,) int64 and ``ids.utf8.bin`` (bytes) for string ids; ``graph.i32.bin`` (n, R) int32;
the graph search's candidate codes (see engine/graph/codes.py) ``codes.u8.bin``,
``codes.rotation.f32.bin``, ``codes.dims.i32.bin``, ``codes.bits.i32.bin``,
``codes.levels.f32.bin`` and ``codes.mean.f32.bin``. Version 2 added the codes; version 1
indexes (no codes) are read as they are, and a version-1 reader refuses a version-2 index
by its version number.

Writes are atomic: everything goes to a temporary sibling directory, is fsynced, and then
replaces the target in one step (``renameat2(RENAME_EXCHANGE)`` where the kernel has it),
so a crash leaves either the old index or the new one. No pickle anywhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import uuid
from typing import Iterable

import numpy as np
import torch

FORMAT = "hypencoder-engine-index"
VERSION = 2  # written
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"

# name -> (numpy storage dtype, torch dtype); bfloat16 is stored as its raw 16 bits.
DTYPES = {
    "float32": (np.dtype("<f4"), torch.float32),
    "float16": (np.dtype("<f2"), torch.float16),
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),
    "int32": (np.dtype("<i4"), torch.int32),
    "int64": (np.dtype("<i8"), torch.int64),
    "uint8": (np.dtype("u1"), torch.uint8),
}
TORCH_TO_NAME = {v[1]: k for k, v in DTYPES.items()}

_CHUNK_BYTES = 64 << 20


class IndexFormatError(ValueError):
    """The directory is not a valid index of a supported format version."""


def _np_view(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    return t.numpy()


def write_array(path: str, rows: Iterable[torch.Tensor] | torch.Tensor) -> dict:
    """Write a tensor (or row chunks of one) to ``path``; fsync; return size and SHA-256."""
    h = hashlib.sha256()
    size = 0
    chunks = [rows] if isinstance(rows, torch.Tensor) else rows
    with open(path, "wb") as f:
        for chunk in chunks:
            a = _np_view(chunk)
            step = max(1, _CHUNK_BYTES // max(1, a[:1].nbytes)) if a.ndim else 1
            for s in range(0, max(len(a), 1) if a.ndim else 1, step):
                b = memoryview(np.ascontiguousarray(a[s : s + step] if a.ndim else a)).cast("B")
                f.write(b)
                h.update(b)
                size += b.nbytes
        f.flush()
        os.fsync(f.fileno())
    return {"size": size, "sha256": h.hexdigest()}


def write_bytes(path: str, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK_BYTES)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_dir_for(target: str) -> str:
    """A fresh temporary sibling of ``target``; leftovers of writers that died are removed."""
    parent, name = os.path.split(os.path.abspath(target))
    prefix = f".{name}.tmp-"
    if os.path.isdir(parent):
        for entry in os.listdir(parent):
            if entry.startswith(prefix):
                pid = entry[len(prefix):].split("-")[0]
                if pid.isdigit() and not _pid_alive(int(pid)):
                    shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    tmp = os.path.join(parent, f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    return tmp


def commit_dir(tmp: str, target: str, manifest: dict) -> None:
    """Write the manifest last, fsync, then put ``tmp`` in place of ``target``."""
    path = os.path.join(tmp, MANIFEST)
    write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _fsync_dir(tmp)
    target = os.path.abspath(target)
    parent = os.path.dirname(target)
    if os.path.lexists(target):
        if not os.path.isdir(target):
            raise FileExistsError(f"{target} exists and is not a directory")
        if _exchange(tmp, target):
            _fsync_dir(parent)
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old index
            return
        # No atomic exchange: move the old one aside first; a crash in between leaves it
        # under a `.old-` name next to the target, never half-written.
        old = os.path.join(parent, f".{os.path.basename(target)}.old-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
        _fsync_dir(parent)


def read_manifest(path: str) -> dict:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no index directory at {path}")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(mpath):
        raise IndexFormatError(f"{path} has no {MANIFEST}: not an index, or an unfinished write")
    try:
        with open(mpath, "rb") as f:
            m = json.loads(f.read().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{mpath} is not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexFormatError(f"{mpath} is not a {FORMAT} manifest")
    if m.get("version") not in READABLE_VERSIONS or isinstance(m.get("version"), bool):
        raise IndexFormatError(
            f"unsupported index format version {m.get('version')!r} in {mpath}; "
            f"this engine reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key, typ in (("count", int), ("dim", int), ("dtype", str), ("ids", str), ("files", dict)):
        if not isinstance(m.get(key), typ):
            raise IndexFormatError(f"{mpath}: field {key!r} missing or not {typ.__name__}")
    if m["count"] < 0 or m["dim"] <= 0:
        raise IndexFormatError(f"{mpath}: invalid count/dim {m['count']}/{m['dim']}")
    if m["dtype"] not in ("float32", "float16", "bfloat16"):
        raise IndexFormatError(f"{mpath}: unsupported vector dtype {m['dtype']!r}")
    if m["ids"] not in ("none", "int", "str"):
        raise IndexFormatError(f"{mpath}: unknown ids kind {m['ids']!r}")
    return m


def check_file(root: str, name: str, entry: dict, verify: bool) -> str:
    """Check one listed file's presence, size and (if ``verify``) checksum."""
    if os.path.basename(name) != name or name in ("", ".", ".."):
        raise IndexFormatError(f"invalid file name {name!r} in manifest")
    path = os.path.join(root, name)
    if not os.path.exists(path):
        raise IndexFormatError(f"index file {name} is missing from {root}")
    size = os.path.getsize(path)
    if size != entry.get("size"):
        raise IndexFormatError(
            f"index file {name} has {size} bytes, the manifest says {entry.get('size')} "
            "(truncated or replaced)"
        )
    if "dtype" in entry and "shape" in entry:
        if entry["dtype"] not in DTYPES:
            raise IndexFormatError(f"index file {name}: unknown dtype {entry['dtype']!r}")
        expect = int(np.prod(entry["shape"])) * DTYPES[entry["dtype"]][0].itemsize
        if expect != size:
            raise IndexFormatError(f"index file {name}: shape {entry['shape']} needs {expect} bytes, has {size}")
    if verify and sha256_file(path) != entry.get("sha256"):
        raise IndexFormatError(f"index file {name} fails its SHA-256 check (corrupted or tampered)")
    return path


def map_array(path: str, entry: dict) -> torch.Tensor:
    """Memory-map a checked array file as a read-only-in-spirit CPU tensor.

    Copy-on-write mapping: pages are read on demand, so opening a large index reads nothing.
    """
    np_dtype, t_dtype = DTYPES[entry["dtype"]]
    shape = tuple(entry["shape"])
    if int(np.prod(shape)) == 0:
        return torch.empty(shape, dtype=t_dtype)
    a = np.memmap(path, dtype=np_dtype, mode="c", shape=shape)
    t = torch.from_numpy(a)
    return t.view(t_dtype) if t_dtype == torch.bfloat16 else t
