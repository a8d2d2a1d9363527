"""Build a balancer from a dict or a YAML file (``docs/SPEC.md`` section 3.1).

The layout is the seed's (``config_geometric.yaml``)::

    loss:
      type: geometric_mean
      epsilon: 1e-8
      min_loss_value: 1e-4
      regularization_weight: 0.01

``type`` picks the class; every other key is a constructor argument of that class. A ``staged``
balancer nests another config under ``balancer``::

    loss:
      type: staged
      balancer: {type: geometric_mean}
      stages:
        0:   {regularization_weight: 0.1}
        50:  {regularization_weight: 0.01}
        150: {regularization_weight: 0.001}
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch import nn

__all__ = ["BALANCER_TYPES", "build_balancer", "load_config"]

#: ``type`` → (module, class). Imports are lazy: a type whose module is missing fails only when
#: it is asked for.
BALANCER_TYPES: dict[str, tuple[str, str]] = {
    "geometric_mean": ("tritri.losses.geometric", "GeometricMeanLoss"),
    "uncertainty": ("tritri.losses.uncertainty", "UncertaintyWeighting"),
    "gradnorm": ("tritri.losses.gradnorm", "GradNorm"),
    "adaptive": ("tritri.losses.adaptive", "AdaptiveWeighting"),
    "alternating": ("tritri.losses.schedules", "AlternatingFocus"),
    "annealing": ("tritri.losses.schedules", "LossAnnealing"),
    "weighted_sum": ("tritri.losses.schedules", "WeightedSum"),
    "staged": ("tritri.losses.schedules", "Staged"),
    "mgda": ("tritri.losses.mgda", "MGDA"),
    "geometric_uncertainty": ("tritri.losses.hybrid", "GeometricUncertaintyHybrid"),
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-8`` as a float.

    YAML 1.1 (PyYAML) only resolves floats with a dot, so the seed's ``epsilon: 1e-8`` would load
    as the *string* ``"1e-8"``.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file (``1e-8`` is a float) and return its top-level mapping.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not readable as text, not valid YAML (the message gives the line
            and column) or does not hold a mapping -- one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"balancer config file not found: {str(path)!r}")
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {str(path)!r} as YAML text ({err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{str(path)!r} is not valid YAML ({problem}{where})") from None
    if not isinstance(data, Mapping):
        raise ValueError(
            f"{str(path)!r} must hold a mapping such as 'loss: {{type: geometric_mean}}', got "
            f"{type(data).__name__}"
        )
    return dict(data)


def _resolve(type_name: str, where: str) -> type[nn.Module]:
    if type_name not in BALANCER_TYPES:
        raise ValueError(
            f"{where}.type: unknown balancer type {type_name!r}; valid types: "
            f"{sorted(BALANCER_TYPES)}"
        )
    module_name, class_name = BALANCER_TYPES[type_name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        raise ValueError(
            f"{where}.type: {type_name!r} needs {module_name}, which is not available in this "
            "build of tritri"
        ) from err
    return getattr(module, class_name)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Numbers written as strings (``"1e-8"`` from YAML 1.1 or JSON) become numbers."""
    if (
        isinstance(value, str)
        and isinstance(default, int | float)
        and not isinstance(default, bool)
    ):
        try:
            return float(value) if isinstance(default, float) or "." in value else int(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def build_balancer(
    config: Mapping[str, Any] | str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
) -> nn.Module:
    """Build a balancer from a config mapping or the path of a YAML file.

    Args:
        config: a mapping with a ``loss`` section (the seed's layout; other top-level sections,
            such as a training config's ``optimizer``, are ignored) or the ``loss`` section itself
            (a mapping with ``type``); or the path of a YAML file holding either.
        names: loss names used for types that take ``names`` when the config does not list them
            (e.g. ``build_balancer("run.yaml", names=list(losses))``).

    Returns:
        the balancer module (call ``.to(device)`` on it; learnable ones have ``parameters()``).

    Raises:
        ValueError: unknown ``type`` or unknown key (the message names it and lists the valid
            ones), or a missing required key.
        FileNotFoundError: ``config`` is a path that does not exist.
    """
    if isinstance(config, str | os.PathLike):
        data: Mapping[str, Any] = load_config(config)
        where = "loss"
    elif isinstance(config, Mapping):
        data = config
        where = "loss"
    else:
        raise TypeError(
            f"config must be a mapping or a YAML file path, got {type(config).__name__}"
        )
    if "type" not in data:
        if "loss" not in data:
            raise ValueError(
                "config has neither a 'loss' section nor a 'type' key; expected e.g. "
                "{'loss': {'type': 'geometric_mean', 'epsilon': 1e-8}}"
            )
        data = data["loss"]
        if not isinstance(data, Mapping):
            raise ValueError(f"loss: must be a mapping, got {type(data).__name__}")
    return _build(data, names, where)


def _build(section: Mapping[str, Any], names: Sequence[str] | None, where: str) -> nn.Module:
    if "type" not in section:
        raise ValueError(f"{where}: missing 'type'; valid types: {sorted(BALANCER_TYPES)}")
    type_name = section["type"]
    if not isinstance(type_name, str):
        raise ValueError(f"{where}.type must be a string, got {type_name!r}")
    cls = _resolve(type_name, where)
    params = {
        k: p
        for k, p in inspect.signature(cls.__init__).parameters.items()
        if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    kwargs: dict[str, Any] = {}
    for key, value in section.items():
        if key == "type":
            continue
        if key not in params:
            raise ValueError(
                f"{where}: unknown key {key!r} for type {type_name!r}; valid keys: "
                f"{sorted(['type', *params])}"
            )
        default = params[key].default
        if key == "balancer" and type_name == "staged":
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.balancer must be a mapping with a 'type'")
            value = _build(value, names, f"{where}.balancer")
        else:
            value = _coerce(value, default, f"{where}.{key}")
        kwargs[key] = value
    if "names" in params and "names" not in kwargs and names is not None:
        kwargs["names"] = list(names)
    missing = [
        k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs
    ]
    if missing:
        hint = " (or pass names= to build_balancer)" if "names" in missing else ""
        raise ValueError(f"{where}: type {type_name!r} needs {missing}{hint}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where} ({type_name}): {err}") from err
