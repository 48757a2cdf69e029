"""On-disk index format v3: a directory with ``manifest.json`` and raw little-endian arrays.

``manifest.json``::

    {"format": "hypencoder-engine-index", "version": 3,
     "count": n, "dim": d,
     "dtype": "float32" | "float16" | "bfloat16" | "int8" | "float8_e4m3",
     "ids": "none" | "int" | "str",
     "graph": null | {"degree": R, "params": {...}},
     "codes": null | {"params": {...}, "residual": bool},
     "deleted": null | {"count": k},
     "files": {"vectors.bin": {"dtype": ..., "shape": [n, d], "size": bytes, "sha256": hex},
               ...}}

Files: ``vectors.bin`` (n, d); ``ids.i64.bin`` (n,) int64 for integer ids; ``ids.offsets.bin``
(n + 1,) int64 and ``ids.utf8.bin`` (bytes) for string ids; ``graph.i32.bin`` (n, R) int32;
the graph search's candidate codes (see engine/graph/codes.py) ``codes.u8.bin``,
``codes.rotation.f32.bin``, ``codes.dims.i32.bin``, ``codes.bits.i32.bin``,
``codes.levels.f32.bin`` and ``codes.mean.f32.bin``, and with ``"residual": true`` their
second level ``codes.residual.u8.bin``, ``codes.residual.rotation.f32.bin``,
``codes.residual.levels.f32.bin`` and ``codes.residual.mean.f32.bin`` (a reader that
predates it uses the first level alone, which changes no result's validity); for int8 / float8_e4m3 vectors (float8
e4m3fn stored as its raw byte) ``scales.f32.bin`` (n,) float32, one scale per row (see
engine/quant.py and docs/storage.md). Version 2 added the codes; older indexes are read
as they are, and an older reader refuses a newer index by its version number.

Version 3 adds the quantised storage (above) and, for incremental updates
(:mod:`engine.update`):

- ``deleted.u8.bin`` (n,) uint8, 1 = a tombstoned row (``Index.deleted``), listed when the
  manifest's ``deleted`` is an object (``count``: the rows set); absent or null: none.
- ``files["vectors.bin"].parts``: ``[[size, sha256], ...]``, the byte ranges of the file in
  order (one per save or add; their sizes sum to ``size``). A file with parts is
  append-only: an add links it into the new version and appends its rows, so the file
  may hold bytes beyond ``size`` (an interrupted add's, or a later version's when an old
  version is read): they are ignored, only the first ``size`` bytes are the index's.
  ``verify`` checks each part's SHA-256; the entry's ``sha256`` is then the SHA-256 of the
  parts' hex digests concatenated. Without parts (versions 1 and 2) the size must match.

Updates never change a file of a committed version except by appending past its listed
size; every other file of a new version is written fresh or hard-linked unchanged, and
the version is committed like a save. Writers of one index serialise on a lock file
beside it (``.NAME.lock``, :func:`writer_lock`); a second writer is refused with
:class:`IndexBusyError`. ``HYPENCODER_CRASH_AT`` (a test seam) kills the writing process
with SIGKILL at the named point of a write (:func:`crash_point`).

Saving never costs data:

- the target must be absent, an empty directory, or an index of ours (a manifest of this
  format and no file the manifest does not list); anything else raises
  :class:`SaveTargetError`, and so does the current directory or one holding it;
- a symlink to an index stays a symlink: the directory it points to is replaced;
- everything goes to a temporary sibling directory, is fsynced, and then replaces the
  target in one step (``renameat2(RENAME_EXCHANGE)`` where the kernel has it), so a crash
  leaves either the old index or the new one;
- a writer holds a lock on its temporary directory; the next save next to it removes what
  writers that died left behind (``.NAME.tmp-*``, ``.NAME.old-*``).

Reading trusts nothing: every manifest field is checked (:func:`read_manifest`) and every
listed file must be a regular file (a FIFO or device is refused, never opened for a
blocking read). No pickle anywhere. A reader that opens an index while a save replaces it
reads one version whole: the old one or, after a retry, the new one (:func:`pinned_dir`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import uuid
from typing import Iterable, Iterator

import numpy as np
import torch

FORMAT = "hypencoder-engine-index"
# A sharded index (engine/distributed): a manifest of this format naming ordinary indexes.
SHARDED_FORMAT = "hypencoder-engine-sharded-index"
VERSION = 3  # written
READABLE_VERSIONS = (1, 2, 3)
# The candidate codes' arrays (engine/graph/codes.py): attribute -> (file, dtype).
CODE_FILES = {"codes": ("codes.u8.bin", "uint8"), "rotation": ("codes.rotation.f32.bin", "float32"),
              "dims": ("codes.dims.i32.bin", "int32"), "bits": ("codes.bits.i32.bin", "int32"),
              "levels": ("codes.levels.f32.bin", "float32"), "mean": ("codes.mean.f32.bin", "float32")}
# Their optional second level (engine.graph.codes.ResidualBits), present when the manifest's
# "codes" entry says "residual": true. Readers that predate it use the first level alone.
RESIDUAL_FILES = {"bits": ("codes.residual.u8.bin", "uint8"), "rotation": ("codes.residual.rotation.f32.bin", "float32"),
                  "levels": ("codes.residual.levels.f32.bin", "float32"),
                  "mean": ("codes.residual.mean.f32.bin", "float32")}


def code_arrays(codes) -> dict:
    """file name -> (tensor, dtype name) of the codes' arrays, second level included."""
    out = {fname: (getattr(codes, attr).contiguous(), dt) for attr, (fname, dt) in CODE_FILES.items()}
    if codes.residual is not None:
        out.update({fname: (getattr(codes.residual, attr).contiguous(), dt)
                    for attr, (fname, dt) in RESIDUAL_FILES.items()})
    return out


def codes_entry(codes) -> dict:
    """The manifest's "codes" entry of ``codes``."""
    return {"params": dict(codes.params), "residual": codes.residual is not None}
MANIFEST = "manifest.json"
DELETED_FILE = "deleted.u8.bin"
CRASH_ENV = "HYPENCODER_CRASH_AT"

# name -> (numpy storage dtype, torch dtype); bfloat16 is stored as its raw 16 bits.
DTYPES = {
    "float32": (np.dtype("<f4"), torch.float32),
    "float16": (np.dtype("<f2"), torch.float16),
    "bfloat16": (np.dtype("<u2"), torch.bfloat16),
    "int32": (np.dtype("<i4"), torch.int32),
    "int64": (np.dtype("<i8"), torch.int64),
    "uint8": (np.dtype("u1"), torch.uint8),
    "int8": (np.dtype("i1"), torch.int8),
    "float8_e4m3": (np.dtype("u1"), torch.float8_e4m3fn),  # stored as its raw byte
}
TORCH_TO_NAME = {v[1]: k for k, v in DTYPES.items()}
VECTOR_DTYPES = ("float32", "float16", "bfloat16", "int8", "float8_e4m3")
# Vector dtypes stored with one float32 scale per row (scales.f32.bin; engine/quant.py).
QUANTIZED_DTYPES = ("int8", "float8_e4m3")
SCALES_FILE = "scales.f32.bin"
ID_KINDS = ("none", "int", "str")

_CHUNK_BYTES = 64 << 20
# A manifest lists a handful of files; anything this large is not one of ours.
_MAX_MANIFEST_BYTES = 16 << 20


class IndexFormatError(ValueError):
    """The directory is not a valid index of a supported format version."""


class IndexBusyError(RuntimeError):
    """Another writer (an add, delete or compaction) holds the index's lock."""


class IndexChangedError(RuntimeError):
    """The index on disk is no longer the version this object was loaded from."""


def crash_point(name: str) -> None:
    """Test seam: SIGKILL this process when ``HYPENCODER_CRASH_AT`` names this point."""
    if os.environ.get(CRASH_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def writer_lock(target: str) -> Iterator[None]:
    """Hold the update lock of the index at ``target`` (an flock on ``.NAME.lock`` beside
    it; released when the process dies). Raises :class:`IndexBusyError` at once when
    another writer holds it, in this process or another."""
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    fd = os.open(os.path.join(parent, f".{name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise IndexBusyError(f"another writer is updating the index at {target}; retry when it is done") from None
        raise
    try:
        yield
    finally:
        os.close(fd)


def parts_digest(parts: list) -> str:
    """The ``sha256`` of a file entry with ``parts``: SHA-256 of the parts' hex digests."""
    return hashlib.sha256("".join(p[1] for p in parts).encode()).hexdigest()


class SaveTargetError(FileExistsError, ValueError):
    """A save refused its target: it exists and is neither empty nor an index (a
    ``FileExistsError`` and a ``ValueError``)."""


# ---------------------------------------------------------------------------- writing arrays
def _np_view(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16)
    elif t.dtype == torch.float8_e4m3fn:
        t = t.view(torch.uint8)
    return t.numpy()


def write_array(path: str, rows: Iterable[torch.Tensor] | torch.Tensor) -> dict:
    """Write a tensor (or row chunks of one) to ``path``; fsync; return size and SHA-256."""
    h = hashlib.sha256()
    size = 0
    chunks = [rows] if isinstance(rows, torch.Tensor) else rows
    with open(path, "wb") as f:
        for chunk in chunks:
            a = _np_view(chunk)
            if a.size == 0:  # nothing to write (an empty shard's graph or codes)
                continue
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


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- reading files
def open_regular(path: str, what: str):
    """Open ``path`` for binary reading only if it is a regular file (symlinks followed).

    Opened non-blocking and checked on the open descriptor, so a FIFO or a device put in
    place of an index file is refused instead of blocking the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise IndexFormatError(f"{what} is missing ({path})") from None
    except IsADirectoryError:
        raise IndexFormatError(f"{what} is a directory, not a file ({path})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise IndexFormatError(f"{what} is {kind}, not a regular file ({path})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str, what: str = "file") -> str:
    h = hashlib.sha256()
    with open_regular(path, what) as f:
        while True:
            b = f.read(_CHUNK_BYTES)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def pinned_dir(path: str) -> Iterator[str]:
    """A name for the directory at ``path`` as it is now, that keeps naming that directory
    if a save replaces ``path`` meanwhile (``/proc/self/fd/N`` of an open descriptor, on
    Linux; elsewhere ``path`` itself). Reading an index through it never mixes the files
    of two versions."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield path  # read_manifest reports what is wrong with path
        return
    try:
        root = f"/proc/self/fd/{fd}"
        yield root if os.path.isdir(root) else path
    finally:
        os.close(fd)


def replaced_since(path: str, root: str) -> bool:
    """Whether ``path`` names another directory than ``root`` (from :func:`pinned_dir`)
    now: a save replaced it."""
    try:
        a, b = os.stat(path), os.stat(root)
    except OSError:
        return True
    return (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino)


# ---------------------------------------------------------------------------- save targets
def _looks_like_our_index(path: str) -> bool:
    """A directory holding a manifest of this format and only the files it lists."""
    try:
        with open_regular(os.path.join(path, MANIFEST), MANIFEST) as f:
            m = json.loads(f.read(_MAX_MANIFEST_BYTES + 1).decode("utf-8"))
        files = m.get("files") if isinstance(m, dict) else None
        if m.get("format") != FORMAT or not isinstance(files, dict):
            return False
        return set(os.listdir(path)) <= {MANIFEST, *files}
    except (OSError, ValueError, RecursionError, AttributeError):
        return False


def save_target(path, check=None) -> str:
    """The directory a save of ``path`` writes: checked, with symlinks resolved.

    Raises ``TypeError`` for a path that is not a str/PathLike, ``ValueError`` for an empty
    one, and :class:`SaveTargetError` for a target that exists and is neither an empty
    directory nor an index of ours, or that is (or holds) the current directory.
    ``check(real, shown)``: what may be replaced (default :func:`check_replaceable`).
    """
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"index path must be a str or os.PathLike, got {type(path).__name__}")
    p = os.fspath(path)
    if not isinstance(p, str):
        raise TypeError(f"index path must be a str or os.PathLike, got {type(p).__name__}")
    if not p.strip():
        raise ValueError("index path is empty: name the directory to write")
    if "\0" in p:
        raise ValueError(f"index path contains a NUL character: {p!r}")
    # A symlink (even a dangling one) names the directory to write: the link stays.
    real = os.path.realpath(p)
    cwd = os.path.realpath(os.getcwd())
    if real == cwd or cwd.startswith(real.rstrip(os.sep) + os.sep) or real == os.sep:
        raise SaveTargetError(f"index path {p!r} is the current directory or contains it; "
                              "name a directory of its own")
    (check or check_replaceable)(real, shown=p)
    return real


def check_replaceable(target: str, shown: str | None = None) -> None:
    """Refuse (:class:`SaveTargetError`) to replace anything but nothing, an empty directory
    or an index of ours."""
    shown = shown if shown is not None else target
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target) or os.path.islink(target):
        raise SaveTargetError(f"{shown!r} exists and is not a directory: save refuses to replace it")
    if os.listdir(target) and not _looks_like_our_index(target):
        raise SaveTargetError(
            f"{shown!r} is a non-empty directory that is not an index of this engine (or holds "
            "files its manifest does not list): save never deletes other files; choose a new "
            "or empty directory"
        )


# ---------------------------------------------------------------------------- atomic replace
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


def _leftover_prefixes(name: str) -> tuple[str, str]:
    return f".{name}.tmp-", f".{name}.old-"


def _try_lock(path: str) -> int | None:
    """An fd holding an exclusive lock on directory ``path``, or None if someone holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def remove_leftovers(target: str) -> None:
    """Remove the temporary and replaced directories that writers of ``target`` left when
    they died (a live writer holds a lock on its own, so it is left alone)."""
    parent, name = os.path.split(target)
    if not os.path.isdir(parent):
        return
    prefixes = _leftover_prefixes(name)
    for entry in os.listdir(parent):
        if not entry.startswith(prefixes):
            continue
        path = os.path.join(parent, entry)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        fd = _try_lock(path)
        if fd is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def temp_dir(target: str) -> Iterator[str]:
    """A fresh, locked temporary sibling of ``target`` (a path from :func:`save_target`),
    removed on error; leftovers of dead writers are removed first."""
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    remove_leftovers(target)
    tmp = os.path.join(parent, f"{_leftover_prefixes(name)[0]}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(tmp)
    fd = _try_lock(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def commit_dir(tmp: str, target: str, manifest: dict, check=None) -> None:
    """Write the manifest last, fsync, then put ``tmp`` in place of ``target``.

    ``target`` is checked again right before the swap (``check``, default
    :func:`check_replaceable`): files that appeared there while the index was being
    written are never deleted.
    """
    path = os.path.join(tmp, MANIFEST)
    crash_point("before-manifest")
    write_bytes(path, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _fsync_dir(tmp)
    crash_point("before-swap")
    parent = os.path.dirname(target)
    (check or check_replaceable)(target)
    if os.path.lexists(target):
        if _exchange(tmp, target):
            _fsync_dir(parent)
            crash_point("after-swap")
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old index
            return
        # No atomic exchange: move the old one aside first; a crash in between leaves it
        # under a `.old-` name next to the target, never half-written.
        old = os.path.join(parent, f"{_leftover_prefixes(os.path.basename(target))[1]}"
                                   f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)
        _fsync_dir(parent)


# ---------------------------------------------------------------------------- manifests
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _file_entry(mpath: str, name, entry) -> None:
    """Check one ``files`` entry's name and fields (not the file itself)."""
    field = f"files[{name!r}]"
    if not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name \
            or "\\" in name or "\0" in name:
        raise IndexFormatError(f"{mpath}: invalid file name {name!r} in manifest field 'files'")
    if not isinstance(entry, dict):
        raise IndexFormatError(f"{mpath}: manifest field {field} must be an object, got {type(entry).__name__}")
    size, sha, dtype, shape = (entry.get(k) for k in ("size", "sha256", "dtype", "shape"))
    if not _is_int(size) or size < 0:
        raise IndexFormatError(f"{mpath}: manifest field {field}.size must be a non-negative integer, got {size!r}")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise IndexFormatError(f"{mpath}: manifest field {field}.sha256 must be 64 hex digits, got {sha!r}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise IndexFormatError(f"{mpath}: manifest field {field}.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or not all(_is_int(x) and x >= 0 for x in shape):
        raise IndexFormatError(
            f"{mpath}: manifest field {field}.shape must be a list of 1 to 4 non-negative integers, got {shape!r}")
    expect = math.prod(shape) * DTYPES[dtype][0].itemsize
    if expect != size:
        raise IndexFormatError(f"{mpath}: manifest field {field}: shape {shape} of {dtype} needs {expect} bytes, "
                               f"size says {size}")
    parts = entry.get("parts")
    if parts is not None:
        ok = isinstance(parts, list) and len(parts) >= 1 and all(
            isinstance(p, list) and len(p) == 2 and _is_int(p[0]) and p[0] >= 0 and isinstance(p[1], str)
            and len(p[1]) == 64 and all(c in "0123456789abcdef" for c in p[1]) for p in parts)
        if not ok or sum(p[0] for p in parts) != size:
            raise IndexFormatError(f"{mpath}: manifest field {field}.parts must be a list of [size, sha256] "
                                   f"whose sizes sum to {size}")
        if parts_digest(parts) != sha:
            raise IndexFormatError(f"{mpath}: manifest field {field}.sha256 is not the digest of its parts")


def _require(mpath: str, files: dict, name: str, dtype: str, shape: list | None, why: str) -> None:
    entry = files.get(name)
    if entry is None:
        raise IndexFormatError(f"{mpath}: manifest field 'files' does not list {name} ({why})")
    if entry["dtype"] != dtype or (shape is not None and entry["shape"] != shape):
        raise IndexFormatError(f"{mpath}: manifest field files[{name!r}] says {entry['dtype']} {entry['shape']}, "
                               f"expected {dtype} {shape if shape is not None else '[bytes]'} ({why})")


def read_manifest(path: str) -> dict:
    """Read and check ``path``'s manifest: every field's type and range, every file entry,
    and the files that ``count``, ``dim``, ``dtype``, ``ids`` and ``graph`` require.

    Raises ``FileNotFoundError`` when ``path`` is not a directory and
    :class:`IndexFormatError` (naming the field) for anything else.
    """
    if not os.path.isdir(path):
        hint = ""
        parent, name = os.path.split(os.path.abspath(path))
        if os.path.isdir(parent) and any(e.startswith(_leftover_prefixes(name)[1]) for e in os.listdir(parent)):
            hint = f" (an interrupted save left the previous index under {parent}/.{name}.old-*)"
        raise FileNotFoundError(f"no index directory at {path}{hint}")
    mpath = os.path.join(path, MANIFEST)
    if not os.path.lexists(mpath):
        raise IndexFormatError(f"{path} has no {MANIFEST}: not an index, or an unfinished write")
    with open_regular(mpath, MANIFEST) as f:
        raw = f.read(_MAX_MANIFEST_BYTES + 1)
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise IndexFormatError(f"{mpath} is larger than {_MAX_MANIFEST_BYTES} bytes: not an index manifest")
    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise IndexFormatError(f"{mpath} is not valid JSON: {type(e).__name__}: {e}") from None
    if isinstance(m, dict) and m.get("format") == SHARDED_FORMAT:
        raise IndexFormatError(f"{path} is a sharded index: search it with engine.distributed.ShardedSearcher "
                               "or `python -m engine search` (under torchrun for one process per shard)")
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise IndexFormatError(f"{mpath}: manifest field 'format' is not {FORMAT!r}: not an index of this engine")
    if m.get("version") not in READABLE_VERSIONS or not _is_int(m.get("version")):
        raise IndexFormatError(
            f"unsupported index format version {m.get('version')!r} in {mpath} (manifest field 'version'); "
            f"this engine reads versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key, ok, want in (
        ("count", lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
        ("dim", lambda x: _is_int(x) and x >= 1, "a positive integer"),
        ("dtype", lambda x: isinstance(x, str) and x in VECTOR_DTYPES, f"one of {VECTOR_DTYPES}"),
        ("ids", lambda x: isinstance(x, str) and x in ID_KINDS, f"one of {ID_KINDS}"),
        ("files", lambda x: isinstance(x, dict), "an object"),
        ("graph", lambda x: x is None or isinstance(x, dict), "null or an object"),
        ("codes", lambda x: x is None or isinstance(x, dict), "null or an object"),
        ("deleted", lambda x: x is None or (isinstance(x, dict) and _is_int(x.get("count"))
                                            and 0 <= x["count"] <= m.get("count", -1)),
         "null or an object with a count within the index's"),
    ):
        if not ok(m.get(key)):
            raise IndexFormatError(f"{mpath}: manifest field {key!r} must be {want}, got {m.get(key)!r}")
    files = m["files"]
    for name, entry in files.items():
        _file_entry(mpath, name, entry)
    n, d = m["count"], m["dim"]
    _require(mpath, files, "vectors.bin", m["dtype"], [n, d], f"count {n}, dim {d}, dtype {m['dtype']}")
    if m["dtype"] in QUANTIZED_DTYPES:
        _require(mpath, files, SCALES_FILE, "float32", [n], f"the row scales of {m['dtype']} vectors")
    elif SCALES_FILE in files:
        raise IndexFormatError(f"{mpath}: lists {SCALES_FILE} but the vectors are {m['dtype']} (no scales)")
    if m["ids"] == "int":
        _require(mpath, files, "ids.i64.bin", "int64", [n], "integer ids")
    elif m["ids"] == "str":
        _require(mpath, files, "ids.offsets.bin", "int64", [n + 1], "string ids")
        _require(mpath, files, "ids.utf8.bin", "uint8", None, "string ids")
        if len(files["ids.utf8.bin"]["shape"]) != 1:
            raise IndexFormatError(f"{mpath}: manifest field files['ids.utf8.bin'].shape must be 1-D")
    g = m["graph"] = m.get("graph")  # absent: no graph
    if g is not None:
        if not _is_int(g.get("degree")) or g["degree"] < 1:
            raise IndexFormatError(f"{mpath}: manifest field 'graph.degree' must be a positive integer, "
                                   f"got {g.get('degree')!r}")
        if not isinstance(g.get("params", {}), dict):
            raise IndexFormatError(f"{mpath}: manifest field 'graph.params' must be an object, got {g['params']!r}")
        _require(mpath, files, "graph.i32.bin", "int32", [n, g["degree"]], "the graph")
    if m.get("deleted") is not None:
        _require(mpath, files, DELETED_FILE, "uint8", [n], "the tombstones")
    m["deleted"] = m.get("deleted")  # absent (versions 1 and 2): nothing deleted
    c = m["codes"] = m.get("codes")  # absent (version 1): no codes
    if c is not None:
        if not isinstance(c.get("params", {}), dict):
            raise IndexFormatError(f"{mpath}: manifest field 'codes.params' must be an object, got {c['params']!r}")
        for name, dtype in CODE_FILES.values():
            _require(mpath, files, name, dtype, None, "the candidate codes")
    return m


def check_file(root: str, name: str, entry: dict, verify: bool) -> str:
    """Check one listed file (an entry :func:`read_manifest` accepted): a regular file of
    the listed size and, if ``verify``, checksum."""
    path = os.path.join(root, name)
    parts = entry.get("parts")
    with open_regular(path, f"index file {name}") as f:
        size = os.fstat(f.fileno()).st_size
        # An append-only file (parts) may run past its listed size: a later version's rows.
        if size != entry["size"] and not (parts is not None and size > entry["size"]):
            raise IndexFormatError(
                f"index file {name} has {size} bytes, the manifest says {entry['size']} "
                "(truncated or replaced)"
            )
        if verify and parts is not None:
            for i, (psize, psha) in enumerate(parts):
                h = hashlib.sha256()
                left = psize
                while left:
                    b = f.read(min(left, _CHUNK_BYTES))
                    if not b:
                        break
                    h.update(b)
                    left -= len(b)
                if left or h.hexdigest() != psha:
                    raise IndexFormatError(f"index file {name} fails the SHA-256 check of its part {i} "
                                           "(corrupted or tampered)")
    if verify and parts is None and sha256_file(path, f"index file {name}") != entry["sha256"]:
        raise IndexFormatError(f"index file {name} fails its SHA-256 check (corrupted or tampered)")
    return path


_MADV_POPULATE_READ = 22  # Linux 5.14+


def populate(t: torch.Tensor) -> None:
    """Map every page of a memory-mapped tensor now (reading it from disk if it is not in
    the page cache), so that searches touching random rows take no page faults: at 8.8M
    rows a query touches tens of thousands of new pages, a fault each. Where the kernel
    lacks ``MADV_POPULATE_READ`` every page is read once instead."""
    if t.numel() == 0:
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = t.data_ptr() // page * page
    length = t.data_ptr() + t.numel() * t.element_size() - start
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_POPULATE_READ) == 0:
        return
    flat = t.view(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.view(-1)
    int(flat[:: page].sum())  # one byte of every page


def map_array(path: str, entry: dict) -> torch.Tensor:
    """Memory-map a checked array file as a read-only-in-spirit CPU tensor.

    Copy-on-write mapping: pages are read on demand, so opening a large index reads nothing.
    """
    np_dtype, t_dtype = DTYPES[entry["dtype"]]
    shape = tuple(entry["shape"])
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=t_dtype)
    with open_regular(path, f"index file {os.path.basename(path)}") as f:
        a = np.memmap(f, dtype=np_dtype, mode="c", shape=shape)
    t = torch.from_numpy(a)
    return t.view(t_dtype) if t_dtype in (torch.bfloat16, torch.float8_e4m3fn) else t
