"""``loss.png`` of a fit, drawn with Pillow (no matplotlib: it would cost a second to import).

Two panels side by side: the PSNR in dB, and the losses (``loss/<name>``, log scale), against the
step. A small, plain chart: the full per-key plots are ``tritri plot metrics.jsonl`` (matplotlib).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from tritri.fitting.files import atomic_path

__all__ = ["save_loss_plot"]

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
_PANEL_W, _PANEL_H = 420, 280
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 12, 26, 34


def _series(records: Sequence[dict[str, Any]], key: str, log: bool) -> list[tuple[float, float]]:
    out = []
    for i, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            if log and value <= 0:
                continue
            step = record.get("step", i)
            out.append((float(step), math.log10(value) if log else float(value)))
    return out


def _label(value: float, log: bool) -> str:
    return f"{10**value:.3g}" if log else f"{value:.4g}"


def _panel(
    draw: ImageDraw.ImageDraw, x0: int, title: str, lines: dict[str, list[tuple[float, float]]],
    log: bool, font: ImageFont.ImageFont,
) -> None:  # fmt: skip
    left, top = x0 + _LEFT, _TOP
    right, bottom = x0 + _PANEL_W - _RIGHT, _PANEL_H - _BOTTOM
    draw.rectangle([left, top, right, bottom], outline=(90, 90, 90))
    draw.text((left, 6), title, fill=(0, 0, 0), font=font)
    points = [p for pts in lines.values() for p in pts]
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    if xhi == xlo:
        xhi = xlo + 1.0
    if yhi == ylo:
        ylo, yhi = ylo - 0.5, yhi + 0.5

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - xlo) / (xhi - xlo) * (right - left),
            bottom - (y - ylo) / (yhi - ylo) * (bottom - top),
        )

    for k in range(5):  # horizontal grid with labels
        y = ylo + (yhi - ylo) * k / 4
        _, py = to_px(xlo, y)
        draw.line([left, py, right, py], fill=(225, 225, 225))
        draw.text((x0 + 4, py - 6), _label(y, log), fill=(60, 60, 60), font=font)
    draw.text((left, bottom + 6), f"{xlo:.0f}", fill=(60, 60, 60), font=font)
    draw.text((right - 40, bottom + 6), f"{xhi:.0f} step", fill=(60, 60, 60), font=font)
    for i, (name, pts) in enumerate(lines.items()):
        color = _COLORS[i % len(_COLORS)]
        if len(pts) > 1:
            draw.line([to_px(x, y) for x, y in pts], fill=color, width=2)
        elif pts:
            px, py = to_px(*pts[0])
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=color)
        if len(lines) > 1:
            draw.text((right - 90, top + 4 + 12 * i), name, fill=color, font=font)


def save_loss_plot(
    records: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None
) -> Path | None:
    """Draw the PSNR and loss curves of ``records`` (metrics.jsonl records) to the PNG ``path``.

    Returns the path, or None when there is nothing to draw (then nothing is written). Written
    atomically (:mod:`tritri.fitting.files`).
    """
    names = sorted({k for r in records for k in r if k.startswith("loss/")})
    losses = {n.split("/", 1)[1]: _series(records, n, log=True) for n in names}
    quality = {"psnr": _series(records, "psnr", log=False)}
    if not any(losses.values()) and not quality["psnr"]:
        return None
    font = ImageFont.load_default()
    image = Image.new("RGB", (2 * _PANEL_W, _PANEL_H + (16 if title else 0)), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, 0, "PSNR (dB)", quality, False, font)
    _panel(draw, _PANEL_W, "losses (log scale)", losses, True, font)
    if title:
        draw.text((8, _PANEL_H), title, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
