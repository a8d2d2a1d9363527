"""Per-GPU launch configs (``docs/SPEC.md`` section 4): what every launch reads.

- :mod:`tritri.configs.lookup` -- :func:`get_config` / :func:`launch_config`: the launch config of
  a kernel for a problem on this GPU model, from a tuned file (``$TRITRI_CONFIG_DIR``, then the
  ``<gpu-slug>.json`` files shipped in this folder: format in its ``README.md``) or the kernel's
  default;
- :mod:`tritri.configs.defaults` -- every kernel's heuristic default, registered there and nowhere
  else;
- :mod:`tritri.configs.slug` -- a GPU name as a file name.

The tools that write and check these files are :mod:`tritri.tuning` (``tritri tune``,
``tritri check``); nothing here imports them. Importing this package registers every default and
touches no GPU: the device name is queried on the first lookup.
"""

from __future__ import annotations

from tritri.configs import defaults as defaults
from tritri.configs.lookup import (
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
from tritri.configs.slug import device_slug

__all__ = [
    "ENV_CONFIG_DIR",
    "SCHEMA_VERSION",
    "ConfigFileError",
    "ConfigWarning",
    "clear_cache",
    "current_device_name",
    "default_config",
    "device_slug",
    "find_config",
    "get_config",
    "launch_config",
    "load_config_file",
    "register_default",
    "registered_kernels",
]
