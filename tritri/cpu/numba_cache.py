"""Where numba caches tritri's compiled functions: one policy for the whole package.

Every numba function of tritri (the rasterizer's kernels in :mod:`tritri.cpu.numba_kernels`, the
CPU fit's in :mod:`tritri.fitting`) is defined with :func:`njit` from here, never with numba's
own, so that they share this policy (``docs/SPEC.md`` section 2.2):

1. numba's own choice with ``cache=True``: ``$NUMBA_CACHE_DIR`` if set, else ``__pycache__`` next
   to the source, else the user's cache directory (``~/.cache/numba``);
2. when none of those is writable (a system-wide install run by a service account, a read-only
   container), numba refuses to define the function at all ("cannot cache function ...: no
   locator available"), which would fail ``import`` and every render. tritri then caches in a
   private temporary directory, ``<tempdir>/tritri-numba-<uid>`` (later processes reuse it);
3. when that cannot be had either, the functions compile in memory in every process (about 30 s
   for the rasterizer's kernels).

A fallback is announced once per process, in one line on the ``tritri`` logger (shown on stderr
when logging is not configured), naming ``NUMBA_CACHE_DIR`` as the way to choose a location. The
fallback applies to tritri's functions only: numba's global configuration is left as it was.

Importing this module imports numba.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, TypeVar

from numba import njit as _numba_njit
from numba.core import config as _numba_config

__all__ = ["NO_DISK_CACHE", "cache_location", "njit"]

F = TypeVar("F", bound=Callable[..., Any])

#: :func:`cache_location` when the functions compile without a disk cache.
NO_DISK_CACHE = "none"

_log = logging.getLogger("tritri")

#: None: numba's own choice has worked so far; a path: the fallback directory; NO_DISK_CACHE.
_policy: str | None = None


def cache_location() -> str | None:
    """The fallback in use: None (numba's own cache location), a directory, or
    :data:`NO_DISK_CACHE`."""
    return _policy


def _no_locator(err: RuntimeError) -> bool:
    return "no locator" in str(err)


def _private_dir() -> str | None:
    """``<tempdir>/tritri-numba-<uid>``, created 0700 if missing; None unless it is a directory
    owned by this user that no one else can write: numba loads machine code from its cache, so a
    directory someone else could have prepared must not be used."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = os.path.join(tempfile.gettempdir(), f"tritri-numba-{uid if uid is not None else 'user'}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        if uid is not None and st.st_uid != uid:
            return None
        tempfile.TemporaryFile(dir=path).close()  # writable (what numba checks too)
    except OSError:
        return None
    return path


@contextmanager
def _numba_cache_dir(path: str):
    """numba's ``CACHE_DIR`` set to ``path`` while a function is defined: its cache locator reads
    the setting then and keeps the path, so nothing else in the process is affected."""
    saved = _numba_config.CACHE_DIR
    _numba_config.CACHE_DIR = path
    try:
        yield
    finally:
        _numba_config.CACHE_DIR = saved


def _define(fn: Callable[..., Any], options: dict[str, Any]) -> Any:
    global _policy
    if _policy is None:
        try:
            return _numba_njit(cache=True, **options)(fn)
        except RuntimeError as err:
            if not _no_locator(err):
                raise
        path = _private_dir()
        _policy = path if path is not None else NO_DISK_CACHE
        if path is not None:
            try:
                with _numba_cache_dir(path):
                    dispatcher = _numba_njit(cache=True, **options)(fn)
            except RuntimeError as err:
                if not _no_locator(err):
                    raise
                _policy = NO_DISK_CACHE
            else:
                _log.warning(
                    "tritri: numba cannot write its cache next to tritri or in the user cache "
                    f"directory; caching tritri's compiled code in {path} (set NUMBA_CACHE_DIR "
                    "to a writable directory to choose)"
                )
                return dispatcher
        _log.warning(
            "tritri: numba finds no writable cache directory; compiling tritri's code without a "
            "disk cache, in every process (set NUMBA_CACHE_DIR to a writable directory)"
        )
    if _policy == NO_DISK_CACHE:
        return _numba_njit(cache=False, **options)(fn)
    with _numba_cache_dir(_policy):
        return _numba_njit(cache=True, **options)(fn)


def njit(**options: Any) -> Callable[[F], F]:
    """``numba.njit(**options)`` with tritri's cache policy (module docstring): use as
    ``@njit(nogil=True, ...)``; ``cache`` is decided here and may not be passed."""
    if "cache" in options:
        raise TypeError("njit: the cache is decided by tritri.cpu.numba_cache; do not pass cache")

    def decorate(fn: F) -> F:
        return _define(fn, options)

    return decorate
