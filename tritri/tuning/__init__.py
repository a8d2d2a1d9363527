"""The tools that make and check the per-GPU kernel configs, and the config API users call.

- ``tritri tune`` (:mod:`tritri.tuning.tune`, :mod:`tritri.tuning.tuner`): benchmarks each tunable
  kernel's candidates (:mod:`tritri.tuning.candidates`) on this GPU and writes its config file;
  :func:`register_tunable` / :func:`choose_config` / :func:`write_config_file`;
- ``tritri check`` (:mod:`tritri.tuning.check`, :mod:`tritri.tuning.kernel_cost`): every kernel
  compiled for real NVIDIA targets without a GPU, and what it costs;
- the lookup the launchers use, re-exported from :mod:`tritri.configs`: :func:`get_config`,
  :func:`launch_config`, :func:`register_default`, ...

Launches never import this package (only :mod:`tritri.configs`); it imports no GPU at import.
"""

from __future__ import annotations

from tritri import configs
from tritri.configs import *  # noqa: F403  (the config API, re-exported: configs.__all__)
from tritri.configs import defaults
from tritri.tuning.tuner import (
    Choice,
    NoViableConfig,
    choose_config,
    register_tunable,
    tunables,
    write_config_file,
)

__all__ = [
    *configs.__all__,
    "Choice",
    "NoViableConfig",
    "choose_config",
    "defaults",
    "register_tunable",
    "tunables",
    "write_config_file",
]
