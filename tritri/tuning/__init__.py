"""Per-GPU kernel configs (SPEC section 4).

- :func:`get_config` -- the launch config of a kernel for a problem on this GPU model (lookup order,
  bucketing and fallbacks: :mod:`tritri.tuning.lookup`);
- :func:`register_default` -- a kernel's heuristic default (the renderer's are in
  :mod:`tritri.tuning.defaults`);
- :func:`register_tunable` / :func:`choose_config` -- the tuner behind ``tritri tune``
  (:mod:`tritri.tuning.tuner`, :mod:`tritri.tuning.tune`).

Nothing here touches the GPU at import; the device name is queried on the first lookup.
"""

from __future__ import annotations

from tritri.tuning import defaults as defaults
from tritri.tuning.lookup import (
    ENV_CONFIG_DIR,
    SCHEMA_VERSION,
    ConfigFileError,
    ConfigWarning,
    clear_cache,
    current_device_name,
    default_config,
    find_config,
    get_config,
    launch_config,
    load_config_file,
    register_default,
    registered_kernels,
)
from tritri.tuning.slug import device_slug
from tritri.tuning.tuner import (
    Choice,
    NoViableConfig,
    choose_config,
    register_tunable,
    tunables,
    write_config_file,
)

__all__ = [
    "ENV_CONFIG_DIR",
    "SCHEMA_VERSION",
    "Choice",
    "ConfigFileError",
    "ConfigWarning",
    "NoViableConfig",
    "choose_config",
    "clear_cache",
    "current_device_name",
    "default_config",
    "device_slug",
    "find_config",
    "get_config",
    "launch_config",
    "load_config_file",
    "register_default",
    "register_tunable",
    "registered_kernels",
    "tunables",
    "write_config_file",
]
