"""Writing a fit's files atomically: each appears complete under its name, or not at all.

A writer writes to a temporary name in the same directory (``.<stem>.<random>.tmp<suffix>``,
keeping the suffix so that Pillow still knows the format) and renames it over the target with
``os.replace``, atomic on POSIX and Windows. An error or a Ctrl-C (KeyboardInterrupt) on the way
removes the temporary file and leaves whatever was at the target before untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


def _new_temporary(path: Path) -> Path:
    """A new empty file beside ``path``, created with the mode a plain ``open`` gives (0666 less
    the umask; ``tempfile.mkstemp`` would make it 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {path}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_path(path) as tmp: write(tmp)``: ``tmp`` replaces ``path`` when the block
    ends without an exception; otherwise it is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = _new_temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
