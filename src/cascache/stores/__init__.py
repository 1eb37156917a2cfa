"""Where entries live: the `Store` protocol, its backends, and `open_store(url)`.

A new backend is one module plus one line in `OPENERS`, and it must pass the
shared contract suite (`tests/contract/test_store_contract.py`).

URLs:

- ``memory://``                  `MemoryStore` (nothing persists)
- ``sqlite:///var/lib/cascache`` `SqliteHnswStore` in that directory (everything after
  ``sqlite://`` is the path, so ``sqlite://data/cache`` is relative)
- ``/var/lib/cascache``, ``data/cache``: a bare path, same as ``sqlite://``
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cascache.stores.base import Store
from cascache.stores.memory import MemoryStore
from cascache.stores.redis import open_redis
from cascache.stores.sqlite_hnsw import SqliteHnswStore

__all__ = ["OPENERS", "MemoryStore", "SqliteHnswStore", "Store", "open_store"]

#: Builds a store from the part of the URL after ``scheme://``, the embedding
#: dimension, and backend-specific options (passed through as keywords).
StoreOpener = Callable[..., Store]


def _open_memory(location: str, dim: int, **options: Any) -> Store:
    # Vectors are compared as given; the memory store needs no dimension.
    return MemoryStore(**options)


def _open_sqlite(location: str, dim: int, **options: Any) -> Store:
    if not location:
        raise ValueError("sqlite:// needs a directory, e.g. sqlite:///var/lib/cascache")
    return SqliteHnswStore(Path(location), dim, **options)


#: URL scheme -> opener. A bare filesystem path uses the "" entry.
OPENERS: dict[str, StoreOpener] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "redis": open_redis,
    "": _open_sqlite,
}


def open_store(url: str, dim: int, **options: Any) -> Store:
    """The store that `url` names, built with `options` (e.g. max_entries=...).

    Raises ValueError for an unknown scheme, listing the known ones.
    """
    scheme, separator, location = url.partition("://")
    if not separator:
        scheme, location = "", url
    opener = OPENERS.get(scheme.lower())
    if opener is None:
        known = ", ".join(f"{name}://" for name in OPENERS if name)
        raise ValueError(f"unknown store URL {url!r}; use {known} or a directory path")
    return opener(location, dim, **options)
