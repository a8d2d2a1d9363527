"""Raw ``@triton.jit`` kernels and their launchers, one module per kernel family.

Nothing is imported here: importing a kernel module imports triton, which the CPU-only torch path
never needs.
"""
