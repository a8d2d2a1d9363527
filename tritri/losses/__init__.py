"""Image losses and loss balancers (``docs/SPEC.md`` section 3).

Names are imported on first use so that ``import tritri.losses`` stays cheap.
"""

from __future__ import annotations

from tritri._lazy import lazy_exports

_EXPORTS = {
    # image losses on one shared VGG16 pass
    "ImageLosses": "tritri.losses.image_losses",
    # balancers
    "GeometricMeanLoss": "tritri.losses.geometric",
    "UncertaintyWeighting": "tritri.losses.uncertainty",
    "GradNorm": "tritri.losses.gradnorm",
    "AdaptiveWeighting": "tritri.losses.adaptive",
    "AlternatingFocus": "tritri.losses.schedules",
    "LossAnnealing": "tritri.losses.schedules",
    "WeightedSum": "tritri.losses.schedules",
    "Staged": "tritri.losses.schedules",
    "MGDA": "tritri.losses.mgda",
    "GeometricUncertaintyHybrid": "tritri.losses.hybrid",
    "build_balancer": "tritri.losses.config",
    "LossMonitor": "tritri.losses.monitor",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
