"""Lazy package exports (PEP 562): a name is imported from its module on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

__all__ = ["lazy_exports", "lazy_getattr"]


def lazy_getattr(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each of ``exports`` (name -> module)
    from its module when first asked for, and raises AttributeError for any other name."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__


def lazy_exports(
    namespace: MutableMapping[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is ``namespace``:
    each of ``exports`` (name -> module) is imported on first use; ``dir()`` lists the package's
    own names and every export. Use: ``__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)``.
    """

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return lazy_getattr(namespace["__name__"], exports), __dir__
