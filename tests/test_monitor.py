"""LossMonitor: JSON lines, each warning sign on a synthetic sequence, quiet on a healthy run;
``tritri plot`` writes a PNG."""

from __future__ import annotations

import json
import math
import random
import warnings
from pathlib import Path

import pytest
import torch

from tritri.losses.monitor import LossMonitor, TritriLossWarning, per_loss_grad_norms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def geometric_stats(l1: float, lpips: float, reg: float = 0.0, eps: float = 1e-8) -> dict:
    logs = {"l1": math.log(l1 + eps), "lpips": math.log(lpips + eps)}
    return {
        "total": sum(logs.values()) + reg,
        "regularization": reg,
        "loss/l1": l1,
        "loss/lpips": lpips,
        "weight/l1": 1 / (l1 + eps),
        "weight/lpips": 1 / (lpips + eps),
        "log/l1": logs["l1"],
        "log/lpips": logs["lpips"],
    }


def healthy_sequence(steps: int = 400, seed: int = 0):
    """Two losses decaying 20x over the run with 3% multiplicative noise."""
    rng = random.Random(seed)
    for t in range(steps):
        decay = math.exp(-3.0 * t / steps)
        l1 = 0.3 * decay * (1 + 0.03 * rng.gauss(0, 1))
        lpips = 0.6 * decay**0.7 * (1 + 0.03 * rng.gauss(0, 1))
        yield t, geometric_stats(l1, lpips, reg=0.0)


def textured(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 16, 16, generator=g)


def run(monitor: LossMonitor, sequence, image_fn=None) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t, stats in sequence:
            monitor.log(stats, t, image=image_fn(t) if image_fn else None)
    return [w for w in caught if issubclass(w.category, TritriLossWarning)]


def kinds(monitor: LossMonitor, kind: str | None = None) -> list[tuple[int, str, str]]:
    return [
        (e["step"], e["kind"], e["name"])
        for e in monitor.events
        if kind is None or e["kind"] == kind
    ]


def test_quiet_on_a_healthy_run_and_writes_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with LossMonitor(path) as monitor:
        caught = run(monitor, healthy_sequence(), image_fn=lambda t: textured(t))
    assert caught == [] and monitor.events == []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 400
    assert records[5]["step"] == 5 and records[5]["warnings"] == []
    assert {"total", "loss/l1", "log/lpips", "weight/l1", "regularization", "image_std"} <= set(
        records[0]
    )
    assert records[0]["image_std"] > 0.2


def test_log_loss_heading_to_minus_infinity_warns_once_per_episode() -> None:
    monitor = LossMonitor()
    seq = []
    for t in range(300):
        # lpips falls to 1e-9 around t = 100, stays there, recovers at t = 200, falls again at 250
        if t < 80:
            lpips = 0.5
        elif t < 200:
            lpips = max(1e-9, 0.5 * 10 ** (-(t - 80) / 2))
        elif t < 250:
            lpips = 0.5
        else:
            lpips = 1e-9
        seq.append((t, geometric_stats(0.3, lpips)))
    caught = [w for w in run(monitor, seq) if "log-loss" in str(w.message)]
    events = kinds(monitor, "log_to_minus_inf")
    assert [e[1:] for e in events] == [("log_to_minus_inf", "lpips")] * 2
    first, second = events[0][0], events[1][0]
    assert 80 < first < 90  # caught by the fast drop, before the floor
    assert second == 250
    assert len(caught) == 2 and "'lpips'" in str(caught[0].message)
    assert "step 250" in str(caught[1].message)


def test_log_loss_below_the_floor_and_derived_from_plain_losses() -> None:
    monitor = LossMonitor()
    stats = {"total": 1.0, "loss/a": 1e-7, "weight/a": 1.0}  # no log/ keys: log(loss) is used
    caught = run(monitor, [(0, stats), (1, stats)])
    assert len(caught) == 1 and kinds(monitor) == [(0, "log_to_minus_inf", "a")]
    caught = run(monitor, [(2, {"total": 1.0, "loss/a": 0.0, "weight/a": 1.0})])
    assert caught == []  # still the same episode


def test_regularization_dominating_the_total_warns() -> None:
    monitor = LossMonitor()
    seq = []
    for t in range(60):
        reg = 0.0 if t < 30 else 0.5 * (t - 29)  # data part |log 0.3| + |log 0.6| = 1.71
        seq.append((t, geometric_stats(0.3, 0.6, reg=reg)))
    caught = [w for w in run(monitor, seq) if "dominates" in str(w.message)]
    assert kinds(monitor, "regularization_dominates") == [(33, "regularization_dominates", "")]
    assert len(caught) == 1 and "regularization (2) dominates" in str(caught[0].message)
    # the step up of the total at t = 30 after a flat start is itself a sudden jump
    assert kinds(monitor, "total_jump") == [(30, "total_jump", "")]


def test_sudden_jump_in_the_total_warns_and_rearms() -> None:
    monitor = LossMonitor()
    seq = list(healthy_sequence(200, seed=1))
    for t in (120, 160):
        jumped = dict(seq[t][1])
        jumped["total"] += 3.0
        seq[t] = (t, jumped)
    caught = run(monitor, seq)
    assert kinds(monitor) == [(120, "total_jump", ""), (160, "total_jump", "")]
    assert len(caught) == 2 and "sudden jump" in str(caught[0].message)
    monitor2 = LossMonitor()
    run(monitor2, [(0, {"total": 1.0}), (1, {"total": float("nan")})])
    assert kinds(monitor2) == [(1, "total_jump", "")]
    # float noise on a flat curve is not a jump
    flat = [(t, {"total": 2.0 + (1e-7 if t == 30 else 0.0)}) for t in range(40)]
    assert run(LossMonitor(), flat) == []


def test_a_declared_discontinuity_is_not_a_jump() -> None:
    """A step logged with ``discontinuity=`` (the caller changed the objective on purpose) is not
    checked against the previous total and does not enter the history; the next real jump still
    warns, and the record says why."""
    seq = list(healthy_sequence(200, seed=1))
    for t in (120, 160):
        jumped = dict(seq[t][1])
        jumped["total"] += 3.0
        seq[t] = (t, jumped)
    monitor = LossMonitor(warn=False)
    records = [
        monitor.log(stats, t, discontinuity="pruned" if t == 120 else None) for t, stats in seq
    ]
    assert kinds(monitor) == [(160, "total_jump", "")]
    assert records[120]["discontinuity"] == "pruned" and records[120]["warnings"] == []
    assert "discontinuity" not in records[121]
    # the declared step's change did not inflate the typical change: 160 is still a jump
    assert max(abs(c) for c in monitor._changes) < 3.0


def test_uniform_image_warns_grey_square() -> None:
    monitor = LossMonitor(uniform_std=0.01)

    def image(t: int) -> torch.Tensor:
        img = textured(t)
        if 40 <= t < 60 or t >= 90:
            img[1] = torch.tensor([0.5, 0.5, 0.5]).view(3, 1, 1) + 0.001 * img[1]  # grey square
        return img

    caught = run(monitor, healthy_sequence(100), image_fn=image)
    assert kinds(monitor) == [(40, "uniform_image", ""), (90, "uniform_image", "")]
    assert len(caught) == 2 and "uniform color" in str(caught[0].message)
    # a uniform colour that is not grey, unbatched
    record = LossMonitor(warn=False).log({"total": 0.0}, 0, image=torch.ones(3, 8, 8) * 0.2)
    assert record["warnings"] == ["uniform_image"] and record["image_std"] < 1e-6


def test_grad_norm_helper_and_record_fields(tmp_path: Path) -> None:
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    losses = {"a": 3 * x[0], "b": (x**2).mean(dim=0, keepdim=True).expand(2)}
    norms = per_loss_grad_norms(losses, x)
    assert norms["a"] == pytest.approx(3.0)
    assert norms["b"] == pytest.approx(math.hypot(1.0, 2.0))
    assert x.grad is None
    path = tmp_path / "m.jsonl"
    monitor = LossMonitor(path, warn=False)
    record = monitor.log({"total": float("-inf")}, 7, grad_norms=norms, lr=0.1)
    monitor.close()
    line = json.loads(path.read_text())
    assert line == record
    assert line["grad_norm/a"] == pytest.approx(3.0) and line["lr"] == 0.1
    assert line["total"] is None and line["warnings"] == ["total_jump"]


def test_monitor_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="reg_share"):
        LossMonitor(reg_share=1.5)
    with pytest.raises(ValueError, match="jump_window"):
        LossMonitor(jump_window=0)
    with pytest.raises(ValueError, match="image"):
        LossMonitor().log({"total": 1.0}, image=torch.ones(8, 8))


# -- tritri plot ---------------------------------------------------------------------------------


def write_run(path: Path) -> None:
    monitor = LossMonitor(path, warn=False)
    for t, stats in healthy_sequence(60):
        stats["total"] += 5.0 if t == 40 else 0.0
        monitor.log(stats, t, image=textured(t), grad_norms={"l1": 1.0 / (t + 1), "lpips": 0.5})
    monitor.close()


def cli_main():
    try:
        from tritri.cli import main
    except ImportError as err:  # tritri/__init__ imports the renderer, written concurrently
        pytest.skip(f"import tritri failed: {err}")
    return main


def test_tritri_plot_writes_a_png(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    main = cli_main()
    run_path = tmp_path / "run.jsonl"
    write_run(run_path)
    out = tmp_path / "plots" / "loss.png"
    assert main(["plot", str(run_path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000
    assert main(["plot", str(run_path)]) == 0  # default output: run.png
    assert (tmp_path / "run.png").read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


def test_plot_tolerates_a_truncated_last_line_and_rejects_garbage(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from tritri.losses.plot import plot_run, read_jsonl

    path = tmp_path / "run.jsonl"
    write_run(path)
    with path.open("a") as fh:
        fh.write('{"step": 60, "tot')  # a run killed mid-write
    records = read_jsonl(path)
    assert len(records) == 60
    assert plot_run(records, tmp_path / "x.png").read_bytes()[:8] == PNG_MAGIC
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match=":2: not a JSON line"):
        read_jsonl(path)


def test_plot_panels_group_keys_by_prefix() -> None:
    from tritri.losses.plot import _panels

    records = [
        {"step": 0, "total": 1.0, "loss/a": 1.0, "uncertainty/a": 0.1, "lr": 0.1, "warnings": []},
        {"step": 1, "total": None, "loss/b": 2.0, "stage/epsilon": 0.1, "gradnorm_loss": 3.0},
    ]
    panels = _panels(records)
    assert [(title, keys) for title, keys, _ in panels] == [
        ("total", ["total"]),
        ("loss", ["loss/a", "loss/b"]),
        ("stage", ["stage/epsilon"]),
        ("uncertainty", ["uncertainty/a"]),
        ("other", ["lr", "gradnorm_loss"]),
    ]
    assert panels[1][2] is True  # losses on a log scale when positive
