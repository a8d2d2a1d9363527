"""GPU model name -> file-name slug (``docs/SPEC.md`` section 4)."""

from __future__ import annotations

import re

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def device_slug(device_name: str) -> str:
    """Return the config-file slug of a GPU model name.

    The name is lower-cased and every run of characters other than ``a-z`` and ``0-9`` becomes one
    ``_`` (leading / trailing runs included, exactly as ``docs/SPEC.md`` section 4 states):
    ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia_h100_80gb_hbm3"``. The config file of that GPU is
    ``<slug>.json``.
    """
    return _NON_ALNUM.sub("_", device_name.lower())
