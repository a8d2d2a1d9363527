"""The starts of a fit and the ``triangles.json`` I/O in numpy (no torch).

A fit's triangles travel as a dict of numpy arrays, the *values*::

    {"verts": (N, 3, 2) normalized positions, "colors": (N, 3), "opacity": (N,),
     "background": (3,)}

with colors, opacities and the background in [0, 1] and index order = draw order (triangle
``N - 1`` on top). :mod:`tritri.fitting.params` wraps these functions for
:class:`~tritri.fitting.params.TriangleParams`; the torch-free fit loop calls them directly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritri.fitting.files import atomic_path
from tritri.fitting.numeric import as_numpy

__all__ = [
    "JSON_FORMAT",
    "JSON_VERSION",
    "VALUE_KEYS",
    "MAX_JSON_BYTES",
    "check_triangle_shapes",
    "check_triangle_values",
    "delaunay_start",
    "greedy_start",
    "random_start",
    "read_triangles_json",
    "write_triangles_json",
]

#: ``format`` field of a ``triangles.json``.
JSON_FORMAT = "tritri-triangles"
JSON_VERSION = 1

#: The keys of a values dict, in the order :class:`TriangleParams` takes them.
VALUE_KEYS = ("verts", "colors", "opacity", "background")

#: Largest ``triangles.json`` read (bytes): about 2.5 million triangles at ~100 bytes each. A
#: larger file is refused before it is read (parsing JSON takes about twice its size in memory).
MAX_JSON_BYTES = 256 * 2**20

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _image(target: Any) -> np.ndarray:
    img = as_numpy(target)
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"target must be a (3, H, W) image, got {tuple(img.shape)}")
    return img


def _background(img: np.ndarray) -> np.ndarray:
    return img.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)


def check_triangle_shapes(
    verts: tuple[int, ...],
    colors: tuple[int, ...],
    opacity: tuple[int, ...],
    background: tuple[int, ...],
) -> int:
    """Check the shapes of a values dict (``(N, 3, 2)``, ``(N, 3)``, ``(N,)``, ``(3,)``); returns
    ``N``. Raises ``ValueError`` naming the first wrong one."""
    verts, colors = tuple(verts), tuple(colors)
    opacity, background = tuple(opacity), tuple(background)
    n = verts[0] if len(verts) == 3 else -1
    if len(verts) != 3 or verts[1:] != (3, 2):
        raise ValueError(f"verts must be (N, 3, 2), got {verts}")
    if colors != (n, 3):
        raise ValueError(f"colors must be ({n}, 3), got {colors}")
    if opacity != (n,):
        raise ValueError(f"opacity must be ({n},), got {opacity}")
    if background != (3,):
        raise ValueError(f"background must be (3,), got {background}")
    return int(n)


def random_start(
    target: np.ndarray, n_triangles: int, *, seed: int = 0, size: float = 0.12
) -> dict[str, np.ndarray]:
    """Random triangles: centers uniform over the image, vertices within ``size`` (normalized) of
    them, colors read from the target at the centers, opacity 0.5, background the target's mean.

    ``target`` is ``(3, H, W)`` in [0, 1]. Returns float32 values (see the module docstring).
    """
    if n_triangles < 1:
        raise ValueError(f"n_triangles must be >= 1, got {n_triangles}")
    img = _image(target)
    _, H, W = img.shape
    rng = np.random.default_rng(seed)
    centers = rng.random((n_triangles, 1, 2))
    angles = rng.random((n_triangles, 1)) * (2 * math.pi)
    angles = angles + np.array([0.0, 2.0, 4.0]) * (math.pi / 3)
    radius = size * (0.5 + rng.random((n_triangles, 3)))
    offsets = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * radius[..., None]
    verts = centers + offsets
    cx = np.clip((centers[:, 0, 0] * W).astype(np.int64), 0, W - 1)
    cy = np.clip((centers[:, 0, 1] * H).astype(np.int64), 0, H - 1)
    return {
        "verts": verts.astype(np.float32),
        "colors": np.ascontiguousarray(img[:, cy, cx].T),
        "opacity": np.full(n_triangles, 0.5, dtype=np.float32),
        "background": _background(img),
    }


def delaunay_start(
    target: np.ndarray,
    n_triangles: int,
    *,
    seed: int = 0,
    opacity: float = 0.95,
    grow_px: float = 0.5,
) -> dict[str, np.ndarray]:
    """Start from the Delaunay mosaic (:func:`tritri.fitting.mosaic.delaunay_mosaic`) of ``target``.

    Each triangle gets its mosaic color and ``opacity``; its edges are pushed outwards by
    ``grow_px`` pixels (at most half its inradius) so that neighbours overlap a little and the soft
    edges do not let the background show through the seams. Larger triangles are drawn first (at
    the bottom). If degenerate sampling gave fewer triangles than asked for, random ones
    (:func:`random_start` with ``seed + 1``, size 0.02, opacity 0.05) fill up on top.

    ``target`` is ``(3, H, W)`` in [0, 1]. Returns float32 values (see the module docstring).
    """
    from tritri.fitting.mosaic import delaunay_mosaic

    img = _image(target)
    _, H, W = img.shape
    mosaic = delaunay_mosaic(img.transpose(1, 2, 0), n_triangles, seed=seed)
    v = np.asarray(mosaic.verts, dtype=np.float64)  # (M, 3, 2) pixels
    colors = np.asarray(mosaic.colors, dtype=np.float64)
    # Grow each triangle about its incenter: moving every edge out by d scales by (r + d) / r.
    a = np.linalg.norm(v[:, 1] - v[:, 2], axis=-1)
    b = np.linalg.norm(v[:, 2] - v[:, 0], axis=-1)
    c = np.linalg.norm(v[:, 0] - v[:, 1], axis=-1)
    perim = np.maximum(a + b + c, 1e-9)
    incenter = (a[:, None] * v[:, 0] + b[:, None] * v[:, 1] + c[:, None] * v[:, 2]) / perim[:, None]
    d0, d1 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    area = 0.5 * np.abs(d0[:, 0] * d1[:, 1] - d0[:, 1] * d1[:, 0])
    inradius = np.maximum(2 * area / perim, 1e-9)
    grow = np.minimum(float(grow_px), 0.5 * inradius)
    v = incenter[:, None] + (v - incenter[:, None]) * ((inradius + grow) / inradius)[:, None, None]
    order = np.argsort(-area, kind="stable")  # largest first; ties keep their order
    v, colors = v[order], colors[order]
    verts = (v / np.array([W, H], dtype=np.float64)).astype(np.float32)
    colors = colors.astype(np.float32)
    n = verts.shape[0]
    alpha = np.full(n, float(opacity), dtype=np.float32)
    if n < n_triangles:
        extra = random_start(img, n_triangles - n, seed=seed + 1, size=0.02)
        verts = np.concatenate([verts, extra["verts"]])
        colors = np.concatenate([colors, extra["colors"]])
        alpha = np.concatenate([alpha, np.full(n_triangles - n, 0.05, dtype=np.float32)])
    elif n > n_triangles:
        verts, colors, alpha = verts[:n_triangles], colors[:n_triangles], alpha[:n_triangles]
    return {"verts": verts, "colors": colors, "opacity": alpha, "background": _background(img)}


def greedy_start(
    target: np.ndarray,
    n_triangles: int,
    *,
    seed: int = 0,
    search: tuple[int, int] | None = None,
    sigma: float = 0.5,
    opacity: float | None = None,
    background: np.ndarray | None = None,
    on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
) -> dict[str, np.ndarray]:
    """Start from triangles placed one after the other, each where it cuts the squared error most
    (the hill climbing of geometrize / primitive:
    :func:`tritri.fitting.schedule.relocation_placement` with ``search`` = (candidates,
    mutations), default :func:`tritri.fitting.schedule.greedy_search`), on a background of the
    target's mean color.

    They are placed in batches of doubling size (8, 8, 16, 32, ...): each batch's candidates sit at
    pixels drawn in proportion to the error of the render (edge softness ``sigma`` px, as the
    fit's) of the batches before, and its triangles are
    about ``0.5 / sqrt(n)`` of the longest side, ``n`` the count so far, so that the first ones
    are large and later ones fill in detail; the later ones are drawn on top. Opacities come from
    {0.25, 0.5, 0.75, 0.95}, colors are the best for their coverage (hard-edged). Needs numba;
    without it this is :func:`delaunay_start`.

    ``opacity`` fixes every triangle's opacity (None: chosen per triangle), ``background``
    ``(3,)`` the background color (None: the target's mean); ``on_batch`` is called with the
    values placed so far after each batch (for an animation of the start).

    Against the Delaunay mosaic (pruned from twice the count) it starts the CPU fit 2-5 dB higher
    and ends it 0.1-0.4 dB higher in fewer steps (measured on four 256-px photos, N = 64-1024).

    ``target`` is ``(3, H, W)`` in [0, 1]. Returns float32 values (see the module docstring).
    """
    from tritri.cpu import numba_available
    from tritri.fitting.cpu_fit import render_cpu
    from tritri.fitting.schedule import greedy_search, relocation_placement

    if n_triangles < 1:
        raise ValueError(f"n_triangles must be >= 1, got {n_triangles}")
    img = _image(target)
    if not numba_available():
        return delaunay_start(img, n_triangles, seed=seed)
    search = greedy_search(n_triangles) if search is None else tuple(search)
    rng = np.random.default_rng(seed)
    if background is None:
        background = _background(img)
    background = np.asarray(background, np.float32).reshape(3)
    _, H, W = img.shape
    image = np.broadcast_to(background[:, None, None], img.shape)
    values = {"verts": np.empty((0, 3, 2), np.float32), "colors": np.empty((0, 3), np.float32),
              "opacity": np.empty(0, np.float32), "background": background}  # fmt: skip
    while (done := len(values["opacity"])) < n_triangles:
        k = min(max(8, done), n_triangles - done)
        new = relocation_placement(image, img, k, done + k, rng, search=search, opacity=opacity)
        for key, part in zip(("verts", "colors", "opacity"), new, strict=True):
            values[key] = np.concatenate([values[key], part])
        if done + k < n_triangles:
            image = render_cpu(values, H, W, sigma)
        if on_batch is not None:
            on_batch(values)
    return values


def write_triangles_json(
    values: Mapping[str, Any], path: str | os.PathLike[str], *, width: int, height: int,
    sigma: float, extra: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write the triangles ``values`` (see the module docstring) to ``path``.

    Layout: ``{"format": "tritri-triangles", "version": 1, "width", "height", "sigma",
    "n_triangles", "background": [r, g, b], "verts": [[[x, y] x 3] x N], "colors": [[r, g, b] x N],
    "opacity": [N floats], ...extra}``; numbers rounded to 6 decimals, positions normalized ([0, 1]
    spans the image; multiply by width / height for pixels), colors and opacities in [0, 1], index
    order = draw order. :func:`read_triangles_json` reads it back. Written atomically (a
    temporary file renamed into place); values :func:`read_triangles_json` would refuse (NaN,
    infinity, ...) are a ``ValueError`` and nothing is written; non-finite numbers in ``extra``
    are written as ``null``.
    """
    vals = {k: as_numpy(values[k], np.float64) for k in VALUE_KEYS}
    n = check_triangle_shapes(*(vals[k].shape for k in VALUE_KEYS))
    check_triangle_values(vals)
    data: dict[str, Any] = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "width": int(width),
        "height": int(height),
        "sigma": float(sigma),
        "n_triangles": n,
        "background": [round(float(x), 6) for x in vals["background"]],
        "verts": np.round(vals["verts"], 6).tolist(),
        "colors": np.round(vals["colors"], 6).tolist(),
        "opacity": np.round(vals["opacity"], 6).tolist(),
    }
    if extra:
        data.update({k: _finite_or_none(v) for k, v in extra.items()})
    text = json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _numbers(value: Any) -> np.ndarray:
    """A JSON array of numbers as float64 (TypeError for anything but numbers and booleans)."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"expected numbers, got {arr.dtype} values")
    return arr.astype(np.float64)


def check_triangle_values(values: Mapping[str, Any]) -> None:
    """Check the numbers of a values dict (module docstring): every one finite and within float32,
    colors, opacities and the background in [0, 1] (positions may be anywhere). Raises
    ``ValueError`` naming the first bad one by field and index, e.g.
    ``colors[3][1] = nan is not a finite number``."""
    for key in VALUE_KEYS:
        arr = np.asarray(as_numpy(values[key], np.float64))
        bad = ~np.isfinite(arr) | (np.abs(arr) > _FLOAT32_MAX)
        what = "is not a finite number"
        if not bad.any() and key != "verts":
            bad = (arr < 0) | (arr > 1)
            what = "is outside [0, 1]"
        if bad.any():
            index = np.unravel_index(int(np.argmax(bad)), arr.shape)
            where = key + "".join(f"[{int(i)}]" for i in index)
            raise ValueError(f"{where} = {float(arr[index])!r} {what}")


def read_triangles_json(
    path: str | os.PathLike[str],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a ``triangles.json`` written by :func:`write_triangles_json`.

    Returns the values (float32 arrays, see the module docstring) and the file's other fields
    (format, version, width, height, sigma, ...). Raises ``ValueError`` with the reason, in one
    line naming the file (and the field, for a bad value), when the file is not such a file: not
    JSON, over :data:`MAX_JSON_BYTES` (refused unread), of another format or version, of wrong
    shapes, or holding a value :func:`check_triangle_values` refuses (NaN, infinity, a color or
    opacity outside [0, 1]).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:  # refused unread: parsing would take about twice that memory
            raise ValueError(
                f"{path} is {size / 2**20:.0f} MB; a triangles.json is at most "
                f"{MAX_JSON_BYTES // 2**20} MB (about 2.5 million triangles)"
            )
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
            if head[:3] == b"\xef\xbb\xbf":  # a UTF-8 byte order mark
                head = head[3:].lstrip()
            if head[:1] not in (b"{", b"["):  # not JSON: said without reading the rest
                raise ValueError(f"{path} is not JSON (it does not start with '{{')")
            f.seek(0)
            data = json.loads(f.read().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(data, dict) or data.get("format") != JSON_FORMAT:
        raise ValueError(f"{path} is not a tritri triangles.json (no 'format': '{JSON_FORMAT}')")
    if data.get("version") != JSON_VERSION:
        raise ValueError(f"{path}: unsupported version {data.get('version')!r}")
    try:
        values = {
            "verts": _numbers(data["verts"]).reshape(-1, 3, 2),
            "colors": _numbers(data["colors"]).reshape(-1, 3),
            "opacity": _numbers(data["opacity"]).reshape(-1),
            "background": _numbers(data["background"]).reshape(3),
        }
        n = check_triangle_shapes(*(values[k].shape for k in VALUE_KEYS))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed triangles ({type(err).__name__}: {err})") from err
    if n == 0:
        raise ValueError(f"{path} holds no triangles")
    try:
        check_triangle_values(values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    values = {k: v.astype(np.float32) for k, v in values.items()}
    meta = {k: v for k, v in data.items() if k not in VALUE_KEYS}
    return values, meta
