"""Loss stack forward + backward: tritri versus the seeds' naive composition.

tritri: ``ImageLosses(("l1", "perceptual", "lpips"))`` on an encoded (cached) target, one VGG16
pass over pred, fused per-level reductions, then ``GeometricMeanLoss``.
naive: a torchvision VGG16 perceptual loss with its own passes over pred and target, plus
``lpips.LPIPS(net="vgg")`` (two more passes), plus L1, plus a Python log-sum.

Both use the same random trunk (lpips's ``pnet_rand=True``; no download), so both compute the same
objective; the script checks that, then times the two interleaved (A, B, A, B, ...) and prints the
median of the per-pair ratios. Where the VGG convolutions dominate (a CPU), the ratio is bounded
by the trunk work: naive runs 4 forward + 2 backward passes, tritri 1 + 1, so at most
(4F + 2B) / (F + B), about 2.9 with this CPU's backward/forward cost ratio of ~1.25.
On CUDA, ``--bandwidth`` also times the fused level kernel against a device-to-device copy of the
same bytes.

    python perf/bench_losses.py                      # CPU, B=2, 128x128
    python perf/bench_losses.py --device cuda --batch 8 --size 256 --bandwidth
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

from tritri.losses.torchvision_compat import import_torchvision


class NaivePerceptual(torch.nn.Module):
    """The common torchvision recipe: ImageNet normalization, VGG16 slices to relu1_2, relu2_2,
    relu3_3, relu4_3, mean |Δφ| per slice, pred and target through the trunk separately."""

    def __init__(self, features: torch.nn.Sequential) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([features[0:4], features[4:9], features[9:16],
                                           features[16:23]])  # fmt: skip
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x, y):
        x = (x - self.mean) / self.std
        y = (y - self.mean) / self.std
        loss = 0.0
        for block in self.blocks:
            x, y = block(x), block(y)
            loss = loss + (x - y).abs().mean()
        return loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_stacks(batch: int, size: int, device: torch.device):
    """``(naive, fused, crit, encoded_target, pred, naive_objective, fused_objective)``.

    ``naive`` / ``fused`` are zero-argument callables that each run one forward + backward of the
    same objective on the same ``(batch, 3, size, size)`` pair and return ``(total, grad wrt
    pred)``; the ``*_objective(pred) -> total`` functions are the objectives themselves against
    the fixed target (for the training-step benchmark)."""
    import_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import lpips

        torch.manual_seed(0)
        lp = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).to(device).eval()
    state = {}
    for s in range(1, 6):
        for key, value in getattr(lp.net, f"slice{s}").state_dict().items():
            state[f"features.{key}"] = value.detach().cpu().clone()
    tv = import_torchvision()
    vgg = tv.models.vgg16(weights=None).features
    vgg.load_state_dict({k[len("features.") :]: v for k, v in state.items()}, strict=False)
    perc = NaivePerceptual(vgg).to(device).eval()

    from tritri.losses import GeometricMeanLoss, ImageLosses

    crit = ImageLosses(("l1", "perceptual", "lpips"), weights=state).to(device)
    geo = GeometricMeanLoss()
    eps = 1e-8

    g = torch.Generator().manual_seed(1)
    shape = (batch, 3, size, size)
    target = torch.rand(shape, generator=g).to(device)
    pred0 = torch.rand(shape, generator=g).to(device)
    enc = crit.encode(target)

    def naive_objective(pred):
        losses = [
            (pred - target).abs().mean(),
            perc(pred, target),
            lp(pred, target, normalize=True).mean(),
        ]
        total = sum(torch.log(v + eps) for v in losses)
        return total + sum(0.01 * (1e-4 - v) ** 2 for v in losses if v.item() < 1e-4)

    def fused_objective(pred):
        return geo(crit(pred, enc))

    def step(objective):
        def run():
            pred = pred0.clone().requires_grad_()
            total = objective(pred)
            total.backward()
            return total.detach(), pred.grad

        return run

    return (step(naive_objective), step(fused_objective), crit, enc, pred0, naive_objective,
            fused_objective)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iters", type=int, default=15, help="timed pairs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--bandwidth", action="store_true", help="CUDA: fused level kernel vs copy")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    naive, fused, crit, enc, pred0, *_ = build_stacks(args.batch, args.size, device)

    t_naive, g_naive = naive()
    t_fused, g_fused = fused()
    rel = abs(float(t_naive) - float(t_fused)) / abs(float(t_naive))
    # Norm-wise: in fp32 a near-tie in a max-pool window can route one pixel's gradient
    # differently in the two stacks, so single entries may differ while the field agrees.
    grel = float((g_naive - g_fused).norm() / g_naive.norm())
    print(f"objective: naive {float(t_naive):.6f}  tritri {float(t_fused):.6f}  (rel {rel:.1e}); "
          f"grad rel diff {grel:.1e} (norm)")  # fmt: skip
    assert rel < 1e-4 and grel < 1e-2, "the two stacks do not compute the same objective"

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        timed(naive)
        timed(fused)
    tn, tf, ratios = [], [], []
    for i in range(args.iters):
        order = (("naive", naive), ("fused", fused))
        times = {name: timed(fn) for name, fn in (order if i % 2 == 0 else order[::-1])}
        tn.append(times["naive"])
        tf.append(times["fused"])
        ratios.append(times["naive"] / times["fused"])
    print(f"device {device} ({torch.get_num_threads()} threads), B={args.batch}, "
          f"{args.size}x{args.size}, {args.iters} interleaved pairs")  # fmt: skip
    print(f"naive  median {statistics.median(tn) * 1e3:8.1f} ms")
    print(f"tritri median {statistics.median(tf) * 1e3:8.1f} ms")
    print(f"median ratio naive/tritri: {statistics.median(ratios):.2f}x")

    if args.bandwidth:
        if device.type != "cuda":
            print("--bandwidth needs --device cuda")
            return 0
        from tritri.kernels.loss_levels import level_losses_backward, level_losses_forward

        feats = crit.trunk(pred0)
        w = crit.lin_relu1_2
        f, t = feats["relu1_2"].detach(), enc.features["relu1_2"]
        n_bytes = f.numel() * f.element_size()
        ones = torch.ones(f.shape[0], device=device)

        def bench(fn, n=50):
            fn()
            start, end = torch.cuda.Event(True), torch.cuda.Event(True)
            _sync(device)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            _sync(device)
            return start.elapsed_time(end) / n * 1e-3

        dst = torch.empty_like(f)
        t_copy = bench(lambda: dst.copy_(f))  # reads n_bytes, writes n_bytes
        t_fwd = bench(lambda: level_losses_forward(f, t, w))  # reads 2 * n_bytes
        t_bwd = bench(lambda: level_losses_backward(f, t, w, ones, ones))  # reads 2, writes 1
        copy_bw = 2 * n_bytes / t_copy
        print(f"relu1_2 {tuple(f.shape)}: copy {copy_bw / 1e9:.0f} GB/s; "
              f"fused fwd {2 * n_bytes / t_fwd / 1e9:.0f} GB/s "
              f"({2 * n_bytes / t_fwd / copy_bw:.0%} of copy); "
              f"fused bwd {3 * n_bytes / t_bwd / 1e9:.0f} GB/s "
              f"({3 * n_bytes / t_bwd / copy_bw:.0%} of copy)")  # fmt: skip
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
