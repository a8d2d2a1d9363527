"""ImageLosses against the independent implementations: the lpips package and torchvision's VGG16.

Both references run in float64 on the same (random) trunk weights, so the comparison measures our
fp32 computation, not a shared mistake. No weights are downloaded: lpips is built with
``pnet_rand=True`` (its lin weights ship inside the package) and torchvision with ``weights=None``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from devices import triton_device

from tritri.losses import ImageLosses
from tritri.losses.torchvision_compat import import_torchvision


@pytest.fixture(scope="module")
def tv():
    return import_torchvision()


@pytest.fixture(scope="module")
def lpips_ref(tv):
    """lpips.LPIPS(net='vgg') with a random trunk, in float64, plus its trunk as a torchvision
    state dict (fp32)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lpips

        torch.manual_seed(0)
        model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
    state = {}
    for s in range(1, 6):
        for key, value in getattr(model.net, f"slice{s}").state_dict().items():
            state[f"features.{key}"] = value.detach().clone().float()
    return model.double().eval(), state


@pytest.fixture(scope="module")
def tv_vgg(tv):
    """A torchvision VGG16 (random init), float64 features, and its fp32 full state dict."""
    torch.manual_seed(1)
    model = tv.models.vgg16(weights=None)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model.features.double().eval(), state


def _images(batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.rand(batch, 3, size, size, generator=g)
    target = torch.rand(batch, 3, size, size, generator=g)
    return pred, target


def _assert_grad_close(got, ref, rtol=1e-4):
    """Gradient to ``rtol`` relative (scaled by the gradient's largest entry)."""
    scale = ref.abs().max().item()
    assert scale > 0
    err = (got.double() - ref).abs().max().item() / scale
    assert err < rtol, f"gradient relative error {err:.3g}"


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_lpips_parity_torch_path(lpips_ref, reduction):
    model, state = lpips_ref
    crit = ImageLosses(("lpips",), weights=state, reduction=reduction, use_triton=False)
    pred, target = _images(batch=2, size=32)
    ref = model(pred.double(), target.double(), normalize=True).reshape(-1)
    if reduction == "mean":
        ref = ref.mean()
    x = pred.clone().requires_grad_()
    value = crit(x, target)["lpips"]
    assert value.shape == ref.shape
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=0)
    xr = pred.double().requires_grad_()
    (g_ref,) = torch.autograd.grad(model(xr, target.double(), normalize=True).sum(), xr)
    (g,) = torch.autograd.grad(value.sum(), x)
    if reduction == "mean":
        g = g * pred.shape[0]
    _assert_grad_close(g, g_ref)


def test_lpips_parity_weights_from_file_and_encoded_target(lpips_ref, tmp_path):
    """A torchvision-format state dict on disk; the target encoded once; a 48x48 batch of 3."""
    model, state = lpips_ref
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    crit = ImageLosses(("l1", "lpips"), weights=str(path), reduction="none", use_triton=False)
    pred, target = _images(batch=3, size=48, seed=3)
    enc = crit.encode(target)
    x = pred.clone().requires_grad_()
    out = crit(x, enc)
    ref = model(pred.double(), target.double(), normalize=True).reshape(-1)
    torch.testing.assert_close(out["lpips"].double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(out["l1"], (pred - target).abs().mean(dim=(1, 2, 3)))
    xr = pred.double().requires_grad_()
    (g_ref,) = torch.autograd.grad(model(xr, target.double(), normalize=True).sum(), xr)
    (g,) = torch.autograd.grad(out["lpips"].sum(), x)
    _assert_grad_close(g, g_ref)


@pytest.mark.triton
def test_lpips_parity_triton_path(lpips_ref):
    """The fused level kernels (CUDA, or the interpreter on CPU) through the whole loss: the lpips
    value against the lpips package, both terms and the gradient against the torch path (the same
    fp32 trunk; the torch path's gradient is held to the lpips package's in the test above).

    Not the gradient against the package directly: this input (seed 5) sits on a kink of the
    trunk (a ReLU at 0 or a max-pool tie), where fp32 trunks may route the gradient differently
    from the fp64 one -- 1.6% of the largest entry, the same for the torch and the fused path,
    gone when the input moves by 1e-5."""
    model, state = lpips_ref
    device = triton_device()
    crit = ImageLosses(("perceptual", "lpips"), weights=state, reduction="none", use_triton=True)
    crit = crit.to(device)
    pred, target = _images(batch=2, size=32, seed=5)
    x = pred.clone().to(device).requires_grad_()
    out = crit(x, target.to(device))
    ref = model(pred.double(), target.double(), normalize=True).reshape(-1)
    torch.testing.assert_close(out["lpips"].cpu().double(), ref, rtol=1e-5, atol=0)
    weights = torch.tensor([0.7, -1.3])  # the two terms, each sample weighted differently
    (g,) = torch.autograd.grad((out["lpips"] + out["perceptual"]).cpu().mul(weights).sum(), x)
    plain = ImageLosses(("perceptual", "lpips"), weights=state, reduction="none", use_triton=False)
    xt = pred.clone().requires_grad_()
    torch_out = plain(xt, target)
    (g_torch,) = torch.autograd.grad((torch_out["lpips"] + torch_out["perceptual"]).mul(weights)
                                     .sum(), xt)  # fmt: skip
    for term in ("perceptual", "lpips"):
        torch.testing.assert_close(out[term].cpu(), torch_out[term], rtol=1e-5, atol=0)
    _assert_grad_close(g.cpu(), g_torch.double(), rtol=1e-5)


def _tv_perceptual(features, pred, target, layers, weights, distance):
    """The usual torchvision recipe: ImageNet-normalize, run slices, mean |Δφ| per layer."""
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    ends = {"relu1_2": 4, "relu2_1": 7, "relu2_2": 9, "relu3_3": 16, "relu4_3": 23, "relu5_3": 30}
    x = (pred.double() - mean) / std
    y = (target.double() - mean) / std
    total = 0.0
    start = 0
    for layer, w in zip(layers, weights, strict=True):
        block = features[start : ends[layer]]
        x, y = block(x), block(y)
        start = ends[layer]
        d = x - y
        dist = d.abs() if distance == "l1" else d * d
        total = total + w * dist.mean(dim=(1, 2, 3))
    return total


@pytest.mark.parametrize(
    "layers,weights,distance",
    [
        (("relu1_2", "relu2_2", "relu3_3", "relu4_3"), None, "l1"),
        (("relu2_1", "relu3_3", "relu5_3"), (0.5, 2.0, 0.25), "mse"),
    ],
)
def test_perceptual_matches_torchvision(tv_vgg, layers, weights, distance):
    features, state = tv_vgg
    crit = ImageLosses(
        ("perceptual",),
        weights=state,
        reduction="none",
        perceptual_layers=layers,
        perceptual_weights=weights,
        perceptual_distance=distance,
        use_triton=False,
    )
    pred, target = _images(batch=2, size=32, seed=7)
    w = weights or (1.0,) * len(layers)
    ref = _tv_perceptual(features, pred, target, layers, w, distance)
    x = pred.clone().requires_grad_()
    value = crit(x, target)["perceptual"]
    torch.testing.assert_close(value.double(), ref, rtol=1e-5, atol=0)
    xr = pred.double().requires_grad_()
    (g_ref,) = torch.autograd.grad(
        _tv_perceptual(features, xr, target, layers, w, distance).sum(), xr
    )
    (g,) = torch.autograd.grad(value.sum(), x)
    _assert_grad_close(g, g_ref)
