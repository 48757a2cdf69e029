"""Values built once per object under a lock: the caches that searches keep on an index
(entry points, corpus mean, device copies of the graph) and the cpu backend's packed
weights. Concurrent searches that miss the same entry wait for one build instead of each
building its own, and never see a half-built entry."""

from __future__ import annotations

import threading

_LOCK_ATTR = "_once_lock"


def object_lock(obj) -> threading.RLock:
    """The lock of ``obj``'s caches, made at first use (``dict.setdefault`` is atomic, so
    two threads asking at once get the same lock). Re-entrant: a build may use another
    cache of the same object."""
    lock = obj.__dict__.get(_LOCK_ATTR)
    if lock is None:
        lock = obj.__dict__.setdefault(_LOCK_ATTR, threading.RLock())
    return lock


def cached(obj, cache_attr: str, key, build, valid=None):
    """``obj.<cache_attr>[key]``, built by ``build()`` once under ``obj``'s lock.

    ``valid(value) -> bool`` (optional) rejects a stale entry, which is then rebuilt. The
    lock-free first look makes a hit cost one dict lookup."""
    cache = obj.__dict__.get(cache_attr)
    if cache is not None:
        hit = cache.get(key)
        if hit is not None and (valid is None or valid(hit)):
            return hit
    with object_lock(obj):
        cache = obj.__dict__.setdefault(cache_attr, {})
        hit = cache.get(key)
        if hit is None or (valid is not None and not valid(hit)):
            hit = build()
            cache[key] = hit
        return hit


class KeyedBuilds:
    """One lock per key being built, for module-level caches: ``with builds.lock(key):``
    serialises builds of the same key only."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict = {}

    def lock(self, key) -> "_KeyLock":
        return _KeyLock(self, key)


class _KeyLock:
    def __init__(self, owner: KeyedBuilds, key) -> None:
        self.owner, self.key = owner, key

    def __enter__(self):
        with self.owner._guard:
            entry = self.owner._locks.get(self.key)
            if entry is None:
                entry = self.owner._locks[self.key] = [threading.Lock(), 0]
            entry[1] += 1
        self.entry = entry
        entry[0].acquire()
        return self

    def __exit__(self, *exc):
        self.entry[0].release()
        with self.owner._guard:
            self.entry[1] -= 1
            if self.entry[1] == 0:
                del self.owner._locks[self.key]
        return False
