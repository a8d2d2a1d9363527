"""Shared machinery of the loss balancers (``docs/SPEC.md`` section 3.1).

Every balancer is an :class:`torch.nn.Module` called as::

    total = balancer(losses, *, step=None, epoch=None, shared=None)

``losses`` maps a name to a scalar tensor or a per-sample ``(B,)`` tensor. Unless a balancer's
docstring says otherwise, a per-sample loss is reduced to its batch mean before the rule is applied
(the rules below are all defined on scalar losses). After each call ``balancer.stats`` is a dict of
plain Python floats with the keys ``total``, ``loss/<name>``, ``weight/<name>`` (the effective
weight of each loss this step, i.e. d total / d loss) and, where the rule has them, ``log/<name>``
and ``regularization``; some balancers add their own keys (documented on the class).

All the floats of one step are copied to the host in one transfer, so ``stats`` costs one
device-to-host sync per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from tritri.losses.checks import check_finite

__all__ = [
    "Balancer",
    "Shared",
    "check_finite",
    "check_names",
    "check_timing",
    "per_loss_gradients",
]

#: What ``shared=`` may be: one tensor (e.g. the rendered image) or a sequence of tensors (e.g.
#: the parameters of the last shared layer).
Shared = Tensor | Sequence[Tensor]


def check_names(names: object, *, argument: str = "names") -> tuple[str, ...]:
    """Validate a sequence of distinct, non-empty loss names and return it as a tuple."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(
            f"{argument} must be a sequence of loss names such as ['l1', 'lpips'], "
            f"got {type(names).__name__}"
        )
    out = tuple(names)
    if not out:
        raise ValueError(f"{argument} must name at least one loss, got an empty sequence")
    for name in out:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{argument} must contain non-empty strings, got {name!r}")
    dupes = sorted({n for n in out if out.count(n) > 1})
    if dupes:
        raise ValueError(f"{argument} has duplicate names: {dupes}")
    return out


def _as_flat_grad(grads: Sequence[Tensor | None], name: str, dtype: torch.dtype) -> Tensor:
    if all(g is None for g in grads):
        raise ValueError(
            f"loss {name!r} does not depend on shared=; pass a tensor that every loss is computed "
            "from (the rendered image is the natural choice)"
        )
    parts = [g.reshape(-1).to(dtype) for g in grads if g is not None]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def per_loss_gradients(
    losses: Sequence[Tensor],
    names: Sequence[str],
    shared: Shared,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Gradient of each scalar loss with respect to ``shared``, flattened: a ``(K, D)`` tensor.

    Uses ``torch.autograd.grad(..., retain_graph=True)`` without ``create_graph``: the rows are
    detached, nothing is accumulated into any ``.grad``, and the caller's graph stays intact for its
    own ``backward()``. ``shared`` is one tensor or a sequence of tensors (their gradients are
    concatenated). The rows are cast to ``dtype`` (float32 by default; MGDA passes the losses'
    dtype so that float64 losses keep float64 gradients).
    """
    if isinstance(shared, Tensor):
        inputs: tuple[Tensor, ...] = (shared,)
    elif isinstance(shared, Sequence) and shared and all(isinstance(t, Tensor) for t in shared):
        inputs = tuple(shared)
    else:
        raise TypeError(
            "shared must be a tensor or a non-empty sequence of tensors, got "
            f"{type(shared).__name__}"
        )
    if not all(t.requires_grad for t in inputs):
        raise ValueError(
            "shared must require grad (it must be part of the graph the losses were computed from)"
        )
    rows = []
    for loss, name in zip(losses, names, strict=True):
        if not loss.requires_grad:
            raise ValueError(
                f"loss {name!r} does not require grad, so it has no gradient at shared"
            )
        grads = torch.autograd.grad(loss, inputs, retain_graph=True, allow_unused=True)
        rows.append(_as_flat_grad(grads, name, dtype))
    return torch.stack(rows)


class Balancer(nn.Module):
    """Base class: input validation, per-sample reduction and ``stats`` bookkeeping.

    Args:
        names: the loss names the balancer expects, in a fixed order (the order of its weight
            vectors and state). A call whose ``losses`` lacks one of them, or has one more, is a
            ``ValueError`` naming it: silently ignoring a loss is never what a user wants.
    """

    names: tuple[str, ...]
    stats: dict[str, float]

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = check_names(names)
        self.stats = {}

    def forward(  # pragma: no cover - abstract
        self,
        losses: Mapping[str, Tensor],
        *,
        step: int | None = None,
        epoch: float | None = None,
        shared: Shared | None = None,
    ) -> Tensor:
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------------

    def _stack(self, losses: Mapping[str, Tensor]) -> Tensor:
        """Validate ``losses`` against ``self.names`` and return the ``(K,)`` vector of losses.

        Per-sample ``(B,)`` losses become their batch mean; half-precision losses are computed on
        in float32. The result keeps the autograd graph.
        """
        return torch.stack(self._scalars(losses))

    def _scalars(self, losses: Mapping[str, Tensor]) -> list[Tensor]:
        """Like :meth:`_stack`, as a list of scalar tensors (for per-loss gradients)."""
        if not isinstance(losses, Mapping):
            raise TypeError(f"losses must be a mapping name -> tensor, got {type(losses).__name__}")
        missing = [n for n in self.names if n not in losses]
        extra = [n for n in losses if n not in self.names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise ValueError(
                f"losses has {' and '.join(parts)}; {type(self).__name__} was built for "
                f"names={list(self.names)}"
            )
        values = []
        device = None
        for name in self.names:
            value = losses[name]
            if not isinstance(value, Tensor):
                raise TypeError(f"losses[{name!r}] must be a tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"losses[{name!r}] must be a floating tensor, got {value.dtype}")
            if value.dim() > 1 or value.numel() == 0:
                raise ValueError(
                    f"losses[{name!r}] must be a scalar or a per-sample (B,) tensor, got shape "
                    f"{tuple(value.shape)}"
                )
            if device is None:
                device = value.device
            elif value.device != device:
                raise ValueError(
                    f"losses[{name!r}] is on {value.device} but losses[{self.names[0]!r}] is on "
                    f"{device}"
                )
            if value.dim() == 1:
                value = value.mean()
            if value.dtype in (torch.float16, torch.bfloat16):
                value = value.float()
            values.append(value)
        if len({v.dtype for v in values}) > 1:
            dtype = values[0].dtype
            for v in values[1:]:
                dtype = torch.promote_types(dtype, v.dtype)
            values = [v.to(dtype) for v in values]
        self._follow_device(values[0].device)
        return values

    def _follow_device(self, device: torch.device) -> None:
        """Move buffer-only state to the losses' device; refuse for learnable parameters.

        Parameters are not moved silently: an optimizer built before the move would keep its state
        on the old device.
        """
        for name, param in self.named_parameters():
            if param.device != device:
                raise ValueError(
                    f"{type(self).__name__} parameter {name!r} is on {param.device} but the losses "
                    f"are on {device}; call balancer.to(device) before building the optimizer"
                )
        if any(b.device != device for b in self.buffers()):
            self.to(device)

    def _record(
        self,
        total: Tensor,
        values: Tensor,
        weights: Tensor | Sequence[float],
        *,
        logs: Tensor | None = None,
        regularization: Tensor | float | None = None,
        per_loss: Mapping[str, Tensor] | None = None,
        scalars: Mapping[str, Tensor | float] | None = None,
    ) -> None:
        """Fill ``self.stats`` with one device-to-host transfer.

        ``per_loss`` maps a key prefix (e.g. ``"grad_norm"``) to a ``(K,)`` tensor, recorded as
        ``<prefix>/<name>``; ``scalars`` maps a key to a scalar, recorded as is.
        """
        device = values.device
        groups: dict[str, Tensor] = {
            "loss": values.detach(),
            "weight": torch.as_tensor(weights, device=device).detach().reshape(-1),
        }
        if logs is not None:
            groups["log"] = logs.detach()
        groups.update({k: v.detach().reshape(-1) for k, v in (per_loss or {}).items()})
        singles: dict[str, Tensor] = {"total": total.detach().reshape(1)}
        if regularization is not None:
            singles["regularization"] = torch.as_tensor(regularization, device=device).reshape(1)
        for key, value in (scalars or {}).items():
            singles[key] = torch.as_tensor(value, device=device).detach().reshape(1)
        parts = list(singles.values()) + list(groups.values())
        flat = torch.cat([t.to(device=device, dtype=torch.float64) for t in parts]).cpu().tolist()
        stats = {key: float(v) for key, v in zip(singles, flat, strict=False)}
        i = len(singles)
        for prefix, tensor in groups.items():
            n = tensor.numel()
            if n != len(self.names):
                raise RuntimeError(
                    f"internal: {prefix} has {n} entries for {len(self.names)} names"
                )
            for name, v in zip(self.names, flat[i : i + n], strict=True):
                stats[f"{prefix}/{name}"] = float(v)
            i += n
        self.stats = stats


def check_timing(by: str) -> str:
    if by not in ("step", "epoch"):
        raise ValueError(f"by must be 'step' or 'epoch', got {by!r}")
    return by
