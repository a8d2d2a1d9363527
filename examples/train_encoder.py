"""Train a CNN encoder that predicts N triangles from an image, through ``tritri.render``.

The encoder maps an image to N triangles (positions, flat colors, opacities) plus a background
color; tritri renders them, ``tritri.losses.ImageLosses`` compares the render with the input and a
balancer built from a YAML config (``examples/config_geometric.yaml``: the geometric mean of the
losses) turns the losses into one objective. Everything is differentiable, so the encoder learns
to "draw" its input with triangles.

Runs as is on one CPU, one GPU, or many GPUs / processes:

    python examples/train_encoder.py --out runs/enc                    # one process
    torchrun --nproc_per_node 2 examples/train_encoder.py --out runs/enc   # DDP (gloo on CPU)
    torchrun --nproc_per_node 8 examples/train_encoder.py --data photos/ --out runs/enc  # 8 GPUs
    python examples/train_encoder.py --out runs/enc --resume            # continue a run

- Data: ``--data DIR`` (every image below DIR, center-cropped and resized to ``--size``) or, by
  default, a built-in synthetic set (images that are themselves renders of random triangles).
- Distributed: under ``torchrun`` the model is wrapped in DistributedDataParallel (NCCL on GPUs,
  gloo on CPUs), each rank reads its shard through a DistributedSampler, and ``--batch-size`` is
  per rank. The balancer sees the losses averaged over all ranks (one all-reduce of K numbers a
  step), so every rank computes the same weights and the run is the data-parallel version of the
  single-process objective; its learnable parameters, if any, have their gradients averaged too.
- Rank 0 logs (stdout and ``OUT/metrics.jsonl`` through ``tritri.losses.LossMonitor``, whose
  warnings it prints), writes ``OUT/preview.png`` (inputs over renders) and the checkpoint
  ``OUT/checkpoint.pt`` (model, optimizer, balancer state, step), atomically.
- ``--resume`` continues from ``OUT/checkpoint.pt`` (or ``--resume PATH``), including the
  balancer's state and the lr schedule, at the step it stopped (mid-epoch too: the sampler's order
  is a function of the seed and the epoch). ``--stop-after K`` ends a run after K steps with a
  checkpoint, for jobs with a time limit.
- VGG losses (perceptual, lpips) need pretrained VGG16 weights. ``--vgg-weights auto`` (default)
  uses torchvision's cached copy if there is one and otherwise falls back to l1 alone, saying so;
  ``--vgg-weights DEFAULT`` downloads them, ``--vgg-weights PATH`` reads a file and
  ``--vgg-weights random`` uses a random trunk (plumbing tests only).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

import tritri
from tritri.losses import ImageLosses, LossMonitor, build_balancer

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VGG_LOSSES = ("perceptual", "lpips")


# ---------------------------------------------------------------------------------------- data --


class ImageFolder(Dataset):
    """Every image file below ``root``, center-cropped to a square and resized to ``size``."""

    def __init__(self, root: str | os.PathLike[str], size: int) -> None:
        self.files = sorted(
            p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise FileNotFoundError(f"--data {root}: no image files ({sorted(IMAGE_SUFFIXES)})")
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.files[i]) as im:
            im = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), (self.size, self.size))
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


class SyntheticTriangles(Dataset):
    """Deterministic synthetic images: ``n_triangles`` random triangles over a random background.

    Item ``i`` is always the same image (its own seed), so every rank and every epoch agree.
    """

    def __init__(self, length: int, size: int, n_triangles: int = 6, seed: int = 0) -> None:
        self.length, self.size, self.n, self.seed = length, size, n_triangles, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        n = self.n
        centers = torch.rand(n, 1, 2, generator=g) * 0.8 + 0.1
        verts = centers + (torch.rand(n, 3, 2, generator=g) - 0.5) * 0.7
        colors = torch.rand(n, 3, generator=g)
        opacity = 0.6 + 0.4 * torch.rand(n, generator=g)
        background = torch.rand(3, generator=g)
        with torch.no_grad():
            image = tritri.render(
                verts, colors, opacity, height=self.size, width=self.size, sigma=0.7,
                background=background, backend="torch",
            )  # fmt: skip
        return image.clamp(0, 1)


# --------------------------------------------------------------------------------------- model --


class TriangleEncoder(nn.Module):
    """A small CNN: image ``(B, 3, S, S)`` -> ``2·grid²`` triangles and a background color.

    The image is cut into a ``grid x grid`` array of cells; each cell owns two triangles, which
    start as the two halves of the cell (a little enlarged, so neighbours overlap) and may move up
    to 1.5 cells away. Per cell, a convolutional head reads the features of that cell and predicts
    the vertex offsets, a color correction on top of the cell's mean input color (a strong prior:
    the untrained model already draws a blocky mosaic of its input) and the opacity. The background
    comes from the globally pooled features. Conv features + a per-cell head is what lets the
    triangles follow edges; a head on one global vector has to learn where everything is.
    """

    def __init__(self, grid: int = 8, width: int = 32) -> None:
        super().__init__()
        self.grid = grid
        chans = [3, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                nn.GroupNorm(8, c_out),
                nn.SiLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1),
                nn.GroupNorm(8, c_out),
                nn.SiLU(),
            ]
        self.backbone = nn.Sequential(*layers)
        c = chans[-1]
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, 2 * 10, 1))
        self.background = nn.Linear(c, 3)
        last = self.head[-1]
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(last.bias)
        # Base triangles: cell (i, j) = [j, j+1] x [i, i+1] / grid, enlarged by 10 %, split on a
        # diagonal: (top-left, top-right, bottom-left), (top-right, bottom-right, bottom-left).
        i, j = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        corners = torch.tensor([[[-1, -1], [1, -1], [-1, 1]], [[1, -1], [1, 1], [-1, 1]]]) * 0.55
        center = torch.stack([j + 0.5, i + 0.5], dim=-1).reshape(grid * grid, 1, 1, 2)
        base = (center + corners[None]) / grid  # (cells, 2, 3, 2)
        self.register_buffer("base", base.reshape(-1, 3, 2).float(), persistent=False)

    @property
    def n_triangles(self) -> int:
        return 2 * self.grid * self.grid

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(verts (B, N, 3, 2), colors (B, N, 3), opacity (B, N), background (B, 3))``."""
        B, g = images.shape[0], self.grid
        feats = self.backbone(images)
        out = self.head(F.adaptive_avg_pool2d(feats, g))  # (B, 20, g, g)
        out = out.permute(0, 2, 3, 1).reshape(B, g * g * 2, 10)
        verts = self.base + (1.5 / g) * torch.tanh(out[..., :6]).reshape(B, -1, 3, 2)
        mean = F.adaptive_avg_pool2d(images, g).permute(0, 2, 3, 1).reshape(B, g * g, 1, 3)
        prior = torch.logit(mean.clamp(0.02, 0.98)).expand(B, g * g, 2, 3).reshape(B, -1, 3)
        colors = torch.sigmoid(prior + out[..., 6:9])
        opacity = torch.sigmoid(out[..., 9] + 2.0)
        background = torch.sigmoid(self.background(feats.mean(dim=(2, 3))))
        return verts, colors, opacity, background


# --------------------------------------------------------------------------------- distributed --


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    """Initialize torch.distributed under torchrun (NCCL on GPUs, gloo on CPUs).

    Returns ``(rank, world_size, device)``; without torchrun's environment, ``(0, 1, device)``.
    """
    if device_arg == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device_arg).type == "cuda"
        if use_cuda and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available on this machine")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device(
            device_arg if device_arg != "auto" else ("cuda" if use_cuda else "cpu")
        )
        return 0, 1, device
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def global_mean(losses: dict[str, Tensor], world: int) -> dict[str, Tensor]:
    """Each loss with its value replaced by the mean over ranks; the gradient stays the local one.

    ``l + (mean_r l_r - l).detach()`` has the global value and the local gradient, so every rank's
    balancer sees the same numbers while DDP averages the local gradients.
    """
    if world == 1:
        return losses
    names = list(losses)
    values = torch.stack([losses[n].detach().float() for n in names])
    dist.all_reduce(values)
    values /= world
    return {
        n: losses[n] + (values[i].to(losses[n].dtype) - losses[n].detach())
        for i, n in enumerate(names)
    }


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """All-reduce (mean) the gradients of parameters DDP does not own (the balancer's)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


# ------------------------------------------------------------------------------------- helpers --


def resolve_losses(names: tuple[str, ...], spec: str, log) -> tuple[tuple[str, ...], Any]:
    """The losses to train with and the VGG weights to build them with (see --vgg-weights)."""
    if not any(n in VGG_LOSSES for n in names):
        return names, None
    if spec == "random":
        log("VGG trunk: random weights (--vgg-weights random: for plumbing tests only)")
        return names, None
    if spec == "DEFAULT":
        return names, "DEFAULT"
    if spec != "auto":
        if not Path(spec).is_file():
            raise SystemExit(f"--vgg-weights: no such file: {spec!r}")
        return names, spec
    from tritri.losses.vgg import VGG16_URL

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(VGG16_URL)
    if cached.is_file():
        return names, str(cached)
    kept = tuple(n for n in names if n not in VGG_LOSSES) or ("l1",)
    log(
        f"pretrained VGG16 weights are not available offline, so training with {','.join(kept)} "
        "only; --vgg-weights DEFAULT downloads them and trains the full objective "
        "(--vgg-weights random: a random trunk, for tests)"
    )
    return kept, None


def save_preview(images: Tensor, renders: Tensor, path: Path, k: int = 8) -> None:
    """Inputs (top row) over their renders (bottom row) as one PNG."""
    k = min(k, images.shape[0])
    top = torch.cat(list(images[:k]), dim=2)
    bottom = torch.cat(list(renders[:k].detach().float().clamp(0, 1)), dim=2)
    grid = torch.cat([top, bottom], dim=1).permute(1, 2, 0).cpu().numpy()
    Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(path)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a half checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="image folder (default: built-in synthetic set)")
    p.add_argument("--synthetic-size", type=int, default=2048, help="synthetic set length")
    p.add_argument("--size", type=int, default=64, help="training image side, in pixels")
    p.add_argument(
        "--grid", type=int, default=8, help="grid x grid cells of 2 triangles: N = 2 grid^2"
    )
    p.add_argument("--batch-size", type=int, default=16, help="images per rank and step")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps in total")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--losses", default="l1,perceptual,lpips", help="comma-separated ImageLosses")
    p.add_argument(
        "--vgg-weights", default="auto", metavar="auto|DEFAULT|PATH|random",
        help="VGG16 weights for perceptual/lpips (see the module docstring)",
    )  # fmt: skip
    p.add_argument(
        "--config", default=str(HERE / "config_geometric.yaml"), help="balancer YAML config"
    )
    p.add_argument("--sigma", type=float, default=0.5, help="render edge softness, in pixels")
    p.add_argument("--out", required=True, help="run directory (checkpoint, metrics, preview)")
    p.add_argument(
        "--resume", nargs="?", const="auto", default=None, metavar="PATH",
        help="continue from PATH (default: OUT/checkpoint.pt)",
    )  # fmt: skip
    p.add_argument(
        "--stop-after", type=int, default=None, metavar="K",
        help="end this run after K steps, with a checkpoint (to fit a job's time limit); the "
        "schedule still spans --steps, and --resume continues",
    )  # fmt: skip
    p.add_argument("--log-every", type=int, default=10, help="log every this many steps")
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint every this many steps")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--save-rank-weights", action="store_true",
        help="every rank writes OUT/rank<r>_weights.pt at the end (to check they agree)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.steps < 0 or args.size < 16 or args.grid < 1 or args.batch_size < 1:
        p.error("need --steps >= 0, --size >= 16, --grid >= 1, --batch-size >= 1")
    return args


# ---------------------------------------------------------------------------------------- main --


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args.device)
    is_main = rank == 0

    def log(message: str) -> None:
        if is_main:
            print(f"[train_encoder] {message}", flush=True)

    torch.manual_seed(args.seed)
    out = Path(args.out)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)

    names = tuple(n.strip() for n in args.losses.split(",") if n.strip())
    names, weights = resolve_losses(names, args.vgg_weights, log)
    criterion = ImageLosses(names, weights=weights).to(device)
    balancer = build_balancer(args.config, names=list(names)).to(device)
    model = TriangleEncoder(args.grid).to(device)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    balancer_params = [p for p in balancer.parameters() if p.requires_grad]
    groups = [{"params": model.parameters()}]
    if balancer_params:
        groups.append({"params": balancer_params, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / 100)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps))))
        ),
    )

    if args.data:
        dataset: Dataset = ImageFolder(args.data, args.size)
    else:
        dataset = SyntheticTriangles(args.synthetic_size, args.size, seed=args.seed)
    if len(dataset) < args.batch_size * world:
        raise SystemExit(
            f"the data set has {len(dataset)} images; one step needs {args.batch_size * world}"
        )
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
        drop_last=True, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )  # fmt: skip
    steps_per_epoch = len(loader)

    step = 0
    if args.resume is not None:
        path = out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        if not path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {path}")
        ckpt = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        balancer.load_state_dict(ckpt["balancer"])
        step = int(ckpt["step"])
        log(f"resumed from {path} at step {step}")

    monitor = LossMonitor(out / "metrics.jsonl", warn=False) if is_main else None
    n_events = 0
    log(
        f"{world} process(es) on {device}, {len(dataset)} images "
        f"({'folder ' + args.data if args.data else 'synthetic'}), {model.n_triangles} triangles, "
        f"losses {','.join(names)}, balancer {type(balancer).__name__}, "
        f"steps {step} -> {args.steps}"
    )

    def checkpoint() -> None:
        if is_main:
            save_checkpoint(
                out / "checkpoint.pt",
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "balancer": balancer.state_dict(),
                    "step": step,
                    "args": vars(args),
                    "losses": list(names),
                },
            )

    end = args.steps if args.stop_after is None else min(args.steps, step + args.stop_after)
    start = time.perf_counter()
    ddp_model.train()
    images = renders = None
    while step < end:
        epoch, skip = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        for i, images in enumerate(loader):
            if i < skip:
                continue  # resuming mid-epoch: these batches were seen before the checkpoint
            images = images.to(device, non_blocking=True)
            verts, colors, opacity, background = ddp_model(images)
            renders = tritri.render(
                verts, colors, opacity, height=args.size, width=args.size, sigma=args.sigma,
                background=background,
            )  # fmt: skip
            losses = global_mean(criterion(renders, images), world)
            total = balancer(losses, step=step, epoch=step / steps_per_epoch, shared=renders)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            average_gradients(balancer_params, world)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if is_main and (step % args.log_every == 0 or step == end or step == 1):
                stats = dict(balancer.stats)
                record = monitor.log(
                    stats, step, image=renders.detach(), lr=scheduler.get_last_lr()[0]
                )
                for event in monitor.events[n_events:]:
                    print(
                        f"[train_encoder] warning: step {event['step']}: {event['message']}",
                        flush=True,
                    )
                n_events = len(monitor.events)
                shown = " ".join(
                    f"{k[5:]}={v:.4g}" for k, v in stats.items() if k.startswith("loss/")
                )
                rate = step / max(1e-9, time.perf_counter() - start)
                log(
                    f"step {step}/{args.steps} total={record.get('total', float('nan')):.4g} "
                    f"{shown} ({rate:.2f} steps/s)"
                )
            if step % args.ckpt_every == 0 or step == end:
                checkpoint()
                if is_main:
                    save_preview(images, renders, out / "preview.png")
            if step >= end:
                break

    if monitor is not None:
        monitor.close()
    if args.save_rank_weights:
        torch.save(
            {k: v.detach().cpu() for k, v in model.state_dict().items()},
            out / f"rank{rank}_weights.pt",
        )
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    log(f"done: step {step}; checkpoint {out / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
