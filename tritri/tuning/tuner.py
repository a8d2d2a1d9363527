"""The tuner: tunable-kernel registry, config choice, output check and atomic file writes.

A launcher makes its kernel tunable with :func:`register_tunable`, giving candidate configs, a grid
of problems and ``make_runner(problem, config) -> run`` where ``run()`` launches the kernel once on
inputs built for ``problem`` (built once per runner, outside the timed call) and returns its output.
``tritri tune`` (:mod:`tritri.tuning.tune`) then, for every problem of every tunable:

1. times every candidate with :func:`choose_config` -- candidates whose runner fails to build
   (compile error) or whose run fails (out of resources, out of memory, ...) are skipped and the
   reason recorded;
2. runs the kernel's default config (:func:`tritri.tuning.default_config`, or the first candidate
   for a kernel without default) and keeps its output as the reference;
3. takes the fastest candidate whose output matches the reference (``check``, default
   :func:`outputs_close`); if none matches, the entry keeps the default config;
4. writes all entries into ``<out>/<slug>.json`` with :func:`write_config_file` (temp file in the
   same directory + ``os.replace``, so readers and concurrent writers only ever see whole files).

Nothing here needs a GPU except :func:`make_cuda_time_fn`; tests pass a fake ``time_fn``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritri.configs.lookup import (
    SCHEMA_VERSION,
    ConfigFileError,
    default_config,
    load_config_file,
    registered_kernels,
    validate_document,
)
from tritri.configs.slug import device_slug

Config = dict[str, Any]
Problem = dict[str, Any]
Runner = Callable[[], Any]
TimeFn = Callable[[Runner], float]
"""Times a zero-argument callable; returns milliseconds per call (must synchronize the device)."""
CheckFn = Callable[[Any, Any], bool]
"""``check(output, reference_output) -> bool``: does a candidate's output match the default's?"""

_ERROR_CHARS = 300


# --------------------------------------------------------------------------------------------
# registry


def outputs_close(actual: Any, expected: Any, rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    """Recursive allclose over tensors / numbers inside tuples, lists and dicts.

    Tensors must have equal shapes and dtypes; floating tensors compare with ``torch.allclose``
    (``equal_nan=True``), others exactly. Anything else compares with ``==``.
    """
    import torch

    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        if not (isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor)):
            return False
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            return False
        actual, expected = actual.detach().cpu(), expected.detach().cpu()
        if actual.is_floating_point() or actual.is_complex():
            return bool(torch.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True))
        return bool(torch.equal(actual, expected))
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(
            outputs_close(a, e, rtol, atol) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        return actual.keys() == expected.keys() and all(
            outputs_close(actual[k], expected[k], rtol, atol) for k in actual
        )
    if isinstance(actual, float) and isinstance(expected, float):
        return math.isclose(actual, expected, rel_tol=rtol, abs_tol=atol) or (
            math.isnan(actual) and math.isnan(expected)
        )
    return bool(actual == expected)


@dataclass(frozen=True)
class Tunable:
    """A kernel the tuner can benchmark (see :func:`register_tunable`)."""

    kernel: str
    candidates: tuple[Config, ...]
    problems: tuple[Problem, ...]
    make_runner: Callable[[Problem, Config], Runner]
    quick_problems: tuple[Problem, ...]
    check: CheckFn = outputs_close


_TUNABLES: dict[str, Tunable] = {}


def register_tunable(
    kernel: str,
    candidates: Sequence[Mapping[str, Any]],
    problems: Sequence[Mapping[str, Any]],
    make_runner: Callable[[Problem, Config], Runner],
    *,
    quick_problems: Sequence[Mapping[str, Any]] | None = None,
    check: CheckFn | None = None,
) -> Tunable:
    """Register ``kernel`` for ``tritri tune``; registering it again replaces it.

    Args:
        kernel: kernel name as launchers pass it to :func:`tritri.tuning.get_config`.
        candidates: configs to benchmark (each a full config dict of that kernel).
        problems: problem grid; each becomes one bucket in the config file.
        make_runner: ``make_runner(problem, config) -> run``; builds inputs for ``problem`` and
            returns ``run()``, which launches the kernel with ``config`` and returns its output
            (tensor or nested tuple / list / dict of tensors). May raise for an invalid config.
        quick_problems: the grid used by ``tritri tune --quick`` (default: the first and the last
            problem of ``problems``).
        check: ``check(output, default_output) -> bool`` (default :func:`outputs_close`).
    """
    if not candidates:
        raise ValueError(f"tunable {kernel!r} needs at least one candidate config")
    if not problems:
        raise ValueError(f"tunable {kernel!r} needs at least one problem")
    problems_t = tuple(dict(p) for p in problems)
    if quick_problems is None:
        quick = [problems_t[0]] + ([problems_t[-1]] if len(problems_t) > 1 else [])
    else:
        quick = [dict(p) for p in quick_problems]
    tunable = Tunable(
        kernel=kernel,
        candidates=tuple(dict(c) for c in candidates),
        problems=problems_t,
        make_runner=make_runner,
        quick_problems=tuple(quick),
        check=check or outputs_close,
    )
    _TUNABLES[kernel] = tunable
    return tunable


def unregister_tunable(kernel: str) -> None:
    """Remove ``kernel`` from the tunable registry (no error if absent)."""
    _TUNABLES.pop(kernel, None)


def tunables() -> dict[str, Tunable]:
    """The registered tunables, by kernel name (a copy)."""
    return dict(sorted(_TUNABLES.items()))


# --------------------------------------------------------------------------------------------
# choice


@dataclass
class CandidateResult:
    """One candidate's outcome: ``time_ms`` (median ms per call); ``error``: why it was skipped."""

    config: Config
    time_ms: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config, "time_ms": self.time_ms}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Choice:
    """Result of :func:`choose_config`: the fastest config and every candidate's outcome."""

    config: Config
    time_ms: float
    results: list[CandidateResult] = field(default_factory=list)

    @property
    def ranked(self) -> list[CandidateResult]:
        """Candidates that ran, fastest first (ties: candidate order)."""
        ok = [(r.time_ms, i, r) for i, r in enumerate(self.results) if r.error is None]
        return [r for _, _, r in sorted(ok, key=lambda t: (t[0], t[1]))]


class NoViableConfig(RuntimeError):
    """Every candidate failed; ``results`` says why for each."""

    def __init__(self, results: list[CandidateResult]) -> None:
        self.results = results
        reasons = "; ".join(f"{r.config}: {r.error}" for r in results)
        super().__init__(f"no candidate config ran: {reasons}")


def _describe(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def choose_config(
    candidates: Iterable[Mapping[str, Any]],
    run_fn: Callable[[Config], Runner],
    time_fn: TimeFn | None = None,
) -> Choice:
    """Time every candidate and return the fastest.

    Args:
        candidates: configs to try, in order (the order breaks timing ties).
        run_fn: ``run_fn(config) -> run``; builds a zero-argument callable running the kernel with
            ``config``. An exception here (e.g. a compile error) skips the candidate.
        time_fn: ``time_fn(run) -> ms``; an exception (e.g. out of resources) or a time that is not
            a finite non-negative number skips the candidate. Default: :func:`make_cuda_time_fn`.

    Raises:
        NoViableConfig: every candidate was skipped.
    """
    if time_fn is None:
        time_fn = make_cuda_time_fn()
    results: list[CandidateResult] = []
    for candidate in candidates:
        config = dict(candidate)
        result = CandidateResult(config)
        results.append(result)
        try:
            run = run_fn(dict(config))
        except Exception as err:  # noqa: BLE001 - any build failure skips the candidate
            result.error = "build failed: " + _describe(err)
            continue
        try:
            time_ms = float(time_fn(run))
        except Exception as err:  # noqa: BLE001 - any run failure skips the candidate
            result.error = "run failed: " + _describe(err)
            continue
        if not math.isfinite(time_ms) or time_ms < 0:
            result.error = f"invalid time {time_ms!r} ms"
            continue
        result.time_ms = time_ms
    ok = [r for r in results if r.error is None]
    if not ok:
        raise NoViableConfig(results)
    best = Choice(config={}, time_ms=0.0, results=results).ranked[0]
    return Choice(config=dict(best.config), time_ms=float(best.time_ms or 0.0), results=results)


def make_cuda_time_fn(quick: bool = False) -> TimeFn:
    """A GPU timer: median ms per call by ``triton.testing.do_bench`` (CUDA events, synchronized).

    ``quick`` shortens warm-up / measurement to 5 / 20 ms (default 25 / 100 ms). GPU only.
    """
    warmup, rep = (5, 20) if quick else (25, 100)

    def time_fn(run: Runner) -> float:
        import torch
        import triton.testing

        run()  # compile outside the measurement; surfaces compile / resource errors here
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(run, warmup=warmup, rep=rep, return_mode="median"))

    return time_fn


# --------------------------------------------------------------------------------------------
# one kernel over its problem grid


def _snapshot(value: Any) -> Any:
    """Detach-and-clone tensors (nested), so a later launch reusing buffers cannot change them."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value)
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    return value


def reference_config(kernel: str, problem: Mapping[str, Any], tunable: Tunable) -> Config:
    """The config the tuned one's output must match: the registered default, else candidate 0."""
    if kernel in registered_kernels():
        return default_config(kernel, problem)
    return dict(tunable.candidates[0])


def tune_problem(
    tunable: Tunable, problem: Mapping[str, Any], time_fn: TimeFn
) -> tuple[dict[str, Any] | None, str]:
    """Tune one problem; return ``(file entry or None, one-line summary)``.

    The entry is ``{"problem", "config", "time_ms", "default_time_ms", "verified",
    "candidates"}`` (see tritri/configs/README.md). When the default config cannot run there is
    nothing to check against: the fastest candidate is kept with ``"verified": false``. When no
    candidate matches the default's output, the entry keeps the default config. ``None`` when
    neither any candidate nor the default runs.
    """
    problem = dict(problem)

    def run_fn(config: Config) -> Runner:
        return tunable.make_runner(dict(problem), config)

    ref_config = reference_config(tunable.kernel, problem, tunable)
    ref_run: Runner | None = None
    reference: Any = None
    ref_error: str | None = None
    try:
        ref_run = run_fn(dict(ref_config))
        reference = _snapshot(ref_run())
    except Exception as err:  # noqa: BLE001 - the default may fail on this GPU too
        ref_error = _describe(err)

    try:
        choice = choose_config(tunable.candidates, run_fn, time_fn)
        results, ranked = choice.results, choice.ranked
    except NoViableConfig as err:
        results, ranked = err.results, []

    ref_time = next(
        (r.time_ms for r in results if r.error is None and r.config == ref_config), None
    )
    if ref_time is None and ref_run is not None and ref_error is None:
        try:
            ref_time = float(time_fn(ref_run))
        except Exception:  # noqa: BLE001 - the time of the default is informative only
            ref_time = None

    chosen: CandidateResult | None = None
    verified = False
    for result in ranked:
        if ref_error is not None:
            chosen = result  # nothing to compare with: the fastest, unverified
            break
        try:
            matches = bool(tunable.check(_snapshot(run_fn(dict(result.config))()), reference))
        except Exception as err:  # noqa: BLE001
            result.error = "check run failed: " + _describe(err)
            continue
        if matches:
            chosen, verified = result, True
            break
        result.error = "output differs from the default config's output"

    label = f"{tunable.kernel} {problem}"
    if chosen is None:
        if ref_error is not None:
            return None, f"{label}: SKIPPED, no config ran (default: {ref_error})"
        chosen, verified = CandidateResult(dict(ref_config), ref_time), True
    entry = {
        "problem": problem,
        "config": dict(chosen.config),
        "time_ms": chosen.time_ms,
        "default_time_ms": ref_time,
        "verified": verified,
        "candidates": [r.to_json() for r in results],
    }
    n_skipped = sum(r.error is not None for r in results)
    summary = f"{label}: {chosen.config} {_ms(chosen.time_ms)}"
    if ref_time and chosen.time_ms:
        summary += f" (default {_ms(ref_time)}, x{ref_time / chosen.time_ms:.2f})"
    summary += f"; {n_skipped}/{len(results)} candidates skipped"
    if not verified:
        summary += f"; UNVERIFIED, the default failed: {ref_error}"
    return entry, summary


def _ms(time_ms: float | None) -> str:
    return "? ms" if time_ms is None else f"{time_ms:.4g} ms"


def _release_cuda_memory() -> None:
    """Return cached CUDA blocks between problems (no-op unless CUDA was initialized)."""
    import torch

    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def tune_kernels(
    selected: Iterable[Tunable],
    time_fn: TimeFn,
    *,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, list[dict[str, Any]]]:
    """Tune every problem of every tunable; return ``{kernel: [entry, ...]}``.

    Kernels without any entry are left out. ``quick`` uses each tunable's ``quick_problems``;
    ``log`` gets one summary line per problem.
    """
    kernels: dict[str, list[dict[str, Any]]] = {}
    for tunable in selected:
        grid = tunable.quick_problems if quick else tunable.problems
        entries = []
        for problem in grid:
            entry, summary = tune_problem(tunable, problem, time_fn)
            _release_cuda_memory()
            log(summary)
            if entry is not None:
                entries.append(entry)
        if entries:
            kernels[tunable.kernel] = entries
    return kernels


# --------------------------------------------------------------------------------------------
# files


def build_document(
    device_name: str,
    kernels: Mapping[str, list[dict[str, Any]]],
    *,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A config document for ``device_name`` with the running triton / torch versions and now."""
    import torch

    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:  # pragma: no cover - triton is a dependency on Linux
        triton_version = None
    doc: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "device_name": device_name,
        "slug": device_slug(device_name),
        "triton": triton_version,
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    doc.update(extra or {})
    doc["kernels"] = {k: list(v) for k, v in sorted(kernels.items())}
    return doc


def merge_with_existing(path: str | os.PathLike[str], doc: dict[str, Any]) -> list[str]:
    """Copy into ``doc`` the kernels of the file at ``path`` that ``doc`` lacks.

    Only from a valid file of the same device, schema, triton and torch versions (entries measured
    under other versions are dropped). Returns the kernel names copied.
    """
    try:
        old = load_config_file(path)
    except (FileNotFoundError, ConfigFileError):
        return []
    same = all(old.get(k) == doc.get(k) for k in ("device_name", "triton", "torch"))
    if not same:
        return []
    kept = [k for k in old["kernels"] if k not in doc["kernels"]]
    for k in kept:
        doc["kernels"][k] = old["kernels"][k]
    doc["kernels"] = dict(sorted(doc["kernels"].items()))
    return kept


def write_config_file(path: str | os.PathLike[str], doc: Mapping[str, Any]) -> Path:
    """Validate ``doc`` and write it to ``path`` atomically; return the path.

    The JSON goes to a temp file in the same directory, is flushed and fsync'ed, then
    ``os.replace``-d over ``path``: a reader (or another writer) sees the old or the new whole
    file, never a partial one. The directory is created if missing; the file gets mode 0644.
    """
    target = Path(path)
    validate_document(dict(doc), target)
    text = json.dumps(doc, indent=1, sort_keys=False, allow_nan=False) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target
