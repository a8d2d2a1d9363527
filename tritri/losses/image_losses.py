"""L1 + VGG perceptual + LPIPS on one shared VGG16 pass (``docs/SPEC.md`` section 3).

LPIPS v0.1 feeds its trunk ``(2x - 1 - shift) / scale``, which for ``x`` in [0, 1] is ImageNet
normalization (``mean = (1 + shift) / 2``, ``std = scale / 2``), so one VGG16 pass over the
prediction serves both the perceptual loss and LPIPS, and a fixed target's features can be computed
once with :meth:`ImageLosses.encode`. Per feature level one fused kernel
(:mod:`tritri.kernels.loss_levels`) reads the pred and target features once and produces both
terms; one fused kernel computes the gradient of their weighted sum back to the pred features.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from tritri.losses.lpips_weights import load_lpips_lin_weights
from tritri.losses.vgg import (
    LAYER_POOLS,
    LPIPS_LAYERS,
    PERCEPTUAL_LAYERS,
    VGG16Features,
    WeightsSpec,
)

__all__ = ["EncodedTarget", "ImageLosses", "level_losses_torch"]

NAMES = ("l1", "perceptual", "lpips")
REDUCTIONS = ("mean", "none")
DISTANCES = ("l1", "mse")

#: eps inside the square root of the LPIPS channel norm: ``f / sqrt(Σ_c f_c² + eps)``.
LPIPS_EPS = 1e-10


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _resolve_use_triton(use_triton: bool | None, device: torch.device) -> bool:
    if use_triton is None:
        return device.type == "cuda"
    if use_triton and device.type != "cuda" and not _interpreting():
        raise ValueError(
            f"use_triton=True needs CUDA tensors (pred is on {device}) or the Triton interpreter "
            "(TRITON_INTERPRET=1 set before triton is imported)"
        )
    return bool(use_triton)


@dataclass
class EncodedTarget:
    """A target image and its (detached) trunk features, made by :meth:`ImageLosses.encode`.

    ``image`` is ``(B, 3, H, W)`` (B may be 1: it is then broadcast over a pred batch), ``features``
    maps VGG layer names to ``(B, C, h, w)`` tensors. Encode again after moving the loss module or
    the target to another device.
    """

    image: Tensor
    features: dict[str, Tensor]
    # Torch path only: per-layer -T/|T|_eps (fp32), filled on first use.
    _neg_unit: dict[tuple[str, float], Tensor] = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> torch.Size:
        return self.image.shape


def _unit_scale(f: Tensor, eps: float) -> Tensor:
    """``1 / sqrt(Σ_c f_c² + eps)``, shape ``(B, 1, H, W)``."""
    r = torch.linalg.vector_norm(f, dim=1, keepdim=True)
    return torch.rsqrt(r.square_().add_(eps))


def _neg_unit(t: Tensor, eps: float) -> Tensor:
    """``-t / sqrt(Σ_c t_c² + eps)`` in at least fp32 (negated so the forward is one addcmul)."""
    t = t.to(torch.promote_types(t.dtype, torch.float32))
    return t * _unit_scale(t, eps).neg_()


class _TorchLevel(torch.autograd.Function):
    """Torch twin of the fused level kernels (any device): the same sums in few whole-tensor
    passes and a hand-written backward. Autograd on the plain formula makes about 40 passes over
    each feature map (forward + backward); this makes about 27, which matters on a CPU where the
    tail is a fifth of the step."""

    @staticmethod
    def forward(ctx, fp, ft, neg_tn, lin_w, do_perc, do_lpips, mse, eps):
        ct = torch.promote_types(fp.dtype, torch.float32)  # fp32, or fp64 for fp64 features
        f = fp.to(ct)
        zeros = f.new_zeros(f.shape[0])
        s_perc = s_lp = zeros
        d = diff = inv = None
        if do_perc:
            d = f - ft.to(ct)
            # (vector_norm(d, 1) would save a pass but accumulates naively: ~1e-4 off at 2M
            # elements, where sum() is pairwise.)
            s_perc = (d.square() if mse else d.abs()).sum(dim=(1, 2, 3))
        if do_lpips:
            inv = _unit_scale(f, eps)
            diff = torch.addcmul(neg_tn, f, inv)  # a - b
            s_lp = torch.einsum("nchw,c->n", diff.square(), lin_w.to(ct))
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(fp, d, diff, inv, lin_w)
        ctx.flags = (do_perc, do_lpips, mse)
        return s_perc, s_lp

    @staticmethod
    @once_differentiable
    def backward(ctx, g_perc, g_lp):
        fp, d, diff, inv, lin_w = ctx.saved_tensors
        do_perc, do_lpips, mse = ctx.flags
        ct = torch.promote_types(fp.dtype, torch.float32)
        f = fp.to(ct)
        B, C = f.shape[:2]
        df = None
        if do_lpips:
            # g = ∂L/∂a = 2·gl·w·(a - b);  ∂L/∂f = g/s - f·(Σ_c g_c f_c)/s³
            g = diff * (2.0 * g_lp.to(ct).view(B, 1, 1, 1) * lin_w.to(ct).view(1, C, 1, 1))
            coef = (g * f).sum(dim=1, keepdim=True).mul_(inv.pow(3))
            df = g.mul_(inv).addcmul_(f, coef, value=-1.0)
        if do_perc:
            gp = g_perc.to(ct).view(B, 1, 1, 1)
            part = d if mse else torch.sign(d)
            scale = 2.0 * gp if mse else gp
            df = part * scale if df is None else df.addcmul_(part, scale)
        if df is None:
            df = torch.zeros_like(f)
        return df.to(fp.dtype), None, None, None, None, None, None, None


def level_losses_torch(
    pred_features: Tensor,
    target_features: Tensor,
    lin_weights: Tensor | None,
    *,
    do_perc: bool = True,
    do_lpips: bool = True,
    mse: bool = False,
    eps: float = LPIPS_EPS,
    neg_target_unit: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """Torch twin of :func:`tritri.kernels.loss_levels.level_losses_forward`, differentiable
    (once) with respect to ``pred_features``.

    Returns the per-sample raw sums ``Σ_{c,p} |F - T|`` (or squared) and
    ``Σ_p Σ_c w_c (F/|F|_eps - T/|T|_eps)²``, shape ``(B,)``, fp32 (fp64 for fp64 features).
    ``neg_target_unit`` may pass ``-T/|T|_eps`` precomputed (a cached target).
    """
    if do_lpips:
        if lin_weights is None:
            raise ValueError("lin_weights is required for the LPIPS term")
        if neg_target_unit is None:
            neg_target_unit = _neg_unit(target_features, eps)
    s_perc, s_lp = _TorchLevel.apply(
        pred_features,
        target_features.detach(),
        neg_target_unit.detach() if neg_target_unit is not None else None,
        lin_weights,
        do_perc,
        do_lpips,
        mse,
        eps,
    )
    return (s_perc if do_perc else None), (s_lp if do_lpips else None)


class _FusedLevel(torch.autograd.Function):
    """Both per-level sums from the fused Triton kernels; backward via the fused gradient kernel."""

    @staticmethod
    def forward(ctx, fp, ft, lin_w, do_perc, do_lpips, mse, eps):
        from tritri.kernels.loss_levels import level_losses_forward

        s_perc, s_lp = level_losses_forward(
            fp, ft, lin_w, do_perc=do_perc, do_lpips=do_lpips, mse=mse, eps=eps
        )
        zeros = fp.new_zeros(fp.shape[0], dtype=torch.float32)
        ctx.save_for_backward(fp, ft, lin_w)
        ctx.flags = (do_perc, do_lpips, mse, eps)
        return (s_perc if do_perc else zeros), (s_lp if do_lpips else zeros)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_perc, g_lp):
        from tritri.kernels.loss_levels import level_losses_backward

        fp, ft, lin_w = ctx.saved_tensors
        do_perc, do_lpips, mse, eps = ctx.flags
        df = level_losses_backward(
            fp,
            ft,
            lin_w,
            g_perc if do_perc else None,
            g_lp if do_lpips else None,
            mse=mse,
            eps=eps,
        )
        return df, None, None, None, None, None, None


@dataclass(frozen=True)
class _Level:
    layer: str
    perc_weight: float  # 0 when the perceptual loss does not use this layer
    do_lpips: bool


class ImageLosses(nn.Module):
    """Image losses on one frozen VGG16 pass: ``l1``, ``perceptual`` and ``lpips``
    (``docs/SPEC.md`` section 3).

    Args:
        names: which losses to compute, any of ``"l1"``, ``"perceptual"``, ``"lpips"`` (a single
            name may be given as a string). The returned dict follows this order.
        weights: VGG16 trunk weights: ``"DEFAULT"`` (torchvision's ImageNet weights, downloaded
            into ``$TORCH_HOME/hub/checkpoints`` on first use), a path to a torchvision-format
            state dict (or the loaded dict itself), or None (random init: tests only). Not used
            (and no trunk is built) when ``names`` is only ``"l1"``.
        reduction: ``"mean"`` (each loss a scalar: the batch mean) or ``"none"`` (``(B,)``).
        perceptual_layers: VGG16 ReLU outputs of the perceptual loss (``relu1_1`` ...
            ``relu5_3``); default relu1_2, relu2_2, relu3_3, relu4_3.
        perceptual_weights: per-layer weights (a sequence parallel to ``perceptual_layers`` or a
            mapping layer -> weight); default 1 each.
        perceptual_distance: ``"l1"`` (mean |Δφ|, default) or ``"mse"`` (mean Δφ²).
        lpips_eps: the LPIPS channel norm is ``sqrt(Σ_c f² + lpips_eps)``, where lpips uses
            ``sqrt(Σ_c f²) + 1e-10``. Both agree to ~``lpips_eps / (2|f|²)`` relative, far below
            1e-5 for any nonzero feature vector, but ours has finite gradients at zero-norm
            features (lpips's are NaN there).
        lpips_weights: path of an LPIPS ``vgg.pth`` lin-weights file; default the installed
            ``lpips`` package's ``weights/v0.1/vgg.pth``.
        use_triton: None (default): fused Triton kernels for CUDA tensors, torch for CPU ones;
            True forces the kernels (CUDA or the interpreter); False forces torch.

    Definitions, per sample, for images ``(B, 3, H, W)`` in [0, 1] (any float dtype; the loss
    math is fp32, the trunk runs in its own dtype, e.g. under autocast):

    * ``l1 = mean_{c,h,w} |pred - target|``;
    * ``perceptual = Σ_l w_l · mean_{c,h,w} |φ_l(pred) - φ_l(target)|`` on ImageNet-normalized
      inputs;
    * ``lpips = Σ_l mean_{h,w} Σ_c lin_{l,c} (φ̂_l(pred) - φ̂_l(target))²`` with unit-normalized
      features over relu1_2 ... relu5_3 — ``lpips.LPIPS(net="vgg")(pred, target, normalize=True)``
      given the same trunk.

    Call as ``losses(pred, target)`` where ``target`` is an image tensor (batch B or 1) or the
    :class:`EncodedTarget` from :meth:`encode`. The target is a constant: no gradient flows to it.
    A raw target costs one extra trunk pass (without autograd); an encoded one costs none.
    """

    def __init__(
        self,
        names: Sequence[str] | str = NAMES,
        weights: WeightsSpec = "DEFAULT",
        reduction: str = "mean",
        *,
        perceptual_layers: Sequence[str] = PERCEPTUAL_LAYERS,
        perceptual_weights: Sequence[float] | Mapping[str, float] | None = None,
        perceptual_distance: str = "l1",
        lpips_eps: float = LPIPS_EPS,
        lpips_weights: str | os.PathLike | None = None,
        use_triton: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        bad = [n for n in names if n not in NAMES]
        if bad or not names or len(set(names)) != len(names):
            raise ValueError(f"names must be distinct names from {NAMES}, got {names}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if perceptual_distance not in DISTANCES:
            raise ValueError(
                f"perceptual_distance must be one of {DISTANCES}, got {perceptual_distance!r}"
            )
        if not (isinstance(lpips_eps, (int, float)) and lpips_eps > 0):
            raise ValueError(f"lpips_eps must be a number > 0, got {lpips_eps!r}")
        if use_triton not in (None, True, False):
            raise TypeError(f"use_triton must be None, True or False, got {use_triton!r}")
        self.names = names
        self.reduction = reduction
        self.perceptual_distance = perceptual_distance
        self.lpips_eps = float(lpips_eps)
        self.use_triton = use_triton

        perc_w: dict[str, float] = {}
        if "perceptual" in names:
            layers = tuple(perceptual_layers)
            if isinstance(perceptual_layers, str) or not layers:
                raise ValueError(
                    f"perceptual_layers must be a non-empty sequence of layer names, "
                    f"got {perceptual_layers!r}"
                )
            if perceptual_weights is None:
                wts = [1.0] * len(layers)
            elif isinstance(perceptual_weights, Mapping):
                extra = [k for k in perceptual_weights if k not in layers]
                if extra:
                    raise ValueError(
                        f"perceptual_weights names layers {extra} not in perceptual_layers"
                    )
                wts = [float(perceptual_weights.get(k, 1.0)) for k in layers]
            else:
                wts = [float(v) for v in perceptual_weights]
                if len(wts) != len(layers):
                    raise ValueError(
                        f"perceptual_weights has {len(wts)} values for {len(layers)} "
                        "perceptual_layers"
                    )
            if len(set(layers)) != len(layers):
                raise ValueError(f"perceptual_layers has duplicates: {layers}")
            perc_w = dict(zip(layers, wts, strict=True))
        lpips_layers = LPIPS_LAYERS if "lpips" in names else ()

        self.trunk: VGG16Features | None = None
        self._levels: tuple[_Level, ...] = ()
        if perc_w or lpips_layers:
            self.trunk = VGG16Features(weights, tuple(perc_w) + tuple(lpips_layers))
            self._levels = tuple(
                _Level(layer, perc_w.get(layer, 0.0), layer in lpips_layers)
                for layer in self.trunk.layers
            )
        if lpips_layers:
            lins = load_lpips_lin_weights(lpips_weights)
            for layer, w in zip(LPIPS_LAYERS, lins, strict=True):
                self.register_buffer(f"lin_{layer}", w, persistent=False)
        # Smallest image side for which the deepest layer has at least one pixel.
        self.min_size = 2 ** max((LAYER_POOLS[lv.layer] for lv in self._levels), default=0)

    def extra_repr(self) -> str:
        return (
            f"names={self.names}, reduction={self.reduction!r}, "
            f"perceptual_distance={self.perceptual_distance!r}, lpips_eps={self.lpips_eps}"
        )

    # -- input checks -----------------------------------------------------------------------------

    def _check_image(self, x: object, argument: str) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"{argument} must be a tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] == 0:
            raise ValueError(f"{argument} must be (B, 3, H, W) with B >= 1, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{argument} must be a floating-point image in [0, 1], got {x.dtype}")
        if min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"{argument} is {x.shape[2]}x{x.shape[3]}; layer {self._levels[-1].layer} needs "
                f"images of at least {self.min_size}x{self.min_size}"
            )
        return x

    # -- public API -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, target: Tensor) -> EncodedTarget:
        """Compute ``target``'s trunk features once; pass the result as ``target`` to reuse them.

        ``target`` is ``(B, 3, H, W)`` in [0, 1]; it is detached.
        """
        self._check_image(target, "target")
        target = target.detach()
        feats = self.trunk(target) if self.trunk is not None else {}
        return EncodedTarget(image=target, features={k: v.detach() for k, v in feats.items()})

    def forward(self, pred: Tensor, target: Tensor | EncodedTarget) -> dict[str, Tensor]:
        """Dict ``name -> loss`` in ``names`` order: scalars (``reduction="mean"``) or ``(B,)``.

        ``pred`` is ``(B, 3, H, W)``; ``target`` a ``(B or 1, 3, H, W)`` image or an
        :class:`EncodedTarget` of one.
        """
        self._check_image(pred, "pred")
        if isinstance(target, EncodedTarget):
            enc = target
            missing = [lv.layer for lv in self._levels if lv.layer not in enc.features]
            if missing:
                raise ValueError(
                    f"target was encoded without layers {missing}; encode it with this ImageLosses"
                )
        elif isinstance(target, Tensor):
            enc = self.encode(target)
        else:
            raise TypeError(
                f"target must be an image tensor or an EncodedTarget, got {type(target).__name__}"
            )
        B = pred.shape[0]
        if enc.image.shape[1:] != pred.shape[1:] or enc.image.shape[0] not in (1, B):
            raise ValueError(
                f"target {tuple(enc.image.shape)} does not match pred {tuple(pred.shape)} (its "
                "batch may be 1 or the same as pred's)"
            )
        if enc.image.device != pred.device:
            raise ValueError(f"target is on {enc.image.device}, pred on {pred.device}")

        out: dict[str, Tensor] = {}
        if "l1" in self.names:
            ct = torch.promote_types(pred.dtype, torch.float32)
            out["l1"] = (pred.to(ct) - enc.image.to(ct)).abs().mean(dim=(1, 2, 3))
        if self.trunk is not None:
            use_triton = _resolve_use_triton(self.use_triton, pred.device)
            feats = self.trunk(pred)
            perc: Tensor | None = None
            lp: Tensor | None = None
            for lv in self._levels:
                s_perc, s_lp = self._level(lv, feats[lv.layer], enc, use_triton)
                _, C, h, w = feats[lv.layer].shape
                if s_perc is not None:
                    term = s_perc * (lv.perc_weight / (C * h * w))
                    perc = term if perc is None else perc + term
                if s_lp is not None:
                    term = s_lp / (h * w)
                    lp = term if lp is None else lp + term
            if "perceptual" in self.names:
                out["perceptual"] = perc
            if "lpips" in self.names:
                out["lpips"] = lp
        if self.reduction == "mean":
            out = {k: v.mean() for k, v in out.items()}
        return {k: out[k] for k in self.names}

    def _level(
        self, lv: _Level, fp: Tensor, enc: EncodedTarget, use_triton: bool
    ) -> tuple[Tensor | None, Tensor | None]:
        ft = enc.features[lv.layer]
        do_perc = lv.perc_weight != 0.0
        lin_w = getattr(self, f"lin_{lv.layer}") if lv.do_lpips else None
        mse = self.perceptual_distance == "mse"
        if use_triton:
            s_perc, s_lp = _FusedLevel.apply(
                fp, ft, lin_w, do_perc, lv.do_lpips, mse, self.lpips_eps
            )
            return (s_perc if do_perc else None), (s_lp if lv.do_lpips else None)
        tn = None
        if lv.do_lpips:
            key = (lv.layer, self.lpips_eps)
            tn = enc._neg_unit.get(key)
            if tn is None:
                tn = enc._neg_unit[key] = _neg_unit(ft, self.lpips_eps)
        return level_losses_torch(
            fp,
            ft,
            lin_w,
            do_perc=do_perc,
            do_lpips=lv.do_lpips,
            mse=mse,
            eps=self.lpips_eps,
            neg_target_unit=tn,
        )
