"""The ``tritri`` command: ``tritri fit``, ``tritri tune``, ``tritri plot``, ``tritri check``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``. Only the module of the subcommand being run is imported (``tritri fit``
does not pay for the tuner's or the plotter's imports); ``tritri --help`` imports none of them.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import sys

from tritri import _startup

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("tritri.fitting.cli", "fit an image with triangles"),
    "tune": (
        "tritri.tuning.tune",
        "benchmark kernel configs on this GPU and write its config file",
    ),
    "plot": ("tritri.losses.plot", "plot the loss curves of a metrics .jsonl file"),
    "check": (
        "tritri.tuning.check",
        "compile every Triton kernel for real NVIDIA targets (no GPU needed) and report its cost",
    ),
}


def _available(module_name: str) -> bool:
    """Whether a subcommand's module exists in this build (found without importing it)."""
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first non-option word), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``tritri`` parser. With ``argv``, only the subcommand it names gets its module imported
    and its options registered; without, every available subcommand does (for tests and docs)."""
    parser = argparse.ArgumentParser(prog="tritri", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv) if argv is not None else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        listed_only = argv is not None and name != chosen
        # finding a module imports its parent package (tritri.tuning: ~20 ms), so a run looks
        # up only its own subcommand
        if not listed_only and not _available(module_name):
            continue  # subcommand not available in this build
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if listed_only:
            continue  # listed in the help, options registered only when it runs
        module = importlib.import_module(module_name)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``tritri ARGV`` (default: ``sys.argv[1:]``) in this process; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if args.command != "fit":  # only tritri fit resumes the collector itself (tritri._startup)
        _startup.resume_gc()
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


def console_main() -> int:
    """The ``tritri`` command and ``python -m tritri``: :func:`main` as a process of its own, with
    the cyclic garbage collector paused during start-up and the survivors frozen at exit
    (:mod:`tritri._startup`: ~0.3 s of a 2-s CPU fit)."""
    _startup.pause_gc()
    try:
        return main()
    finally:
        _startup.resume_gc()
        # The process ends: its last collection then skips everything alive. Not with triton
        # loaded: from 3.9 on (nanobind bindings) its objects in reference cycles would outlive
        # its extension module, which prints a "leaked ..." line for each (tritri check, tune,
        # and fits on a GPU); collected, they go quietly.
        if "triton" not in sys.modules:
            gc.freeze()


if __name__ == "__main__":
    sys.exit(console_main())
