"""Memory of the tiled torch backend grows with (tile, triangle) pairs, not with N·H·W."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, resource, torch, tritri
torch.manual_seed(0)
B, N, H, W = 2, 4000, 512, 512
center = torch.rand(B, N, 1, 2)
verts = (center + (torch.rand(B, N, 3, 2) - 0.5) * 0.03).requires_grad_()  # ~15 px triangles
colors = torch.rand(B, N, 3, requires_grad=True)
opacity = torch.rand(B, N, requires_grad=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
img = tritri.render(verts, colors, opacity, height=H, width=W, backend="torch")
img.mean().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ok = bool(torch.isfinite(verts.grad).all()) and verts.grad.abs().sum().item() > 0
print(json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024, "grads_ok": ok}))
"""


def test_torch_backend_memory_512px_4000_triangles():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=600, check=True).stdout  # fmt: skip
    result = json.loads(out.strip().splitlines()[-1])
    growth_mib = result["peak_mib"] - result["base_mib"]
    dense_mib = 2 * 4000 * 512 * 512 * 4 / 2**20  # one fp32 N·H·W intermediate: 8000 MiB
    print(f"peak RSS growth {growth_mib:.0f} MiB vs {dense_mib:.0f} MiB for one N·H·W tensor")
    assert result["grads_ok"]
    assert growth_mib < 1024, growth_mib
    assert growth_mib < dense_mib / 8
