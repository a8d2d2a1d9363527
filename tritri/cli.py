"""The ``tritri`` command: ``tritri fit``, ``tritri tune``, ``tritri plot``, ``tritri check``.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their subcommand is registered.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("tritri.fit", "fit an image with triangles"),
    "tune": (
        "tritri.tuning.tune",
        "benchmark kernel configs on this GPU and write its config file",
    ),
    "plot": ("tritri.losses.plot", "plot the loss curves of a metrics .jsonl file"),
    "check": (
        "tritri.check",
        "compile every Triton kernel for real NVIDIA targets (no GPU needed) and report its cost",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tritri", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # subcommand not available in this build
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
