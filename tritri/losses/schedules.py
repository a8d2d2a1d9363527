"""Fixed and scheduled balancers: WeightedSum, AlternatingFocus, LossAnnealing and Staged."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tritri.losses.base import Balancer, Shared, check_finite, check_names, check_timing

__all__ = ["AlternatingFocus", "LossAnnealing", "Staged", "WeightedSum"]


def _clock(by: str, step: int | None, epoch: float | None, owner: str) -> float:
    value = step if by == "step" else epoch
    if value is None:
        raise ValueError(f"{owner}(by={by!r}) needs {by}= on every call")
    return check_finite(value, by)


class WeightedSum(Balancer):
    """Fixed weights, the baseline: ``total = Σ_k w_k·L_k``.

    Args:
        weights: mapping name → weight (finite, ``>= 0``); its keys are the loss names.

    Per-sample ``(B,)`` losses are reduced to their batch mean. The weights are a buffer
    (``weight_values``, in ``names`` order), so they travel with ``state_dict()``.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        if not isinstance(weights, Mapping):
            raise TypeError(
                "weights must be a mapping name -> weight such as {'l1': 1.0, 'lpips': 0.1}, got "
                f"{type(weights).__name__}"
            )
        super().__init__(list(weights))
        values = [check_finite(weights[n], f"weights[{n!r}]", nonneg=True) for n in self.names]
        self.register_buffer("weight_values", torch.tensor(values))

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.weight_values.tolist(), strict=True))

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        values = self._stack(losses)
        w = self.weight_values
        total = (w.to(values.dtype) * values).sum()
        self._record(total, values, w)
        return total


class AlternatingFocus(Balancer):
    """Optimize one loss at a time: ``total = L_j`` with ``j = (t // period) mod K``.

    ``t`` is the ``step`` (``by="step"``, the default) or the ``epoch`` (``by="epoch"``, the seed's
    ``epoch % 2``; a fractional epoch is floored) passed to the call. When ``by="step"`` and no
    ``step`` is passed, an internal call counter (a buffer, so it survives ``state_dict()``) is
    used.
    The other losses enter with weight 0, so they stay in the graph (their gradients are zero).

    Per-sample ``(B,)`` losses are reduced to their batch mean.
    """

    def __init__(self, names: Sequence[str], period: int = 1, by: str = "step") -> None:
        super().__init__(names)
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be an integer >= 1, got {period!r}")
        self.period = period
        self.by = check_timing(by)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, period={self.period}, by={self.by!r}"

    def focus(self, t: float) -> int:
        """Index (into ``names``) of the loss optimized at time ``t``."""
        return int(math.floor(t)) // self.period % len(self.names)

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        values = self._stack(losses)
        if self.by == "step" and step is None:
            t = float(self.calls)  # the counter lives on the host's schedule anyway
        else:
            t = _clock(self.by, step, epoch, "AlternatingFocus")
        self.calls += 1
        weights = torch.zeros(len(self.names), dtype=values.dtype, device=values.device)
        weights[self.focus(t)] = 1.0
        total = (weights * values).sum()
        self._record(total, values, weights)
        return total


class LossAnnealing(Balancer):
    """Base losses at weight 1; each ramped loss fades in linearly.

    ::

        w_k = 1                                   for k in base
        w_k = min(1, t / ramps[k])                for k in ramps   (1 at once if ramps[k] == 0)
        total = Σ_k w_k·L_k

    with ``t`` the ``epoch`` (default, as the seed's ``min(1, current_epoch / total_epochs)``) or
    the ``step`` (``by="step"``) passed to the call; a negative ``t`` counts as 0. The names are
    ``base`` followed by the keys of ``ramps``.

    Args:
        base: names of the losses at weight 1 from the start (may be empty).
        ramps: mapping name → number of epochs (or steps) to reach weight 1 (``>= 0``).
        by: ``"epoch"`` or ``"step"``.

    Per-sample ``(B,)`` losses are reduced to their batch mean.
    """

    def __init__(self, base: Sequence[str], ramps: Mapping[str, float], by: str = "epoch") -> None:
        base = tuple(check_names(base, argument="base")) if base else ()
        if not isinstance(ramps, Mapping):
            raise TypeError(
                "ramps must be a mapping name -> ramp length such as {'lpips': 50}, got "
                f"{type(ramps).__name__}"
            )
        both = sorted(set(base) & set(ramps))
        if both:
            raise ValueError(f"losses {both} are in both base and ramps")
        super().__init__(list(base) + list(ramps))
        self.base = base
        self.ramps = {
            str(n): check_finite(r, f"ramps[{n!r}]", nonneg=True) for n, r in ramps.items()
        }
        self.by = check_timing(by)

    def extra_repr(self) -> str:
        return f"base={list(self.base)}, ramps={self.ramps}, by={self.by!r}"

    def weights_at(self, t: float) -> list[float]:
        """The weights (in ``names`` order) at time ``t``."""
        t = max(0.0, t)
        out = []
        for name in self.names:
            ramp = self.ramps.get(name)
            out.append(1.0 if ramp is None or ramp == 0 else min(1.0, t / ramp))
        return out

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        values = self._stack(losses)
        if self.ramps:
            t = _clock(self.by, step, epoch, "LossAnnealing")
        else:
            t = 0.0
        weights = torch.tensor(self.weights_at(t), dtype=values.dtype, device=values.device)
        total = (weights * values).sum()
        self._record(total, values, weights)
        return total


def _settable(module: nn.Module) -> list[str]:
    """Public attributes of ``module`` that ``Staged`` may set: numbers, bools and buffers."""
    names = [
        k
        for k, v in vars(module).items()
        if not k.startswith("_") and isinstance(v, int | float | bool) and k != "training"
    ]
    names += [k for k, _ in module.named_buffers(recurse=False) if not k.startswith("_")]
    return sorted(set(names))


class Staged(Balancer):
    """Wrap a balancer and change its attributes at given epochs (the seed's staged schedule).

    ``Staged(GeometricMeanLoss(), {0: {"regularization_weight": 0.1}, 50: {"regularization_weight":
    0.01}, 150: {"regularization_weight": 0.001}})`` reproduces seed 000 section 3A. On each call
    the stage with the largest start ``<= t`` is applied by setting the attributes by name
    (``setattr`` for plain attributes, an in-place copy for tensor buffers); before the first stage
    the wrapped balancer's own values (remembered at construction) are used. ``t`` is the ``epoch``
    (default) or the ``step`` (``by="step"``) passed to the call.

    The wrapped balancer's ``state_dict()`` is nested under ``balancer.``. The staged values are
    re-applied from ``t`` on every call, so a resumed run continues exactly.

    Args:
        balancer: any balancer module (including one not derived from :class:`Balancer`, such as
            ``GeometricMeanLoss``) with a ``stats`` dict.
        stages: mapping start → {attribute: value}. Starts are numbers ``>= 0`` (strings such as
            ``"50"`` from JSON are accepted); every attribute must already exist on ``balancer``
            (a ``ValueError`` names it and lists the ones that can be set).
        by: ``"epoch"`` or ``"step"``.

    ``stats`` is the wrapped balancer's, plus ``stage/<attribute>`` for every staged attribute
    whose value is a number.
    """

    def __init__(
        self,
        balancer: nn.Module,
        stages: Mapping[Any, Mapping[str, Any]],
        by: str = "epoch",
    ) -> None:
        if not isinstance(balancer, nn.Module):
            raise TypeError(f"balancer must be a balancer module, got {type(balancer).__name__}")
        names = getattr(balancer, "names", None)
        nn.Module.__init__(self)
        self.names = tuple(names) if names else ()
        self.stats = {}
        self.balancer = balancer
        self.by = check_timing(by)
        if not isinstance(stages, Mapping) or not stages:
            raise ValueError(
                "stages must be a non-empty mapping start -> {attribute: value}, e.g. "
                "{0: {'regularization_weight': 0.1}, 50: {'regularization_weight': 0.01}}"
            )
        settable = _settable(balancer)
        parsed: list[tuple[float, dict[str, Any]]] = []
        for start, params in stages.items():
            try:
                begin = float(start)
            except (TypeError, ValueError):
                raise ValueError(f"stages key {start!r} is not a number ({by})") from None
            if not math.isfinite(begin) or begin < 0:
                raise ValueError(f"stages key {start!r} must be a finite number >= 0")
            if not isinstance(params, Mapping) or not params:
                raise ValueError(
                    f"stages[{start!r}] must be a non-empty mapping attribute -> value, "
                    f"got {params!r}"
                )
            for attr in params:
                if attr not in settable:
                    raise ValueError(
                        f"stages[{start!r}]: {type(balancer).__name__} has no attribute "
                        f"{attr!r} that can be staged; valid: {settable}"
                    )
            parsed.append((begin, dict(params)))
        parsed.sort(key=lambda item: item[0])
        if len({b for b, _ in parsed}) != len(parsed):
            raise ValueError(f"stages has duplicate starts: {[b for b, _ in parsed]}")
        self.stages = parsed
        self.staged_attributes = sorted({a for _, p in parsed for a in p})
        self._initial = {a: self._get(a) for a in self.staged_attributes}

    def extra_repr(self) -> str:
        return f"stages={self.stages}, by={self.by!r}"

    def _get(self, attr: str) -> Any:
        value = getattr(self.balancer, attr)
        return value.detach().clone() if isinstance(value, Tensor) else value

    def _set(self, attr: str, value: Any) -> None:
        current = getattr(self.balancer, attr)
        if isinstance(current, Tensor):
            with torch.no_grad():
                current.copy_(torch.as_tensor(value, dtype=current.dtype))
        else:
            setattr(self.balancer, attr, value)

    def values_at(self, t: float) -> dict[str, Any]:
        """The staged attributes' values at time ``t``."""
        values = dict(self._initial)
        for begin, params in self.stages:
            if begin <= t:
                values.update(params)
        return values

    def forward(
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        t = _clock(self.by, step, epoch, "Staged")
        values = self.values_at(t)
        for attr, value in values.items():
            self._set(attr, value)
        total = self.balancer(losses, step=step, epoch=epoch, shared=shared)
        stats = dict(getattr(self.balancer, "stats", {}) or {})
        for attr, value in values.items():
            if isinstance(value, int | float) or (isinstance(value, Tensor) and value.numel() == 1):
                stats[f"stage/{attr}"] = float(value)
        self.stats = stats
        return total
