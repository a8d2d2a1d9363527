"""Training monitor: JSON-lines log of the balancer's stats and the seeds' warning signs.

Torch-free at import (the numpy fit loop uses it): tensors are recognised only once torch is
loaded, and :func:`per_loss_grad_norms` imports torch when called.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from tritri.losses.checks import check_finite

if TYPE_CHECKING:
    from torch import Tensor

    from tritri.losses.base import Shared

__all__ = ["LossMonitor", "TritriLossWarning", "per_loss_grad_norms"]


class TritriLossWarning(UserWarning):
    """A warning sign in the loss curves (see :class:`LossMonitor`)."""


def per_loss_grad_norms(losses: Mapping[str, Tensor], shared: Shared) -> dict[str, float]:
    """``‖∇_shared L_k‖`` for each loss, as floats (per-sample losses are averaged first).

    The gradients are taken with ``retain_graph=True`` and nothing is written to any ``.grad``, so
    this can run between the forward pass and ``total.backward()``. It costs one backward pass per
    loss down to ``shared`` (the rendered image keeps that cheap) and one host sync.
    """
    from tritri.losses.base import per_loss_gradients

    names = list(losses)
    values = [v.mean() if v.dim() else v for v in losses.values()]
    norms = per_loss_gradients(values, names, shared).norm(dim=1).cpu().tolist()
    return dict(zip(names, (float(n) for n in norms), strict=True))


def _is_tensor(value: object) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch (if torch is not loaded,
    nothing is a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class LossMonitor:
    """Record each step's stats to JSON lines and warn on the seeds' warning signs.

    Usage::

        monitor = LossMonitor("run.jsonl")
        for step in range(steps):
            image = renderer(verts, colors)
            losses = criterion(image, target)
            total = balancer(losses, step=step, shared=image)
            monitor.log(balancer.stats, step, image=image)
            ...
        monitor.close()   # or use it as a context manager

    :meth:`log` appends one JSON object per call: ``{"step": ..., <every stats key>: float, ...,
    "grad_norm/<name>": ..., "image_std": ..., "warnings": [...]}`` (non-finite floats are written
    as ``null`` so the file is strict JSON). The file is opened in append mode on the first call and
    flushed after every line, so a crashed run leaves complete lines. ``path=None`` keeps nothing
    on disk (the checks still run). ``tritri plot RUN.jsonl`` draws the curves.

    Warning signs (each a :class:`TritriLossWarning`, emitted once per *episode*: when a condition
    becomes true it warns, and it warns again only after the condition has cleared and come back;
    the message carries the step, so Python's own once-per-location filter does not hide a second
    episode):

    * ``log_to_minus_inf`` (per loss): a log-loss heading to −∞. The log-loss is ``log/<name>``
      from the stats, or ``log(loss/<name>)`` when the balancer reports none. Fires when it is not
      finite, below ``log_floor``, or has fallen by more than ``log_drop`` over the last
      ``log_window`` steps (default: the loss fell 1000× within 50 steps).
    * ``regularization_dominates``: ``|regularization| / (|regularization| + D) > reg_share``, with
      the data part ``D = Σ_k |log/<k>|`` when log-losses exist, else ``Σ_k |weight/<k>·loss/<k>|``
      (the total itself is a poor scale: a sum of logs crosses zero).
    * ``total_jump``: the total rose from the previous step by more than ``jump_factor`` times the
      median absolute step-to-step change over the last ``jump_window`` steps (after at least
      ``jump_min_history`` changes), and by more than ``jump_min`` and ``jump_rel·|previous|`` (so
      float noise on a flat curve is not a jump). A non-finite total fires too. A step logged with
      ``discontinuity=`` (the caller changed the objective on purpose since the previous log, e.g.
      pruned or moved primitives) is not checked against the previous total, and its change does
      not enter the history.
    * ``uniform_image`` (needs ``image=``): an image in the batch has collapsed to a uniform color —
      the grey-square failure — i.e. its spatial standard deviation, the largest over channels, is
      below ``uniform_std`` (images in [0, 1]; 0.01 is about 2.5/255).

    Each firing is also appended to :attr:`events` and to the record's ``"warnings"`` list. Set
    ``warn=False`` to only record them.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        warn: bool = True,
        log_floor: float = math.log(1e-6),
        log_drop: float = math.log(1000.0),
        log_window: int = 50,
        reg_share: float = 0.5,
        jump_factor: float = 10.0,
        jump_window: int = 20,
        jump_min_history: int = 5,
        jump_min: float = 0.0,
        jump_rel: float = 1e-3,
        uniform_std: float = 0.01,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.warn = bool(warn)
        self.log_floor = check_finite(log_floor, "log_floor")
        self.log_drop = check_finite(log_drop, "log_drop", positive=True)
        self.reg_share = check_finite(reg_share, "reg_share", positive=True)
        if self.reg_share >= 1.0:
            raise ValueError(f"reg_share must be in (0, 1), got {reg_share!r}")
        self.jump_factor = check_finite(jump_factor, "jump_factor", positive=True)
        self.jump_min = check_finite(jump_min, "jump_min", nonneg=True)
        self.jump_rel = check_finite(jump_rel, "jump_rel", nonneg=True)
        self.uniform_std = check_finite(uniform_std, "uniform_std", nonneg=True)
        for name, value in (
            ("log_window", log_window),
            ("jump_window", jump_window),
            ("jump_min_history", jump_min_history),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if jump_min_history > jump_window:
            raise ValueError(
                f"jump_min_history ({jump_min_history}) must be <= jump_window ({jump_window})"
            )
        self.log_window = log_window
        self.jump_min_history = jump_min_history
        self.events: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        self._active: set[tuple[str, str]] = set()
        self._log_history: dict[str, deque[float]] = {}
        self._changes: deque[float] = deque(maxlen=jump_window)
        self._last_total: float | None = None
        self._calls = 0

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> LossMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file (a later :meth:`log` reopens it in append mode)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- logging --------------------------------------------------------------------------------

    def log(
        self,
        stats: Mapping[str, float],
        step: int | None = None,
        *,
        image: Tensor | np.ndarray | None = None,
        image_std: float | None = None,
        grad_norms: Mapping[str, float | Tensor] | None = None,
        discontinuity: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Check one step and append its record; returns the record.

        Args:
            stats: a balancer's ``stats`` (plain floats; tensors are converted).
            step: the step number (default: the number of previous calls).
            image: the rendered image, ``(B, C, H, W)`` or ``(C, H, W)``, a tensor (one host sync)
                or a numpy array, for the uniform-color check; its minimum per-image std is
                recorded as ``image_std``.
            image_std: that std computed by the caller, instead of ``image`` (e.g. from sums the
                caller's step already gathers).
            grad_norms: per-loss gradient norms (e.g. from :func:`per_loss_grad_norms`), recorded
                as ``grad_norm/<name>``.
            discontinuity: why the objective changed on purpose since the previous log (e.g.
                ``"pruned"``); the jump check skips this step and the reason is recorded as
                ``discontinuity``.
            extra: more JSON-serializable fields for the record (e.g. ``lr=...``, ``psnr=...``).
        """
        if not isinstance(stats, Mapping):
            raise TypeError(f"stats must be a mapping of floats, got {type(stats).__name__}")
        step = self._calls if step is None else int(step)
        self._calls += 1
        record: dict[str, Any] = {"step": step}
        values: dict[str, float] = {}
        for key, value in stats.items():
            values[str(key)] = float(value.item() if _is_tensor(value) else value)
        for name, value in (grad_norms or {}).items():
            values[f"grad_norm/{name}"] = float(value.item() if _is_tensor(value) else value)
        if image_std is not None:
            values["image_std"] = float(image_std)
        elif image is not None:
            values["image_std"] = self._image_std(image)
        fired: list[str] = []
        self._check_logs(values, step, fired)
        self._check_regularization(values, step, fired)
        self._check_jump(values, step, fired, expected=discontinuity is not None)
        if "image_std" in values:
            self._episode(
                ("uniform_image", ""),
                values["image_std"] < self.uniform_std,
                step,
                f"the rendered image collapsed to a uniform color (smallest per-image spatial std "
                f"{values['image_std']:.3g} < {self.uniform_std:g}): the grey-square failure",
                fired,
            )
        record.update({k: _finite_or_none(v) for k, v in values.items()})
        record.update(extra)
        if discontinuity is not None:
            record["discontinuity"] = str(discontinuity)
        record["warnings"] = fired
        self._write(record)
        return record

    def _write(self, record: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    @staticmethod
    def _image_std(image: Tensor | np.ndarray) -> float:
        """The smallest over the batch of the largest over channels of the spatial (population)
        standard deviation."""
        tensor = _is_tensor(image)
        known = tensor or isinstance(image, np.ndarray)
        if not known or image.ndim not in (3, 4):
            got = tuple(image.shape) if known else type(image).__name__
            raise ValueError(
                f"image must be a (B, C, H, W) or (C, H, W) tensor or array, got {got}"
            )
        if tensor:
            img = image.detach()
            if img.dim() == 3:
                img = img.unsqueeze(0)
            flat = img.float().flatten(2)  # (B, C, H*W)
            per_image = flat.std(dim=2, unbiased=False).amax(dim=1)  # (B,)
            return float(per_image.min())
        img = image if image.ndim == 4 else image[None]
        flat = img.reshape(img.shape[0], img.shape[1], -1)  # (B, C, H*W)
        per_image = flat.std(axis=2, dtype=np.float64).max(axis=1)  # (B,)
        return float(per_image.min())

    # -- checks ---------------------------------------------------------------------------------

    def _episode(
        self, key: tuple[str, str], condition: bool, step: int, message: str, fired: list[str]
    ) -> None:
        if not condition:
            self._active.discard(key)
            return
        if key in self._active:
            return
        self._active.add(key)
        kind, name = key
        label = f"{kind}/{name}" if name else kind
        fired.append(label)
        self.events.append({"step": step, "kind": kind, "name": name, "message": message})
        if self.warn:
            warnings.warn(f"step {step}: {message}", TritriLossWarning, stacklevel=3)

    def _loss_names(self, values: Mapping[str, float]) -> list[str]:
        return [k.split("/", 1)[1] for k in values if k.startswith("loss/")]

    def _check_logs(self, values: Mapping[str, float], step: int, fired: list[str]) -> None:
        names = self._loss_names(values)
        names += [k.split("/", 1)[1] for k in values if k.startswith("log/")]
        for name in dict.fromkeys(names):
            if f"log/{name}" in values:
                value = values[f"log/{name}"]
            else:
                loss = values[f"loss/{name}"]
                value = math.log(loss) if loss > 0 else -math.inf
            if math.isnan(value):
                continue  # not a sign of this kind (a NaN total is caught by the jump check)
            history = self._log_history.setdefault(name, deque(maxlen=self.log_window + 1))
            history.append(value)
            finite = [v for v in history if math.isfinite(v)]
            drop = max(finite) - value if finite and math.isfinite(value) else 0.0
            if not math.isfinite(value):
                why = f"is {value}"
            elif value < self.log_floor:
                why = f"is {value:.3g} < {self.log_floor:.3g}"
            elif drop > self.log_drop:
                why = f"fell by {drop:.3g} within {len(history) - 1} steps"
            else:
                why = ""
            self._episode(
                ("log_to_minus_inf", name),
                bool(why),
                step,
                f"the log-loss of {name!r} is heading to -inf ({why}): the loss is approaching "
                "zero too fast",
                fired,
            )

    def _check_regularization(
        self, values: Mapping[str, float], step: int, fired: list[str]
    ) -> None:
        if "regularization" not in values:
            return
        reg = abs(values["regularization"])
        logs = [v for k, v in values.items() if k.startswith("log/")]
        if logs:
            data = sum(abs(v) for v in logs)
        else:
            data = sum(
                abs(values.get(f"weight/{n}", 1.0) * values[f"loss/{n}"])
                for n in self._loss_names(values)
            )
        share = reg / (reg + data) if reg + data > 0 else 0.0
        self._episode(
            ("regularization_dominates", ""),
            math.isfinite(share) and share > self.reg_share,
            step,
            f"the regularization ({values['regularization']:.3g}) dominates the total: "
            f"{share:.0%} of |regularization| + |data terms|",
            fired,
        )

    def _check_jump(
        self, values: Mapping[str, float], step: int, fired: list[str], expected: bool = False
    ) -> None:
        if "total" not in values:
            return
        total = values["total"]
        last = self._last_total
        condition = False
        message = ""
        if not math.isfinite(total):
            condition, message = True, f"the total is {total}"
        elif last is not None and not expected:
            change = total - last
            if len(self._changes) >= self.jump_min_history:
                typical = statistics.median(abs(c) for c in self._changes)
                floor = max(self.jump_min, self.jump_rel * abs(last))
                if change > self.jump_factor * typical and change > floor:
                    condition = True
                    message = (
                        f"sudden jump in the total: {last:.4g} -> {total:.4g} (+{change:.3g}, "
                        f"{change / typical:.3g}x the typical change {typical:.3g})"
                        if typical > 0
                        else f"sudden jump in the total: {last:.4g} -> {total:.4g}"
                    )
            self._changes.append(change)
        if math.isfinite(total):
            self._last_total = total
        self._episode(("total_jump", ""), condition, step, message, fired)
