"""``tritri plot RUN.jsonl -o loss.png``: draw the curves a :class:`LossMonitor` recorded.

One panel per group of keys that has data: the total (with the steps where the monitor warned
marked in red), ``loss/*`` (log scale when all positive), ``log/*``, ``weight/*``,
``grad_norm/*`` (log scale when all positive), then any other ``<prefix>/*`` group (e.g.
``uncertainty/*``, ``stage/*``), and one panel for the remaining numbers (``regularization``,
``image_std``, ...). Needs matplotlib (``pip install 'tritri[plot]'``); it draws with the Agg
backend, so no display is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "plot_run", "read_jsonl", "run"]

#: Panels for these key prefixes come first, in this order; ``True``: log scale when all > 0.
_GROUPS: dict[str, tuple[str, bool]] = {
    "loss": ("loss", True),
    "log": ("log-loss", False),
    "weight": ("weight", False),
    "grad_norm": ("gradient norm", True),
}
_SKIP = {"step", "total", "warnings"}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; blank lines are skipped, a bad line is a ``ValueError``
    naming its line number (a truncated last line, as a killed run leaves, is skipped)."""
    path = Path(path)
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines):
                break  # a run killed mid-write
            raise ValueError(f"{path}:{i}: not a JSON line ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if math.isfinite(value):
                step = record.get("step", i)
                xs.append(float(step if isinstance(step, int | float) else i))
                ys.append(float(value))
    return xs, ys


def _panels(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[str], bool]]:
    """(title, keys, log scale) for every group of numeric keys in ``records``."""
    grouped: dict[str, list[str]] = {}
    bare: list[str] = []
    has_total = False
    for record in records:
        for key, value in record.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if key == "total":
                has_total = True
            elif key in _SKIP:
                continue
            elif "/" in key:
                keys = grouped.setdefault(key.split("/", 1)[0], [])
                if key not in keys:
                    keys.append(key)
            elif key not in bare:
                bare.append(key)
    panels = [("total", ["total"], False)] if has_total else []
    for prefix in [*(p for p in _GROUPS if p in grouped), *sorted(set(grouped) - set(_GROUPS))]:
        title, log_scale = _GROUPS.get(prefix, (prefix, False))
        panels.append((title, grouped[prefix], log_scale))
    if bare:
        panels.append(("other", bare, False))
    return panels


def plot_run(records: Sequence[dict[str, Any]], out: str | Path, title: str | None = None) -> Path:
    """Draw ``records`` (as :func:`read_jsonl` returns them) into the image file ``out``."""
    try:
        import matplotlib
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "tritri plot needs matplotlib: pip install 'tritri[plot]' (or pip install matplotlib)"
        ) from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = _panels(records)
    if not panels:
        raise ValueError("no plottable values (expected keys such as total, loss/<name>)")

    cols = 2 if len(panels) > 1 else 1
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.2 * rows), squeeze=False)
    warned = [float(r.get("step", i)) for i, r in enumerate(records) if r.get("warnings")]
    for ax, (panel_title, keys, log_scale) in zip(axes.flat, panels, strict=False):
        positive = True
        for key in keys:
            xs, ys = _series(records, key)
            if not xs:
                continue
            positive = positive and min(ys) > 0
            label = key.split("/", 1)[1] if "/" in key else key
            ax.plot(xs, ys, label=label, linewidth=1.2)
        if log_scale and positive:
            ax.set_yscale("log")
        if panel_title == "total":
            for x in warned:
                ax.axvline(x, color="tab:red", alpha=0.35, linewidth=0.8)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if len(keys) > 1 or panel_title == "other":
            ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="the metrics .jsonl file a LossMonitor wrote")
    parser.add_argument(
        "-o", "--output", default=None, help="image to write (default: RUN with .png)"
    )
    parser.add_argument("--title", default=None, help="figure title (default: the file name)")


def run(args: argparse.Namespace) -> int:
    path = Path(args.run)
    out = Path(args.output) if args.output else path.with_suffix(".png")
    try:
        records = read_jsonl(path)
        if not records:
            raise ValueError(f"{path} has no records")
        plot_run(records, out, title=args.title if args.title is not None else path.name)
    except (OSError, ValueError, ModuleNotFoundError) as err:
        print(f"tritri plot: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
