"""Per-GPU kernel config lookup (``docs/SPEC.md`` section 4).

Launchers ask :func:`get_config` for the launch config of a kernel on a problem. Sources, first hit
wins:

1. ``override=`` -- an explicit config dict from the caller. No file is read and nothing is warned;
   keys it lacks come from the heuristic default.
2. ``config_file=`` -- an explicit config file (path) from the caller.
3. ``$TRITRI_CONFIG_DIR/<slug>.json`` -- the user's own tuned files (``tritri tune --out``).
4. ``tritri/configs/<slug>.json`` -- the file shipped with the package for this GPU model.
5. The kernel's heuristic default (:func:`register_default`), with ONE :class:`ConfigWarning` per
   (kernel, GPU model) per process. Without a GPU (CPU / Triton interpreter) there is no slug, files
   3 and 4 are not looked for and the default is used silently.

``<slug>`` is :func:`tritri.configs.slug.device_slug` of ``device_name``, which defaults to the
current CUDA device's name (queried lazily on the first lookup, never at import). Pass
``device_name=""`` to mean "no GPU" explicitly (e.g. a launcher running CPU tensors under the
interpreter on a machine that has a GPU).

A file that is corrupt (unreadable, bad JSON, malformed entries), foreign (its ``device_name`` is
another GPU model, or none of its kernels has a registered default -- checked when the file lacks
the kernel looked up) or of another schema version gives
one :class:`ConfigWarning` and is skipped: the lookup goes on with the next source. A valid file
without an entry for the kernel (or whose entries have other problem keys) is skipped silently.

Bucketing: a file stores, per kernel, a list of ``{"problem": {...}, "config": {...}}`` entries.
An entry is eligible when it has exactly the problem's keys and equal non-numeric values (strings,
bools). The nearest eligible entry wins, by the L1 distance over the numeric keys in log2 space,
``sum_k |log2(max(p_k, 1)) - log2(max(e_k, 1))|`` (so 1024 is as far from 2048 as 4096 is).
Ties go to the entry with the smaller problem (numeric values compared as a tuple in sorted key
order), then to the earlier entry in the file. The returned config is the entry's config laid over
the kernel's default (so a file written before a config key existed still yields every key).

Lookups and file reads are cached per process; :func:`clear_cache` drops the caches (and the record
of warnings given) after files or ``TRITRI_CONFIG_DIR`` change.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tritri.configs.slug import device_slug

SCHEMA_VERSION = 1
"""Version of the config-file format this tritri reads and writes (see tritri/configs/README.md)."""

ENV_CONFIG_DIR = "TRITRI_CONFIG_DIR"
"""Environment variable naming a directory of user config files (searched before shipped ones)."""

SHIPPED_CONFIG_DIR: Path = Path(__file__).resolve().parent
"""Directory of the config files shipped as package data (read at lookup time; tests patch it)."""

ProblemValue = int | float | str | bool
DefaultFn = Callable[[Mapping[str, Any]], dict[str, Any]]

_DEFAULTS: dict[str, DefaultFn] = {}
_WARNED: set[tuple[str, ...]] = set()
_FAST: dict[tuple, tuple[dict[str, Any], str]] = {}
_FAST_MAX = 4096
_LOCK = threading.Lock()
_PKG_DIR = str(Path(__file__).resolve().parent)


class ConfigWarning(UserWarning):
    """A config file was unusable, or a kernel runs on an untuned heuristic default."""


class ConfigFileError(ValueError):
    """A config file cannot be used. ``reason`` is a short phrase such as ``"corrupt: ..."``."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------
# heuristic defaults


def register_default(kernel: str, fn: DefaultFn) -> None:
    """Register ``fn(problem) -> config`` as the heuristic default config of ``kernel``.

    Launcher modules call this at import. Registering a kernel again replaces its default (and
    drops cached lookups, which may hold the old one).
    """
    if not isinstance(kernel, str) or not kernel:
        raise TypeError(f"kernel must be a non-empty str, got {kernel!r}")
    if not callable(fn):
        raise TypeError(f"default for {kernel!r} must be callable, got {type(fn).__name__}")
    _DEFAULTS[kernel] = fn
    _cached_lookup.cache_clear()
    _FAST.clear()


def registered_kernels() -> list[str]:
    """Names of the kernels with a registered heuristic default, sorted."""
    return sorted(_DEFAULTS)


def default_config(kernel: str, problem: Mapping[str, Any]) -> dict[str, Any]:
    """The heuristic default config of ``kernel`` for ``problem`` (a fresh dict; no files read).

    Raises ``KeyError`` naming the known kernels when ``kernel`` has no registered default.
    """
    try:
        fn = _DEFAULTS[kernel]
    except KeyError:
        raise KeyError(_unknown_kernel_message(kernel)) from None
    return dict(fn(dict(problem)))


def _unknown_kernel_message(kernel: str) -> str:
    known = ", ".join(registered_kernels()) or "(none registered)"
    return (
        f"no config for unknown kernel {kernel!r}: no tuned entry and no registered default; "
        f"known kernels: {known}"
    )


# --------------------------------------------------------------------------------------------
# device


@functools.lru_cache(maxsize=1)
def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def _cuda_device_name(index: int) -> str:
    import torch

    return str(torch.cuda.get_device_name(index))


def current_device_name() -> str | None:
    """The current CUDA device's model name, or ``None`` without CUDA. Queried lazily, cached."""
    if not _cuda_available():
        return None
    import torch

    return _cuda_device_name(torch.cuda.current_device())


# --------------------------------------------------------------------------------------------
# files


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_problem(problem: object, where: str) -> dict[str, ProblemValue]:
    if not isinstance(problem, Mapping):
        raise TypeError(f"{where}: problem must be a dict, got {type(problem).__name__}")
    out: dict[str, ProblemValue] = {}
    for key, value in problem.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: problem keys must be str, got {key!r}")
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value):
                raise ValueError(f"{where}: problem value {key}={value!r} is not finite")
        elif not isinstance(value, (str, bool)):
            raise TypeError(
                f"{where}: problem value {key}={value!r} must be an int, float, str or bool"
            )
        out[key] = value
    return out


def validate_document(doc: object, path: str | os.PathLike[str] = "<document>") -> dict[str, Any]:
    """Check a parsed config document against the schema; return it or raise ConfigFileError.

    Checks the schema version, ``device_name`` (and ``slug``, if present, matching it) and every
    kernel entry's shape. Does not check which GPU the caller is on.
    """
    if not isinstance(doc, dict):
        raise ConfigFileError(path, f"corrupt: top level is {type(doc).__name__}, not an object")
    schema = doc.get("schema")
    if not _is_number(schema) or int(schema) != schema:
        raise ConfigFileError(
            path, f"older schema: no integer 'schema' field (this tritri reads {SCHEMA_VERSION})"
        )
    if schema < SCHEMA_VERSION:
        raise ConfigFileError(path, f"older schema {schema} (this tritri reads {SCHEMA_VERSION})")
    if schema > SCHEMA_VERSION:
        raise ConfigFileError(path, f"newer schema {schema} (this tritri reads {SCHEMA_VERSION})")
    name = doc.get("device_name")
    if not isinstance(name, str) or not name:
        raise ConfigFileError(path, "corrupt: 'device_name' missing or not a non-empty string")
    if "slug" in doc and doc["slug"] != device_slug(name):
        raise ConfigFileError(
            path, f"corrupt: slug {doc['slug']!r} does not match device_name {name!r}"
        )
    kernels = doc.get("kernels")
    if not isinstance(kernels, dict):
        raise ConfigFileError(path, "corrupt: 'kernels' missing or not an object")
    for kernel, entries in kernels.items():
        if not isinstance(entries, list):
            raise ConfigFileError(path, f"corrupt: kernels[{kernel!r}] is not a list")
        for i, entry in enumerate(entries):
            where = f"kernels[{kernel!r}][{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                raise ConfigFileError(path, f"corrupt: {where} has no 'config' object")
            try:
                _check_problem(entry.get("problem"), where)
            except (TypeError, ValueError) as err:
                raise ConfigFileError(path, f"corrupt: {err}") from None
            if (
                "time_ms" in entry
                and entry["time_ms"] is not None
                and not _is_number(entry["time_ms"])
            ):
                raise ConfigFileError(path, f"corrupt: {where}.time_ms is not a number")
    return doc


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate one config file (uncached). Raises ConfigFileError if unusable.

    A missing file raises ``FileNotFoundError`` (not a ConfigFileError: absence is not a fault).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(path, f"corrupt: cannot read ({err})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigFileError(path, f"corrupt: not valid JSON ({err})") from None
    return validate_document(doc, path)


@functools.lru_cache(maxsize=64)
def _cached_file(path: str) -> dict[str, Any] | ConfigFileError | None:
    """The validated document at ``path``; None if absent; the error if unusable (warned once)."""
    try:
        return load_config_file(path)
    except FileNotFoundError:
        return None
    except ConfigFileError as err:
        _warn_once(("file", path, err.reason), f"tritri: ignoring config file {err}")
        return err


# --------------------------------------------------------------------------------------------
# bucketing


def problem_distance(problem: Mapping[str, Any], bucket: Mapping[str, Any]) -> float:
    """Distance between a problem and a stored bucket (``inf`` when not comparable).

    Comparable: same key set, equal non-numeric values. Distance: sum over numeric keys of
    ``|log2(max(p, 1)) - log2(max(b, 1))|`` (unitless, in octaves).
    """
    if problem.keys() != bucket.keys():
        return math.inf
    dist = 0.0
    for key, value in problem.items():
        other = bucket[key]
        if _is_number(value) and _is_number(other):
            dist += abs(math.log2(max(float(value), 1.0)) - math.log2(max(float(other), 1.0)))
        elif value != other or type(value) is not type(other):
            return math.inf
    return dist


def nearest_entry(
    entries: list[dict[str, Any]], problem: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The nearest eligible entry of ``entries`` to ``problem`` (module docstring), or None."""
    best: tuple[float, tuple[float, ...], int] | None = None
    best_entry = None
    numeric_keys = sorted(k for k, v in problem.items() if _is_number(v))
    for index, entry in enumerate(entries):
        bucket = entry["problem"]
        dist = problem_distance(problem, bucket)
        if math.isinf(dist):
            continue
        rank = (dist, tuple(float(bucket[k]) for k in numeric_keys), index)
        if best is None or rank < best:
            best, best_entry = rank, entry
    return best_entry


# --------------------------------------------------------------------------------------------
# lookup


def _warn_once(key: tuple[str, ...], message: str) -> None:
    with _LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    warnings.warn(message, ConfigWarning, stacklevel=_caller_stacklevel())


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside tritri.configs (so warnings point at the launcher)."""
    import sys

    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PKG_DIR):
        level += 1
        frame = frame.f_back
    return level


def _layer(kernel: str, problem: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` laid over the kernel's default (just ``config`` for a kernel without default)."""
    if kernel in _DEFAULTS:
        return {**default_config(kernel, problem), **config}
    return dict(config)


@functools.lru_cache(maxsize=4096)
def _cached_lookup(
    kernel: str,
    problem_key: tuple[tuple[str, str, ProblemValue], ...],
    device_name: str | None,
    config_file: str | None,
    env_dir: str | None,
    shipped_dir: str,
) -> tuple[dict[str, Any], str]:
    problem = {k: v for k, _, v in problem_key}
    slug = device_slug(device_name) if device_name else None
    sources: list[str] = []
    if config_file is not None:
        sources.append(config_file)
    if slug is not None:
        if env_dir:
            sources.append(os.path.join(env_dir, f"{slug}.json"))
        sources.append(os.path.join(shipped_dir, f"{slug}.json"))
    for path in sources:
        doc = _cached_file(path)
        if doc is None or isinstance(doc, ConfigFileError):
            continue
        if slug is not None and device_slug(doc["device_name"]) != slug:
            _warn_once(
                ("file", path, "foreign"),
                f"tritri: ignoring config file {path}: foreign, written for "
                f"{doc['device_name']!r}, not {device_name!r}",
            )
            continue
        kernels = doc["kernels"]
        if kernel not in kernels:
            if kernels and not (set(kernels) & (set(_DEFAULTS) | {kernel})):
                _warn_once(
                    ("file", path, "foreign kernels"),
                    f"tritri: ignoring config file {path}: foreign, none of its kernels "
                    f"{sorted(kernels)} is registered here ({registered_kernels()})",
                )
            continue
        entry = nearest_entry(kernels[kernel], problem)
        if entry is not None:
            return _layer(kernel, problem, entry["config"]), path
    if kernel not in _DEFAULTS:
        raise KeyError(_unknown_kernel_message(kernel))
    config = default_config(kernel, problem)
    if slug is not None:
        looked = ", ".join(sources)
        _warn_once(
            ("default", kernel, slug),
            f"tritri: no tuned config for kernel {kernel!r} on {device_name!r} (looked in "
            f"{looked}); using the heuristic default {config}. Run `tritri tune` on this GPU "
            "for tuned configs.",
        )
    return config, "default"


def find_config(
    kernel: str,
    problem: Mapping[str, Any],
    device_name: str | None = None,
    *,
    override: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """Like :func:`get_config`, also returning where the config came from.

    The source is ``"override"``, the path of the file whose entry was used, or ``"default"``.
    """
    if override is not None:
        if not isinstance(override, Mapping):
            raise TypeError(f"override must be a dict, got {type(override).__name__}")
        return _layer(kernel, _check_problem(problem, f"get_config({kernel!r})"), override), (
            "override"
        )
    if device_name is None:
        device_name = current_device_name()
    env_dir = os.environ.get(ENV_CONFIG_DIR) or None
    # fast path (launchers call this per launch): the caller's problem as given, values typed
    try:
        fast_key: tuple | None = (
            kernel,
            tuple((k, type(v), v) for k, v in problem.items()),
            device_name,
            config_file,
            env_dir,
            SHIPPED_CONFIG_DIR,
        )
        hit = _FAST.get(fast_key)
    except TypeError:  # unhashable value: the slow path explains
        fast_key, hit = None, None
    if hit is not None:
        return dict(hit[0]), hit[1]
    checked = _check_problem(problem, f"get_config({kernel!r})")
    config, source = _cached_lookup(
        kernel,
        tuple(sorted((k, type(v).__name__, v) for k, v in checked.items())),
        device_name or None,
        None if config_file is None else os.fspath(config_file),
        env_dir,
        os.fspath(SHIPPED_CONFIG_DIR),
    )
    if fast_key is not None:
        with _LOCK:
            if len(_FAST) >= _FAST_MAX:
                _FAST.clear()
            _FAST[fast_key] = (config, source)
    return dict(config), source


def get_config(
    kernel: str,
    problem: Mapping[str, Any],
    device_name: str | None = None,
    *,
    override: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The launch config of ``kernel`` for ``problem`` on a GPU model (module docstring).

    Args:
        kernel: kernel name, e.g. ``"raster_forward"``.
        problem: the kernel's problem keys, e.g. ``{"batch": 8, "n_triangles": 1000, "height":
            256, "width": 256}`` (values int / float / str / bool; numbers are bucketed).
        device_name: GPU model name as ``torch.cuda.get_device_name()`` gives it; ``None`` -> the
            current CUDA device (or no device without CUDA); ``""`` -> no device.
        override: explicit config; returned (over the default) without reading any file.
        config_file: explicit config file searched before ``TRITRI_CONFIG_DIR`` and the shipped one.

    Returns:
        A fresh config dict (callers may mutate it).

    Raises:
        KeyError: ``kernel`` has neither a file entry nor a registered default.
    """
    return find_config(kernel, problem, device_name, override=override, config_file=config_file)[0]


def clear_cache() -> None:
    """Forget cached lookups, file reads, the device name and which warnings were given."""
    _cached_lookup.cache_clear()
    _FAST.clear()
    _cached_file.cache_clear()
    _cuda_available.cache_clear()
    _cuda_device_name.cache_clear()
    with _LOCK:
        _WARNED.clear()


def launch_config(kernel: str, problem: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """The config a launcher uses for tensors on ``device``.

    CUDA tensors: :func:`get_config` (tuned file for this GPU, else the default with one warning).
    Anything else (CPU tensors under the Triton interpreter), and inside ``torch.compile`` traces
    (where file lookups cannot be traced): the heuristic default, without reading files.
    """
    import torch

    if getattr(device, "type", device) != "cuda" or torch.compiler.is_compiling():
        return default_config(kernel, problem)
    return get_config(kernel, problem)
