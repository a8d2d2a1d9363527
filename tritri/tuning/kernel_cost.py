"""Compile Triton kernels for real NVIDIA targets without a GPU, and read what they cost.

Three pieces, used by ``tritri check``:

- :func:`capture_launches` turns every ``kernel[grid](...)`` inside it into a recorded
  :class:`KernelLaunch` instead of a launch, so the project's own launchers (run on tiny CPU
  tensors) say exactly which kernels, argument types, constexprs and ``num_warps`` they launch;
- :func:`compile_launch` compiles such a launch for ``sm_<arch>`` through ``triton.compile``, the
  same path a real launch takes, so the cubin lands in Triton's cache (``TRITON_CACHE_DIR`` is
  respected) and a second run is a cache hit;
- :func:`cubin_cost` reads a cubin with the ``cuobjdump`` shipped in the triton wheel: registers,
  spills (stack + local bytes per thread), static shared memory, and the SASS of the hot loop.

Nothing here needs a GPU or a CUDA driver. The kernels must be real ``JITFunction``s: the Triton
interpreter (``TRITON_INTERPRET=1`` at import) replaces them by interpreted functions that cannot
be compiled.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritri.kernels.arch import targeting

__all__ = [
    "ARCH_LIMITS",
    "CubinCost",
    "KernelLaunch",
    "capture_launches",
    "compile_launch",
    "cubin_cost",
    "occupancy_warps",
    "tool_path",
]


@dataclass
class KernelLaunch:
    """One recorded ``kernel[grid](*args, **kwargs)``: the JITFunction, arguments and options."""

    kernel: Any
    args: tuple
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    @property
    def num_warps(self) -> int:
        return int(self.kwargs.get("num_warps", 4))


@contextmanager
def capture_launches(arch: int | None = None) -> Iterator[list[KernelLaunch]]:
    """Record Triton launches instead of running them (yields the list they are appended to).

    Launchers run as usual up to the launch: they validate, allocate and pick their config (for
    ``sm_<arch>``, see :func:`tritri.kernels.arch.targeting`); the launch itself returns None.
    Outputs a launcher reads back after the launch hold garbage. A ``warmup`` (compile without
    launching) is not recorded: it compiles for ``sm_<arch>`` (:func:`compile_launch`) and returns
    the compiled kernel, as on a GPU of that arch, so a launcher that inspects it decides as it
    would there (None without an ``arch``).
    """
    from triton.runtime.jit import JITFunction

    launches: list[KernelLaunch] = []
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):  # noqa: ARG001 - JITFunction.run's signature
        if warmup:
            return None if arch is None else compile_launch(KernelLaunch(self, args, kwargs), arch)
        launches.append(KernelLaunch(self, args, dict(kwargs)))

    JITFunction.run = record
    try:
        with targeting(arch):
            yield launches
    finally:
        JITFunction.run = original


def compile_launch(launch: KernelLaunch, arch: int):
    """Compile ``launch`` for ``sm_<arch>``; returns triton's ``CompiledKernel`` (cached).

    The argument specialization (dtypes, 16-byte alignment, integer divisibility) is the one a
    launch with the same arguments on a GPU would get, computed by triton's own binder.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    kernel = launch.kernel
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(
            f"{launch.name} is not a compilable JITFunction (is TRITON_INTERPRET=1 set?)"
        )
    target = GPUTarget("cuda", int(arch), 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, launch.kwargs, bound, specialization, options
    )
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=target, options=options.__dict__)


def tool_path(name: str) -> str:
    """Path of a CUDA binary tool shipped in the triton wheel (``cuobjdump``, ``nvdisasm``)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is neither in the triton wheel ({path}) nor on PATH")
    return found


@dataclass
class CubinCost:
    """What a cubin costs, per thread, as ``cuobjdump`` reports it."""

    registers: int
    stack_bytes: int
    local_bytes: int
    static_shared_bytes: int
    loop_instructions: int | None
    """SASS instructions of the hot loop (:func:`hot_loop`; None: no loop), NOPs not counted."""
    instruction_counts: dict[str, int] = field(default_factory=dict)
    """Opcode (without modifiers) -> count, inside that loop."""

    @property
    def spill_bytes(self) -> int:
        return self.stack_bytes + self.local_bytes


_RES = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SASS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
# BRA [.modifiers] [!][U]Pn, (a second predicate)  target
_BRANCH = re.compile(r"\bBRA(?:\.\S+)?\s+(?:!?U?P\w+\s*,\s*)?(?:`\()?(0x[0-9a-f]+)")


def _run(tool: str, *args: str) -> str:
    out = subprocess.run([tool_path(tool), *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{tool} {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def resource_usage(cubin: str | os.PathLike) -> tuple[int, int, int, int]:
    """(registers, stack, static shared, local) bytes per thread of the cubin's one kernel."""
    match = _RES.search(_run("cuobjdump", "-res-usage", str(cubin)))
    if match is None:
        raise RuntimeError(f"cuobjdump -res-usage printed no resource line for {cubin}")
    reg, stack, shared, local = (int(g) for g in match.groups())
    return reg, stack, shared, local


def sass_instructions(cubin: str | os.PathLike) -> list[tuple[int, str]]:
    """(address, instruction text) of every SASS instruction of the cubin."""
    text = _run("cuobjdump", "-sass", str(cubin))
    return [(int(m.group(1), 16), m.group(2)) for m in _SASS.finditer(text)]


def _control_flow(instructions: list[tuple[int, str]]):
    """Basic blocks (start, end) index ranges and their successor blocks."""
    index = {addr: i for i, (addr, _) in enumerate(instructions)}
    starts = {0}
    targets: dict[int, int] = {}
    for i, (_, text) in enumerate(instructions):
        match = _BRANCH.search(text)
        if match is not None and int(match.group(1), 16) in index:
            targets[i] = index[int(match.group(1), 16)]
            starts.update((targets[i], i + 1))
        elif re.search(r"\b(EXIT|RET|BRX|JMX)\b", text):
            starts.add(i + 1)
    order = sorted(s for s in starts if s < len(instructions))
    blocks = [(s, (order[k + 1] if k + 1 < len(order) else len(instructions)) - 1)
              for k, s in enumerate(order)]  # fmt: skip
    block_of = {s: k for k, (s, _) in enumerate(blocks)}
    succ: list[set[int]] = []
    for k, (_, end) in enumerate(blocks):
        text = instructions[end][1]
        out: set[int] = set()
        if end in targets:
            out.add(block_of[targets[end]])
        guarded = text.lstrip().startswith("@")
        unconditional = re.search(r"\b(BRA|EXIT|RET|BRX|JMX)\b", text) and not guarded
        if end in targets and re.search(r"\bBRA(?:\.\S+)?\s+!?U?P\w+\s*,", text):
            unconditional = False  # BRA Pn, target: taken only where Pn holds
        if not unconditional and k + 1 < len(blocks):
            out.add(k + 1)
        succ.append(out)
    return blocks, succ


def hot_loop(instructions: list[tuple[int, str]]) -> list[str] | None:
    """The instructions of the largest innermost natural loop of the kernel's control flow.

    Loops are found from the SASS control-flow graph: an edge to a block at or before its source
    (a back edge) closes a loop whose body is every block that reaches the source without passing
    the head. Innermost, because an outer loop (a raster kernel's per-32-triangle culling step
    around its walk over the hits) runs once per many trips of the inner one. The self-branch
    that ends every kernel (``BRA`` to itself after ``EXIT``) is no loop.
    """
    if not instructions:
        return None
    blocks, succ = _control_flow(instructions)
    # blocks no branch reaches (ptxas's out-of-line collective fallbacks) close no loop
    reachable, stack = {0}, [0]
    while stack:
        for t in succ[stack.pop()]:
            if t not in reachable:
                reachable.add(t)
                stack.append(t)
    succ = [out if k in reachable else set() for k, out in enumerate(succ)]
    pred: list[set[int]] = [set() for _ in blocks]
    for k, out in enumerate(succ):
        for t in out:
            pred[t].add(k)
    bodies: dict[int, set[int]] = {}
    for src, out in enumerate(succ):
        for head in out:
            if head > src or (head == src and blocks[src][0] == blocks[src][1]):
                continue
            body, stack = {head, src}, ([] if src == head else [src])
            while stack:
                for p in pred[stack.pop()]:
                    if p not in body:
                        body.add(p)
                        stack.append(p)
            bodies.setdefault(head, set()).update(body)
    innermost = [
        body for head, body in bodies.items()
        if not any(h != head and h in body for h in bodies)
    ]  # fmt: skip
    if not innermost:
        return None
    best = max(innermost, key=lambda body: sum(blocks[k][1] - blocks[k][0] + 1 for k in body))
    return [instructions[i][1] for k in sorted(best) for i in range(blocks[k][0], blocks[k][1] + 1)]


def _opcode(text: str) -> str:
    text = re.sub(r"^@!?U?P\w+\s+", "", text.strip())  # predicate guard
    return text.split()[0].split(".")[0] if text else ""


def cubin_cost(cubin: str | os.PathLike) -> CubinCost:
    """Registers, spills, static shared memory and the hot loop's SASS of ``cubin``."""
    reg, stack, shared, local = resource_usage(cubin)
    loop = hot_loop(sass_instructions(cubin))
    counts: dict[str, int] = {}
    for text in loop or []:
        op = _opcode(text)
        counts[op] = counts.get(op, 0) + 1
    return CubinCost(
        registers=reg,
        stack_bytes=stack,
        local_bytes=local,
        static_shared_bytes=shared,
        loop_instructions=None if loop is None else len(loop) - counts.get("NOP", 0),
        instruction_counts=counts,
    )


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM limits of a compute capability (CUDA programming guide, occupancy table)."""

    max_warps: int
    max_blocks: int
    registers: int
    shared_bytes: int
    reserved_shared_per_block: int = 1024
    register_unit: int = 256  # registers are allocated per warp in units of this many


ARCH_LIMITS: dict[int, ArchLimits] = {
    75: ArchLimits(32, 16, 65536, 64 * 1024),
    80: ArchLimits(64, 32, 65536, 164 * 1024),
    86: ArchLimits(48, 16, 65536, 100 * 1024),
    87: ArchLimits(48, 16, 65536, 164 * 1024),
    89: ArchLimits(48, 24, 65536, 100 * 1024),
    90: ArchLimits(64, 32, 65536, 228 * 1024),
    100: ArchLimits(64, 32, 65536, 228 * 1024),
    103: ArchLimits(64, 32, 65536, 228 * 1024),
    120: ArchLimits(48, 32, 65536, 100 * 1024),
}


def occupancy_warps(arch: int, registers: int, num_warps: int, shared_bytes: int) -> int:
    """Theoretical resident warps per SM for a kernel of ``num_warps`` warps per block."""
    limits = ARCH_LIMITS.get(arch) or ARCH_LIMITS[max(a for a in ARCH_LIMITS if a <= arch)]
    unit = limits.register_unit
    per_warp = -(-max(registers, 1) * 32 // unit) * unit
    by_regs = limits.registers // (per_warp * num_warps)
    by_warps = limits.max_warps // num_warps
    blocks = min(by_regs, by_warps, limits.max_blocks)
    if shared_bytes > 0:
        per_block = shared_bytes + limits.reserved_shared_per_block
        blocks = min(blocks, limits.shared_bytes // per_block)
    return blocks * num_warps
