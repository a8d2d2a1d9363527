"""Raw ``@triton.jit`` kernels and their launchers, one module per kernel family.

Nothing is imported here: importing a kernel module imports triton, which the CPU-only torch path
never needs.
"""

FP_FUSION = True
"""``enable_fp_fusion`` of every launch of these kernels, pinned rather than left to Triton's
default (``TRITON_DEFAULT_FP_FUSION``: on up to 3.9, off from 3.10), so that a kernel compiles to
the same code on every Triton and ``tritri check`` measures what a launch runs.

On: the kernels were measured and budgeted with it (tests/test_kernel_check.py). Off costs the
raster backward 6 to 19 more SASS instructions per pair (10-15 %: its in-thread sums of products
and the suffix-color updates are mul + add pairs that fusion turns into FMAs) and the forward's
list walk nothing (same SASS either way). The forward / backward replay holds either way, and
whatever the value, as long as both raster kernels get the same one: the skip and stop rules
(:func:`tritri.kernels.raster_common.composite_step`, the planes) are explicit ``tl.fma`` and
operations with no multiply feeding an add, so fusion leaves them alone; the scan walk's culling
(``scan_block_hits``) does fuse (12 FMAs), identically in both kernels, and culls only triangles
whose every pair the per-pixel rules skip anyway, with a tolerance far above the rounding change.
"""
