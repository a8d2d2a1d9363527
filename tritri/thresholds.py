"""The rendering rules' constants (``docs/SPEC.md`` section 2.1), defined once.

Read by the dense reference (:mod:`tritri.reference`), the per-triangle setup
(:mod:`tritri.geometry`), the tiled torch backend, the compiled CPU backend and the Triton kernels
(which wrap them as ``tl.constexpr``). These are the guards of the 3DGS / gsplat family.
"""

from __future__ import annotations

#: Pairs with alpha below this contribute nothing.
ALPHA_MIN = 1.0 / 255.0
#: Alpha is clamped to at most this value.
ALPHA_MAX = 0.99
#: A pixel stops before the first triangle that would take its transmittance below this.
T_MIN = 1e-4
#: Triangles with a doubled area (px²) below this are degenerate and contribute nothing.
AREA2_MIN = 1e-6
#: Extra room (sigma units) added to the culling margin so float rounding never culls a pair that
#: the exact test would keep; culling too little only costs time.
CULL_SLACK = 0.05

__all__ = ["ALPHA_MAX", "ALPHA_MIN", "AREA2_MIN", "CULL_SLACK", "T_MIN"]
