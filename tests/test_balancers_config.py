"""build_balancer: dicts, YAML files (the seed's layout), errors, and every example config."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tritri.losses.adaptive import AdaptiveWeighting
from tritri.losses.config import BALANCER_TYPES, build_balancer
from tritri.losses.gradnorm import GradNorm
from tritri.losses.hybrid import GeometricUncertaintyHybrid
from tritri.losses.mgda import MGDA
from tritri.losses.schedules import AlternatingFocus, LossAnnealing, Staged, WeightedSum
from tritri.losses.uncertainty import UncertaintyWeighting

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
HAS_GEOMETRIC = importlib.util.find_spec("tritri.losses.geometric") is not None
NEEDS_GEOMETRIC = pytest.mark.skipif(
    not HAS_GEOMETRIC, reason="tritri.losses.geometric (GeometricMeanLoss) is not written yet"
)
NAMES = ["l1", "perceptual", "lpips"]


def losses() -> dict[str, torch.Tensor]:
    x = torch.linspace(0.1, 1.0, 5, requires_grad=True)
    return {"l1": x.abs().mean(), "perceptual": (x**2).mean() * 3, "lpips": x.mean() / 4}


@pytest.mark.parametrize(
    ("section", "cls", "attrs"),
    [
        ({"type": "uncertainty", "form": "precision"}, UncertaintyWeighting, {"form": "precision"}),
        ({"type": "gradnorm", "alpha": 0.5, "lr": "1e-2"}, GradNorm, {"alpha": 0.5, "lr": 0.01}),
        ({"type": "adaptive", "clamp": [0.2, 0.6]}, AdaptiveWeighting, {"clamp": (0.2, 0.6)}),
        ({"type": "alternating", "period": 3}, AlternatingFocus, {"period": 3}),
        ({"type": "mgda"}, MGDA, {}),
        ({"type": "geometric_uncertainty", "epsilon": "1e-6"}, GeometricUncertaintyHybrid, {}),
    ],
)
def test_every_named_type_builds_from_a_dict(section, cls, attrs) -> None:
    bal = build_balancer({"loss": section}, names=NAMES)
    assert type(bal) is cls
    assert bal.names == tuple(NAMES)
    for key, value in attrs.items():
        assert getattr(bal, key) == value
    x = torch.linspace(0.1, 1.0, 5, requires_grad=True)
    values = {"l1": x.abs().mean(), "perceptual": (x**2).mean() * 3, "lpips": x.mean() / 4}
    total = bal(values, step=0, epoch=0, shared=x)
    assert torch.isfinite(total) and set(bal.stats) >= {"total", "weight/l1"}


def test_types_without_names_and_the_bare_section() -> None:
    bal = build_balancer({"type": "weighted_sum", "weights": {"l1": 1, "lpips": 0.5}})
    assert isinstance(bal, WeightedSum) and bal.weights == {"l1": 1.0, "lpips": 0.5}
    with pytest.raises(TypeError, match=r"loss \(weighted_sum\): weights\['lpips'\]"):
        build_balancer({"type": "weighted_sum", "weights": {"lpips": "heavy"}})
    bal = build_balancer({"loss": {"type": "annealing", "base": ["l1"], "ramps": {"lpips": 4}}})
    assert isinstance(bal, LossAnnealing) and bal.names == ("l1", "lpips")
    names_in_config = build_balancer({"loss": {"type": "mgda", "names": ["a", "b"]}}, names=NAMES)
    assert names_in_config.names == ("a", "b")  # the config wins over the default


def test_yaml_file_with_the_seed_layout(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "model: {triangles: 200}\n"  # other sections of a training config are ignored
        "loss:\n"
        "  type: geometric_uncertainty\n"
        "  names: [l1, lpips]\n"
        "  epsilon: 1e-8\n"  # YAML 1.1 reads this as a string; we read a float
        "  min_loss_value: 1e-4\n"
        "  regularization_weight: 0.01\n"
    )
    bal = build_balancer(path)
    assert isinstance(bal, GeometricUncertaintyHybrid)
    assert bal.epsilon == 1e-8 and type(bal.epsilon) is float
    assert bal.min_loss_value == 1e-4
    assert build_balancer(str(path)).names == ("l1", "lpips")


@pytest.mark.parametrize(
    "content, message",
    [
        ("loss: {type: geometric_mean\n  bad: [", r"is not valid YAML \(.* at line 2, column"),
        (b"\x89PNG\x00\xff\xfe", "cannot read .* as YAML text"),
        ("- 1\n- 2\n", "must hold a mapping .*got list"),
    ],
    ids=["not-yaml", "binary", "list"],
)
def test_a_corrupt_yaml_file_is_a_one_line_error_naming_it(tmp_path: Path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        build_balancer(path)
    assert "bad.yaml" in str(info.value) and "\n" not in str(info.value)


def test_staged_nests_a_balancer_config() -> None:
    bal = build_balancer(
        {
            "loss": {
                "type": "staged",
                "balancer": {"type": "geometric_uncertainty"},
                "stages": {0: {"regularization_weight": 0.1}, 50: {"regularization_weight": 0.01}},
            }
        },
        names=NAMES,
    )
    assert isinstance(bal, Staged) and isinstance(bal.balancer, GeometricUncertaintyHybrid)
    bal(losses(), epoch=60)
    assert bal.balancer.regularization_weight == 0.01


def test_unknown_type_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown balancer type 'geometric'") as info:
        build_balancer({"loss": {"type": "geometric"}})
    for name in BALANCER_TYPES:
        assert name in str(info.value)


def test_unknown_key_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown key 'momentun'") as info:
        build_balancer({"loss": {"type": "adaptive", "names": NAMES, "momentun": 0.5}})
    assert "momentum" in str(info.value) and "clamp" in str(info.value)
    with pytest.raises(ValueError, match=r"loss\.balancer: unknown key 'eps'"):
        build_balancer(
            {"loss": {"type": "staged", "balancer": {"type": "mgda", "eps": 1}, "stages": {}}},
            names=NAMES,
        )


def test_other_config_errors() -> None:
    with pytest.raises(ValueError, match=r"needs \['names'\].*names="):
        build_balancer({"loss": {"type": "gradnorm"}})
    with pytest.raises(ValueError, match="neither a 'loss' section nor a 'type'"):
        build_balancer({"optimizer": {}})
    with pytest.raises(ValueError, match=r"loss\.lr: expected a number"):
        build_balancer({"loss": {"type": "gradnorm", "names": NAMES, "lr": "fast"}})
    with pytest.raises(ValueError, match="form"):
        build_balancer({"loss": {"type": "uncertainty", "names": NAMES, "form": "x"}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_balancer("nope.yaml")


@NEEDS_GEOMETRIC
def test_geometric_mean_from_the_seed_config() -> None:
    from tritri.losses.geometric import GeometricMeanLoss

    bal = build_balancer(EXAMPLES / "geometric_mean.yaml")
    assert isinstance(bal, GeometricMeanLoss)
    assert (bal.epsilon, bal.min_loss_value, bal.regularization_weight) == (1e-8, 1e-4, 0.01)
    with pytest.raises(ValueError, match="unknown key 'eps'.*epsilon"):
        build_balancer({"loss": {"type": "geometric_mean", "eps": 1e-8}})


def example_configs() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_there_are_example_configs_for_every_type() -> None:
    import yaml

    types = set()
    for path in example_configs():
        text = yaml.safe_load(path.read_text())
        types.add(text["loss"]["type"])
        if text["loss"]["type"] == "staged":
            types.add(text["loss"]["balancer"]["type"])
    assert types == set(BALANCER_TYPES)


@pytest.mark.parametrize("path", example_configs(), ids=lambda p: p.name)
def test_every_example_config_builds_and_runs(path: Path) -> None:
    if not HAS_GEOMETRIC and "geometric_mean" in path.read_text():
        pytest.skip("tritri.losses.geometric (GeometricMeanLoss) is not written yet")
    bal = build_balancer(path, names=NAMES)
    x = torch.linspace(0.1, 1.0, 5, requires_grad=True)
    values = {"l1": x.abs().mean(), "perceptual": (x**2).mean() * 3, "lpips": x.mean() / 4}
    total = bal(values, step=3, epoch=3, shared=x)
    total.backward()
    assert torch.isfinite(total) and x.grad is not None
    assert {"total", "loss/l1", "weight/lpips"} <= set(bal.stats)
