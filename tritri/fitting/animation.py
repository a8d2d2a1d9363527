"""The animation of a fit being built (``tritri fit --animation out.gif``): Pillow only, torch-free.

Frames, in order: the start's background alone; the greedy start after each of its batches
(8, 8, 16, 32, ... triangles: :func:`tritri.fitting.starts.greedy_start`); the refinement every
``k`` steps; the fit as written (the best step's triangles), held longer. The size is bounded:

- at most ``max_frames`` frames (default :data:`MAX_FRAMES`): ``k`` is chosen so that the
  refinement's frames fit in what the start's leave (:meth:`Animation.plan`), and a refinement
  that runs longer than planned (or a plan that was never made) drops every other frame as it
  goes;
- frames at the fit's size, scaled down to :data:`MAX_SIDE` px on the longest side;
- GIF: one palette of at most ``colors`` (default :data:`COLORS`) colors for all frames (median
  cut of the last frame and the first, no dithering: flat triangles stay flat and the frames do
  not flicker); WebP: lossy, quality :data:`WEBP_QUALITY`.

Frames are kept as 8-bit arrays while the fit runs (about 0.2 MB each at 256 px) and encoded once
at the end; the file is written atomically. Nothing here runs unless an animation was asked for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tritri.fitting.export import to_uint8
from tritri.fitting.files import atomic_path

__all__ = ["COLORS", "FORMATS", "MAX_FRAMES", "MAX_SIDE", "Animation", "check_animation_path"]

#: Default cap on the number of frames.
MAX_FRAMES = 60
#: Colors of a GIF's palette (GIF allows 256).
COLORS = 256
#: Longest side of a frame, px (frames of a larger fit are scaled down).
MAX_SIDE = 512
#: Quality of an animated WebP's frames (lossy).
WEBP_QUALITY = 80
#: File formats, by suffix.
FORMATS = {".gif": "GIF", ".webp": "WEBP"}
#: How long frames show, ms: the start's (one per batch), the refinement's, the last.
START_MS, REFINE_MS, LAST_MS = 300, 80, 2000


def check_animation_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if its suffix is a format this module writes (:data:`FORMATS`), else a
    one-line ``ValueError``."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        names = " or ".join(FORMATS)
        raise ValueError(f"{str(path)!r}: an animation is written as {names} (by its suffix)")
    if path.suffix.lower() == ".webp":
        from PIL import features

        if not features.check("webp"):
            raise ValueError(f"{str(path)!r}: this Pillow cannot write WebP; use .gif")
    return path


class Animation:
    """Collects frames of a fit and writes them as an animated GIF or WebP.

    Args:
        path: the file to write (``.gif`` or ``.webp``, :func:`check_animation_path`).
        max_frames: the most frames the file holds (>= 2).
        colors: the GIF palette's size (2-256).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_frames: int = MAX_FRAMES, colors: int = COLORS
    ) -> None:
        self.path = check_animation_path(path)
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        if not 2 <= colors <= 256:
            raise ValueError(f"colors must be in [2, 256], got {colors}")
        self.max_frames, self.colors = int(max_frames), int(colors)
        self.frames: list[np.ndarray] = []  # (h, w, 3) uint8
        self.durations: list[int] = []
        self._refine: list[tuple[np.ndarray, int]] = []  # (frame, step) of the refinement
        self.every = 1

    # --- collecting ---------------------------------------------------------------------------

    def _frame(self, image: Any) -> np.ndarray:
        """``(3, H, W)`` (or ``(1, 3, H, W)``) in [0, 1] -> an (h, w, 3) uint8 frame."""
        arr = image[0] if getattr(image, "ndim", 3) == 4 else image
        frame = to_uint8(arr)
        h, w, _ = frame.shape
        if max(h, w) > MAX_SIDE:
            scale = MAX_SIDE / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.LANCZOS))
        return frame

    def add_start(self, image: Any) -> None:
        """A frame of the start (the background alone, or the start after a greedy batch)."""
        self.frames.append(self._frame(image))
        self.durations.append(START_MS)

    def plan(self, steps: int) -> int:
        """Choose ``every`` (a frame every so many refinement steps) so that ``steps`` steps
        fill what the start's frames and the last one leave; returns it."""
        room = max(1, self.max_frames - len(self.frames) - 1)
        self.every = max(1, math.ceil(max(1, steps) / room))
        return self.every

    def on_step(self, step: int, image: Any) -> None:
        """The fit loops' ``on_step``: keeps the render of every ``every``-th step (converted to
        8 bits at once). When the refinement's frames would pass the cap, every other one is
        dropped and ``every`` doubles."""
        if step % self.every:
            return
        self._refine.append((self._frame(image), step))
        room = max(1, self.max_frames - len(self.frames) - 1)
        if len(self._refine) > room:
            self.every *= 2
            self._refine = [(f, s) for f, s in self._refine if s % self.every == 0]

    def finish(self, image: Any) -> None:
        """The last frame: the fit as written."""
        self.frames.extend(f for f, _ in self._refine)
        self.durations.extend(REFINE_MS for _ in self._refine)
        self._refine = []
        room = self.max_frames - 1
        if len(self.frames) > room:  # more start frames than the cap leaves: keep the last ones
            self.frames, self.durations = self.frames[-room:], self.durations[-room:]
        self.frames.append(self._frame(image))
        self.durations.append(LAST_MS)

    # --- writing ------------------------------------------------------------------------------

    def _palette(self) -> Image.Image:
        """One palette for every frame: median cut of the last frame beside the first."""
        first, last = self.frames[0], self.frames[-1]
        if first.shape != last.shape:
            first = np.asarray(Image.fromarray(first).resize(last.shape[1::-1]))
        both = Image.fromarray(np.concatenate([last, first], axis=0))
        return both.quantize(colors=self.colors, method=Image.Quantize.MEDIANCUT,
                             dither=Image.Dither.NONE)  # fmt: skip

    def write(self) -> Path:
        """Encode the frames (at least one: call :meth:`finish` first) to :attr:`path`,
        atomically; returns it."""
        if not self.frames:
            raise ValueError("no frames to write")
        size = self.frames[-1].shape[1::-1]
        images = [
            Image.fromarray(f) if f.shape[1::-1] == size else Image.fromarray(f).resize(size)
            for f in self.frames
        ]
        fmt = FORMATS[self.path.suffix.lower()]
        options: dict[str, Any] = {"save_all": True, "duration": list(self.durations), "loop": 0}
        if fmt == "GIF":
            palette = self._palette()
            images = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
            options["optimize"] = False
        else:
            options.update(quality=WEBP_QUALITY, method=4)
        with atomic_path(self.path) as tmp:
            images[0].save(tmp, format=fmt, append_images=images[1:], **options)
        return self.path
