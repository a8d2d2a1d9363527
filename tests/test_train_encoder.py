"""examples/train_encoder.py: one process, two gloo processes under torchrun, and resume.

Each run is a subprocess with tiny settings (32 px images, 8 triangles, batch 2 per rank) and no
network (an empty TORCH_HOME: the VGG losses use ``--vgg-weights random`` or fall back to l1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "train_encoder.py"
TINY = ["--size", "32", "--grid", "2", "--batch-size", "2", "--synthetic-size", "16"]
TINY += ["--log-every", "1", "--seed", "3"]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TORCH_HOME"] = str(tmp_path / "torch_home")  # empty: no cached VGG weights
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _run(tmp_path: Path, args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, str(SCRIPT)]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd = [*launcher, "--nproc_per_node", str(nproc), str(SCRIPT)]
    proc = subprocess.run(
        [*cmd, *TINY, *args], env=_env(tmp_path), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_single_process_two_steps_offline(tmp_path):
    out = tmp_path / "run"
    proc = _run(tmp_path, ["--steps", "2", "--out", str(out)])
    # Default losses l1,perceptual,lpips; no weights offline: one line, then l1 only.
    notes = [line for line in proc.stdout.splitlines() if "VGG16" in line]
    assert len(notes) == 1 and "--vgg-weights DEFAULT" in notes[0]
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["losses"] == ["l1"]
    assert {"model", "optimizer", "scheduler", "balancer"} <= set(ckpt)
    recs = _records(out)
    assert [r["step"] for r in recs] == [1, 2]
    assert all("loss/l1" in r and "total" in r for r in recs)
    assert (out / "preview.png").is_file()


def _config(tmp_path: Path) -> Path:
    # A balancer with learnable state, so that a resume that forgot it would show.
    path = tmp_path / "uncertainty.yaml"
    path.write_text("loss:\n  type: uncertainty\n  form: kendall\n")
    return path


def _weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"rank{rank}_weights.pt", weights_only=True)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def test_two_gloo_processes_agree_and_resume(tmp_path):
    common = ["--losses", "l1,perceptual", "--vgg-weights", "random"]
    common += ["--config", str(_config(tmp_path)), "--save-rank-weights"]

    straight = tmp_path / "straight"
    proc = _run(tmp_path, [*common, "--steps", "4", "--out", str(straight)], nproc=2)
    assert "2 process(es) on cpu" in proc.stdout
    w0, w1 = _weights(straight, 0), _weights(straight, 1)
    assert _same(w0, w1)  # DDP kept the ranks identical
    initial = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert initial["step"] == 4
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in initial["balancer"].values())
    recs = _records(straight)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all("loss/perceptual" in r and "weight/l1" in r for r in recs)

    # Two steps (a run cut short), then resume to four: the same weights as the straight run.
    split = tmp_path / "split"
    _run(tmp_path, [*common, "--steps", "4", "--stop-after", "2", "--out", str(split)], nproc=2)
    assert torch.load(split / "checkpoint.pt", weights_only=False)["step"] == 2
    proc = _run(tmp_path, [*common, "--steps", "4", "--out", str(split), "--resume"], nproc=2)
    assert f"resumed from {split / 'checkpoint.pt'} at step 2" in proc.stdout
    resumed = torch.load(split / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == 4
    assert _same(_weights(split, 0), _weights(split, 1))
    assert _same(_weights(split, 0), w0, atol=1e-5)
    for key, value in initial["balancer"].items():
        assert torch.allclose(resumed["balancer"][key], value, atol=1e-5), key
    assert [r["step"] for r in _records(split)] == [1, 2, 3, 4]


def test_image_folder_data(tmp_path):
    from PIL import Image

    data = tmp_path / "photos" / "nested"
    data.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(40 + 8 * i, 48, 3, generator=rng) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(data / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (data / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    proc = _run(tmp_path, ["--data", str(tmp_path / "photos"), "--steps", "2", "--out", str(out)])
    assert "4 images (folder" in proc.stdout
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 2
