"""Python's cyclic garbage collector in a ``tritri`` process of its own (the command, or
``python -m tritri``).

A CPU fit's start-up imports numba and loads its compiled kernels: hundreds of thousands of
Python objects, over which the collector runs its generational passes again and again while
they are being created, and once more in full when the interpreter exits. On a 2-core machine
that was about 0.3 s of a 2-s ``tritri fit`` (chelsea, N = 256: 2.10-2.34 -> 1.77-1.95 s whole
process). So :func:`tritri.cli.console_main` pauses the collector first thing; the subcommand
calls :func:`resume_gc` once its start-up is done, which freezes everything alive then (moves it
to the permanent generation: never walked again) and collects as usual from there on; at exit
everything alive is frozen again, so the interpreter's last collection skips it.

Library use (``tritri.cli.main`` called in-process, tests) never pauses: :func:`resume_gc` is then
a no-op.
"""

from __future__ import annotations

import gc

__all__ = ["pause_gc", "resume_gc"]

_paused = False


def pause_gc() -> None:
    """Pause the cyclic collector for the start-up of this process (if it runs)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """Start-up is over: freeze what it created and collect as usual from here on. A no-op unless
    :func:`pause_gc` paused the collector."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
