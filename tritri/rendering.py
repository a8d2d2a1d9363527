"""Public rendering API: :func:`render` and :class:`TriangleRenderer` (``docs/SPEC.md`` section 2).

Validation, backend choice and the glue around the rasterizers. The per-triangle setup is
:func:`tritri.geometry.prepare_triangles` (differentiable, shared by every backend); the backends
rasterize its planes: :mod:`tritri.kernels.raster` (Triton, as ``torch.library`` ops) and
:mod:`tritri.cpu` (compiled numba, tiled PyTorch).
"""

from __future__ import annotations

import numbers
import os
from typing import Any

import torch
from torch import Tensor, nn

from tritri.geometry import prepare_triangles, zero_grad_link

_BACKENDS = ("auto", "triton", "numba", "torch")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_float(name: str, t: Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def _validate(verts, colors, opacity, height, width, sigma, background, backend):
    """Check arguments (shapes, dtypes, devices only: nothing here reads tensor values)."""
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not isinstance(sigma, numbers.Real) or isinstance(sigma, bool) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0 (pixels), got {sigma!r}")
    if not (float(sigma) < float("inf")):
        raise ValueError(f"sigma must be finite, got {sigma!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if not isinstance(verts, Tensor):
        raise TypeError(f"verts must be a tensor, got {type(verts).__name__}")
    if not isinstance(colors, Tensor):
        raise TypeError(f"colors must be a tensor, got {type(colors).__name__}")
    _check_float("verts", verts)
    _check_float("colors", colors)
    if verts.dim() not in (3, 4) or tuple(verts.shape[-2:]) != (3, 2):
        raise ValueError(f"verts must have shape (B, N, 3, 2) or (N, 3, 2), got {_shape(verts)}")
    batched = verts.dim() == 4
    lead = tuple(verts.shape[:-2])  # (B, N) or (N,)
    lead_txt = "(B, N)" if batched else "(N,)"
    flat = colors.dim() == len(lead) + 1
    per_vertex = colors.dim() == len(lead) + 2 and colors.shape[-2] == 3
    if not (flat or per_vertex) or tuple(colors.shape[: len(lead)]) != lead:
        shapes = "(B, N, C) or (B, N, 3, C)" if batched else "(N, C) or (N, 3, C)"
        raise ValueError(
            f"colors must have shape {shapes} matching verts {_shape(verts)}, got {_shape(colors)}"
        )
    C = colors.shape[-1]
    if C < 1:
        raise ValueError(f"colors needs at least one channel, got {_shape(colors)}")
    if opacity is not None:
        if not isinstance(opacity, Tensor):
            raise TypeError(f"opacity must be a tensor or None, got {type(opacity).__name__}")
        _check_float("opacity", opacity)
        if tuple(opacity.shape) != lead:
            raise ValueError(
                f"opacity must have shape {lead_txt} = {lead} matching verts {_shape(verts)}, "
                f"got {_shape(opacity)}"
            )
    if isinstance(background, Tensor):
        _check_float("background", background)
        ok = (
            background.dim() == 0
            or (background.dim() == 1 and background.shape[0] == C)
            or (batched and background.dim() == 2 and tuple(background.shape) == (lead[0], C))
        )
        if not ok:
            shapes = f"(), ({C},)" + (f" or ({lead[0]}, {C})" if batched else "")
            raise ValueError(
                f"background must be None, a float or a tensor of shape {shapes} "
                f"(C = {C} from colors {_shape(colors)}), got {_shape(background)}"
            )
    elif background is not None and (
        not isinstance(background, numbers.Real) or isinstance(background, bool)
    ):
        raise TypeError(f"background must be None, a float or a tensor, got {background!r}")
    for name, t in (("colors", colors), ("opacity", opacity), ("background", background)):
        if isinstance(t, Tensor) and t.device != verts.device:
            raise ValueError(
                f"{name} is on {t.device} but verts is on {verts.device}: all tensors must share "
                "one device"
            )
    return batched, per_vertex


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "torch":
        return "torch"
    if backend == "numba":
        if device.type != "cpu":
            raise RuntimeError(
                f"backend='numba' runs on the CPU; the tensors are on {device} (use "
                "backend='triton' or 'auto' for CUDA tensors)"
            )
        from tritri.cpu import numba_available

        if not numba_available():
            raise RuntimeError("backend='numba' needs the numba package: pip install numba")
        return "numba"
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError as err:
            if backend == "triton":
                raise RuntimeError("backend='triton' needs the triton package") from err
            return "torch"
        return "triton"
    if backend == "auto":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return "triton"
        from tritri.cpu import numba_available

        return "numba" if device.type == "cpu" and numba_available() else "torch"
    from tritri.kernels import raster

    if device.type != "cpu" or not raster.interpreter_active():
        raise RuntimeError(
            f"backend='triton' on a {device.type} tensor needs the Triton interpreter: set "
            "TRITON_INTERPRET=1 in the environment before importing tritri (or use "
            "backend='torch', or CUDA tensors)"
        )
    return "triton"


def render(
    verts: Tensor,
    colors: Tensor,
    opacity: Tensor | None = None,
    *,
    height: int,
    width: int,
    sigma: float = 0.5,
    background: Tensor | float | None = None,
    return_alpha: bool = False,
    backend: str = "auto",
    deterministic: bool | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Rasterize 2D triangles with soft edges, differentiably (``docs/SPEC.md`` section 2).

    Args:
        verts: (B, N, 3, 2) or (N, 3, 2) vertex positions, normalized: x in [0, 1] left to right,
            y in [0, 1] top to bottom (values outside are legal; off-screen parts are clipped).
        colors: (B, N, C) flat or (B, N, 3, C) per-vertex colors (unbatched: without B), any C >= 1.
        opacity: (B, N) in [0, 1], or None for all ones.
        height, width: output size in pixels.
        sigma: edge softness in pixels: coverage = sigmoid(signed distance / sigma).
        background: None (0), a float, (C,) or (B, C).
        return_alpha: also return alpha = 1 - final transmittance, (B, 1, H, W).
        backend: "triton" (tiled Triton kernels; CUDA, or CPU under TRITON_INTERPRET=1), "numba"
            (the same tiles and walk compiled for the CPU by numba; compiled on first use and
            cached on disk), "torch" (tiled PyTorch) or "auto" (triton for CUDA tensors and under
            the interpreter, numba for other CPU tensors, torch where numba cannot be imported).
        deterministic: sum gradients in a fixed order (Triton backend: per-pair partials instead
            of atomics; costs one host sync to size the pair lists). None follows
            ``torch.are_deterministic_algorithms_enabled()``. The torch and numba backends are
            always deterministic on the CPU.

    Returns:
        (B, C, H, W) image in the dtype of ``colors`` (math in float32), plus (B, 1, H, W) alpha if
        ``return_alpha``; unbatched input gives unbatched output.

    Every floating input gets a gradient. A triangle with a non-finite value or a doubled area
    below 1e-6 px² contributes nothing and gets zero gradient. N = 0 or B = 0 renders the
    background (with zero gradients for the triangles) on every backend alike.
    """
    batched, per_vertex = _validate(
        verts, colors, opacity, height, width, sigma, background, backend
    )
    height, width, sigma = int(height), int(width), float(sigma)
    if not batched:
        verts, colors = verts.unsqueeze(0), colors.unsqueeze(0)
        opacity = None if opacity is None else opacity.unsqueeze(0)
    B, N = verts.shape[:2]
    C = colors.shape[-1]
    device = verts.device
    out_dtype = colors.dtype
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()

    if isinstance(background, Tensor):
        bg = background.float().expand(B, C)
    else:
        bg = torch.full((B, C), float(background or 0.0), device=device)

    if N == 0 or B == 0:
        image = bg[:, :, None, None].expand(B, C, height, width)
        T = torch.ones(B, height, width, device=device)
        # no rasterizer connects the inputs: link them, so they get zero gradients as when their
        # triangles draw nothing (docs/SPEC.md section 2.4)
        image, T = zero_grad_link((image, T), (verts, colors, opacity))
    else:
        if opacity is None:
            opacity = torch.ones(B, N, device=device)
        prep = prepare_triangles(verts.float(), colors.float(), opacity.float(), height, width,
                                 sigma)  # fmt: skip
        resolved = _resolve_backend(backend, device)
        if resolved == "triton":
            from tritri.kernels.raster import rasterize_triton

            color, T = rasterize_triton(prep, height, width, bool(deterministic))
        elif resolved == "numba":
            from tritri.cpu import rasterize_numba

            color, T = rasterize_numba(prep, height, width)
        else:
            from tritri.cpu import rasterize_torch

            color, T = rasterize_torch(prep, height, width)
        image = color + T[:, None] * bg[:, :, None, None]

    image = image.to(out_dtype)
    alpha = (1.0 - T)[:, None].to(out_dtype)
    if not batched:
        image, alpha = image[0], alpha[0]
    return (image, alpha) if return_alpha else image


class TriangleRenderer(nn.Module):
    """:func:`render` as a module: ``renderer(verts, colors, opacity=None)``.

    A tensor ``background`` is kept as a buffer (moves with ``.to()``), or as a parameter if it is
    an ``nn.Parameter`` (a learnable background).
    """

    def __init__(
        self,
        height: int,
        width: int,
        sigma: float = 0.5,
        background: Tensor | float | None = None,
        backend: str = "auto",
        return_alpha: bool = False,
        deterministic: bool | None = None,
    ) -> None:
        super().__init__()
        self.height, self.width, self.sigma = height, width, sigma
        self.backend, self.return_alpha, self.deterministic = backend, return_alpha, deterministic
        if isinstance(background, nn.Parameter):
            self.background = background
        elif isinstance(background, Tensor):
            self.register_buffer("background", background)
        else:
            self.background = background

    def forward(
        self, verts: Tensor, colors: Tensor, opacity: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        return render(
            verts, colors, opacity, height=self.height, width=self.width, sigma=self.sigma,
            background=self.background, return_alpha=self.return_alpha, backend=self.backend,
            deterministic=self.deterministic,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"height={self.height}, width={self.width}, sigma={self.sigma}, "
            f"backend={self.backend!r}"
        )
