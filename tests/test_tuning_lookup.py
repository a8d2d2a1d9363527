"""Config lookup (``docs/SPEC.md`` section 4): order, bucketing, bad files, caching, no GPU query at
import."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tritri.configs import lookup
from tritri.configs.lookup import (
    ConfigWarning,
    clear_cache,
    find_config,
    get_config,
    nearest_entry,
    problem_distance,
)
from tritri.configs.slug import device_slug

REPO = Path(__file__).resolve().parents[1]
GPU = "Fake GPU 9000 (48GB)"
SLUG = "fake_gpu_9000_48gb_"
PROBLEM = {"batch": 4, "n_triangles": 1000, "height": 256, "width": 256}
DEFAULT_SMALL = {
    "tile": 16,
    "chunk": 32,
    "num_warps": 2,
    "num_stages": 1,
    "binning": "scan",
    "pairs_per_triangle": 16,
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty shipped dir, no TRITRI_CONFIG_DIR, no CUDA, fresh caches."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(lookup, "SHIPPED_CONFIG_DIR", shipped)
    monkeypatch.delenv(lookup.ENV_CONFIG_DIR, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    clear_cache()
    yield shipped
    clear_cache()


def fake_cuda(monkeypatch: pytest.MonkeyPatch, name: str = GPU) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    clear_cache()


def doc(entries: dict, device_name: str = GPU, **extra) -> dict:
    out = {
        "schema": 1,
        "device_name": device_name,
        "slug": device_slug(device_name),
        "triton": "3.7.1",
        "torch": "2.13.0",
        "date": "2026-01-01T00:00:00+00:00",
        "kernels": entries,
    }
    out.update(extra)
    return out


def entry(config: dict, **problem) -> dict:
    return {"problem": {**PROBLEM, **problem}, "config": config, "time_ms": 1.0}


def write(path: Path, content: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def config_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ConfigWarning)]


# ------------------------------------------------------------------------------------------ slug


def test_slug_rule() -> None:
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert device_slug("NVIDIA GeForce RTX 4090") == "nvidia_geforce_rtx_4090"
    assert device_slug("AMD Instinct MI300X / (rev. 2)") == "amd_instinct_mi300x_rev_2_"
    assert device_slug(GPU) == SLUG


# ------------------------------------------------------------------------------------- defaults


def test_cpu_uses_default_silently() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        config, source = find_config("raster_forward", PROBLEM)
        assert get_config("raster_backward", {**PROBLEM, "n_triangles": 5000})["binning"] == (
            "sorted"
        )
        assert find_config("raster_forward", PROBLEM, device_name="")[1] == "default"
    assert (config, source) == (DEFAULT_SMALL, "default")
    assert config_warnings(record) == []


def test_raster_default_binning_threshold() -> None:
    assert get_config("raster_forward", {**PROBLEM, "n_triangles": 2048})["binning"] == "scan"
    assert get_config("raster_forward", {**PROBLEM, "n_triangles": 2049})["binning"] == "sorted"


def test_unknown_kernel_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match="no_such_kernel.*raster_backward.*raster_forward"):
        get_config("no_such_kernel", PROBLEM)


def test_default_warns_once_per_kernel_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    with pytest.warns(ConfigWarning) as record:
        for n in (10, 1000, 100000):
            get_config("raster_forward", {**PROBLEM, "n_triangles": n})
        get_config("raster_backward", PROBLEM)
        get_config("raster_forward", PROBLEM, device_name="Other GPU")
    messages = config_warnings(record)
    assert len(messages) == 3, messages
    assert "raster_forward" in messages[0] and GPU in messages[0]
    assert "raster_backward" in messages[1]
    assert "Other GPU" in messages[2]


def test_returned_config_is_a_copy() -> None:
    first = get_config("raster_forward", PROBLEM)
    first["tile"] = 999
    assert get_config("raster_forward", PROBLEM)["tile"] == 16


def test_registered_default_and_file_config_layered_over_it(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(lookup._DEFAULTS, "fake_kernel", lambda p: {"a": p["n"] * 2, "b": "x"})
    clear_cache()
    assert get_config("fake_kernel", {"n": 3}) == {"a": 6, "b": "x"}
    write(
        isolated / f"{SLUG}.json", doc({"fake_kernel": [{"problem": {"n": 3}, "config": {"b": 1}}]})
    )
    assert get_config("fake_kernel", {"n": 3}, device_name=GPU) == {"a": 6, "b": 1}


def test_file_entry_for_kernel_without_default(isolated: Path) -> None:
    write(
        isolated / f"{SLUG}.json",
        doc({"only_in_file": [{"problem": {"n": 1}, "config": {"z": 1}}]}),
    )
    assert get_config("only_in_file", {"n": 5}, device_name=GPU) == {"z": 1}


# ---------------------------------------------------------------------------------- lookup order


def test_lookup_order(isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    explicit = write(tmp_path / "explicit.json", doc({"raster_forward": [entry({"tile": 64})]}))
    env_dir = tmp_path / "env"
    env_file = write(env_dir / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": 32})]}))
    shipped = write(isolated / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": 8})]}))
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(env_dir))

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg, src = find_config("raster_forward", PROBLEM, override={"tile": 128, "chunk": 2})
        assert (cfg["tile"], cfg["chunk"], cfg["num_warps"], src) == (128, 2, 2, "override")
        cfg, src = find_config("raster_forward", PROBLEM, config_file=explicit)
        assert (cfg["tile"], src) == (64, str(explicit))
        assert cfg["num_warps"] == DEFAULT_SMALL["num_warps"]  # missing keys: from the default
        cfg, src = find_config("raster_forward", PROBLEM)
        assert (cfg["tile"], src) == (32, str(env_file))
        monkeypatch.delenv(lookup.ENV_CONFIG_DIR)
        cfg, src = find_config("raster_forward", PROBLEM)
        assert (cfg["tile"], src) == (8, str(shipped))
    assert config_warnings(record) == []

    shipped.unlink()
    clear_cache()
    with pytest.warns(ConfigWarning, match="no tuned config for kernel 'raster_forward'"):
        cfg, src = find_config("raster_forward", PROBLEM)
    assert (cfg, src) == (DEFAULT_SMALL, "default")


def test_explicit_device_name_picks_its_file(isolated: Path) -> None:
    write(isolated / "gpu_a.json", doc({"raster_forward": [entry({"tile": 1})]}, "GPU A"))
    write(isolated / "gpu_b.json", doc({"raster_forward": [entry({"tile": 2})]}, "GPU-B"))
    assert get_config("raster_forward", PROBLEM, device_name="GPU A")["tile"] == 1
    assert get_config("raster_forward", PROBLEM, device_name="GPU-B")["tile"] == 2


def test_file_without_the_kernel_falls_through(
    isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "env" / f"{SLUG}.json", doc({"raster_backward": [entry({"tile": 32})]}))
    write(isolated / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": 8})]}))
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(tmp_path / "env"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert get_config("raster_forward", PROBLEM, device_name=GPU)["tile"] == 8
        assert get_config("raster_backward", PROBLEM, device_name=GPU)["tile"] == 32
    assert config_warnings(record) == []


def test_env_dir_change_is_seen_without_clear_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, tile in (("one", 1), ("two", 2)):
        write(tmp_path / name / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": tile})]}))
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(tmp_path / "one"))
    assert get_config("raster_forward", PROBLEM, device_name=GPU)["tile"] == 1
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(tmp_path / "two"))
    assert get_config("raster_forward", PROBLEM, device_name=GPU)["tile"] == 2


def test_lookups_cached_until_clear_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(isolated / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": 8})]}))
    reads: list[str] = []
    real = lookup.load_config_file
    monkeypatch.setattr(lookup, "load_config_file", lambda p: reads.append(p) or real(p))
    for n in (1000, 1000, 3000):
        assert get_config("raster_forward", {**PROBLEM, "n_triangles": n}, GPU)["tile"] == 8
    assert reads == [str(path)]
    write(path, doc({"raster_forward": [entry({"tile": 4})]}))
    assert get_config("raster_forward", PROBLEM, GPU)["tile"] == 8
    clear_cache()
    assert get_config("raster_forward", PROBLEM, GPU)["tile"] == 4
    assert len(reads) == 2


# ------------------------------------------------------------------------------------- bucketing


def test_nearest_bucket_wins(isolated: Path) -> None:
    entries = [entry({"tile": n}, n_triangles=n) for n in (1000, 4000, 16000)]
    for order in (entries, entries[::-1]):
        write(isolated / f"{SLUG}.json", doc({"raster_forward": order}))
        clear_cache()
        got = {
            n: get_config("raster_forward", {**PROBLEM, "n_triangles": n}, GPU)["tile"]
            for n in (10, 1200, 2000, 3000, 9000, 10**6)
        }
        # 2000 is exactly one octave from 1000 and from 4000: the tie goes to the smaller bucket
        assert got == {10: 1000, 1200: 1000, 2000: 1000, 3000: 4000, 9000: 16000, 10**6: 16000}


def test_bucket_distance_sums_octaves_over_keys() -> None:
    entries = [
        {"problem": {"b": 1, "n": 1024}, "config": {"id": "near_n"}},
        {"problem": {"b": 64, "n": 64}, "config": {"id": "near_b"}},
        {"problem": {"b": 8, "n": 512}, "config": {"id": "both"}},
    ]
    # (b=8, n=1024): near_n 3 octaves, near_b 3 + 4, both 0 + 1
    assert nearest_entry(entries, {"b": 8, "n": 1024})["config"]["id"] == "both"
    assert nearest_entry(entries, {"b": 1, "n": 2048})["config"]["id"] == "near_n"
    assert problem_distance({"b": 4, "n": 16}, {"b": 1, "n": 64}) == pytest.approx(4.0)


def test_bucket_key_sets_and_strings_must_match() -> None:
    entries = [
        {"problem": {"n": 100, "dtype": "fp16"}, "config": {"id": "fp16"}},
        {"problem": {"n": 100000, "dtype": "fp32"}, "config": {"id": "fp32"}},
        {"problem": {"n": 100}, "config": {"id": "no_dtype"}},
    ]
    assert nearest_entry(entries, {"n": 100, "dtype": "fp32"})["config"]["id"] == "fp32"
    assert nearest_entry(entries, {"n": 100000})["config"]["id"] == "no_dtype"
    assert nearest_entry(entries, {"n": 100, "dtype": "bf16"}) is None
    assert nearest_entry(entries, {"m": 100}) is None
    assert problem_distance({"n": 1}, {"n": 1, "b": 1}) == float("inf")


def test_no_eligible_bucket_falls_through(isolated: Path, tmp_path: Path) -> None:
    explicit = write(
        tmp_path / "x.json", doc({"raster_forward": [{"problem": {"n": 1}, "config": {"tile": 1}}]})
    )
    write(isolated / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": 8})]}))
    assert get_config("raster_forward", PROBLEM, GPU, config_file=explicit)["tile"] == 8


def test_bad_problem_values() -> None:
    with pytest.raises(ValueError, match="not finite"):
        get_config("raster_forward", {**PROBLEM, "n_triangles": float("nan")})
    with pytest.raises(TypeError, match="must be an int"):
        get_config("raster_forward", {**PROBLEM, "batch": [1, 2]})


# ----------------------------------------------------------------------------------- bad files

GOOD = doc({"raster_forward": [entry({"tile": 8})]})
BAD_FILES = {
    "not json": ("{schema: 1,", "corrupt: not valid JSON"),
    "truncated": (json.dumps(GOOD)[:-10], "corrupt: not valid JSON"),
    "not an object": (json.dumps([GOOD]), "corrupt: top level is list"),
    "no schema": ({k: v for k, v in GOOD.items() if k != "schema"}, "older schema"),
    "schema 0": ({**GOOD, "schema": 0}, "older schema 0"),
    "schema 2": ({**GOOD, "schema": 2}, "newer schema 2"),
    "another gpu": (doc(GOOD["kernels"], "NVIDIA A100-SXM4-80GB"), "foreign.*A100"),
    "slug mismatch": ({**GOOD, "slug": "nvidia_a100"}, "corrupt: slug"),
    "entry without config": (
        doc({"raster_forward": [{"problem": PROBLEM}]}),
        r"corrupt: kernels\['raster_forward'\]\[0\] has no 'config'",
    ),
    "kernels not a dict": ({**GOOD, "kernels": []}, "corrupt: 'kernels'"),
    "problem value a list": (
        doc({"raster_forward": [{"problem": {"n": [1]}, "config": {}}]}),
        "corrupt: .*must be an int",
    ),
    "another kernel set": (
        doc({"moe_gemm": [{"problem": {"m": 1}, "config": {}}]}),
        "foreign, none of its kernels",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_warns_once_and_falls_back(
    case: str, isolated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content, reason = BAD_FILES[case]
    bad = write(tmp_path / "env" / f"{SLUG}.json", content)
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(bad.parent))
    write(isolated / f"{SLUG}.json", doc({"raster_forward": [entry({"tile": 8})]}))
    with pytest.warns(ConfigWarning) as record:
        for n in (1000, 5000):
            cfg, src = find_config("raster_forward", {**PROBLEM, "n_triangles": n}, GPU)
            assert (cfg["tile"], src) == (8, str(isolated / f"{SLUG}.json"))
    messages = config_warnings(record)
    assert len(messages) == 1, messages
    assert str(bad) in messages[0]
    assert re.search(reason, messages[0]), messages[0]


@pytest.mark.parametrize("case", ["not json", "schema 0", "another gpu"])
def test_bad_file_then_default_never_crashes(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cuda(monkeypatch)
    content, _ = BAD_FILES[case]
    bad = write(tmp_path / "env" / f"{SLUG}.json", content)
    monkeypatch.setenv(lookup.ENV_CONFIG_DIR, str(bad.parent))
    with pytest.warns(ConfigWarning) as record:
        assert get_config("raster_forward", PROBLEM) == DEFAULT_SMALL
    messages = config_warnings(record)
    assert len(messages) == 2 and "ignoring config file" in messages[0], messages
    assert "heuristic default" in messages[1]


def test_unreadable_file_is_corrupt(tmp_path: Path) -> None:
    directory = tmp_path / f"{SLUG}.json"
    directory.mkdir()  # reading a directory raises IsADirectoryError
    with pytest.warns(ConfigWarning) as record:
        assert get_config("raster_forward", PROBLEM, GPU, config_file=directory) == DEFAULT_SMALL
    messages = config_warnings(record)
    assert "corrupt: cannot read" in messages[0] and "heuristic default" in messages[1], messages


# -------------------------------------------------------------------------------- no GPU at import


def test_import_does_not_query_the_gpu() -> None:
    code = (
        "import torch\n"
        "def boom(*a, **k):\n"
        "    raise RuntimeError('GPU queried at import')\n"
        "for name in ('is_available', 'device_count', 'get_device_name', 'current_device',"
        " 'get_device_properties', 'init'):\n"
        "    setattr(torch.cuda, name, boom)\n"
        "import tritri.tuning, tritri.tuning.tune, tritri.tuning.tuner\n"
        "print(tritri.tuning.get_config('raster_forward', {'batch': 1, 'n_triangles': 1,"
        " 'height': 8, 'width': 8}, device_name='')['tile'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "16"
