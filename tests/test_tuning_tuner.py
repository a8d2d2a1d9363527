"""The tuner: choice with a fake timer, skipped candidates, output check, atomic file writes."""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tritri.configs import lookup
from tritri.configs.lookup import ConfigFileError, clear_cache, get_config, load_config_file
from tritri.tuning import tuner
from tritri.tuning.tuner import (
    NoViableConfig,
    build_document,
    choose_config,
    outputs_close,
    register_tunable,
    tune_kernels,
    tune_problem,
    write_config_file,
)

GPU = "Fake GPU 9000"
KERNEL = "fake_scale"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Own tunable / default registries and an empty shipped dir for every test."""
    monkeypatch.setattr(tuner, "_TUNABLES", {})
    monkeypatch.setattr(lookup, "SHIPPED_CONFIG_DIR", tmp_path / "shipped")
    monkeypatch.delenv(lookup.ENV_CONFIG_DIR, raising=False)
    monkeypatch.setitem(lookup._DEFAULTS, KERNEL, lambda problem: {"block": 1})
    clear_cache()
    yield
    clear_cache()


def make_run_fn(times: dict[int, float], raise_build: set[int] = frozenset(), calls=None):
    """run_fn for choose_config: the runner carries its config; ``times`` is the fake clock."""

    def run_fn(config: dict[str, Any]):
        if calls is not None:
            calls.append(("build", config["block"]))
        if config["block"] in raise_build:
            raise RuntimeError("triton.compiler.errors.CompilationError: bad block")

        def run() -> int:
            return config["block"]

        run.config = config
        return run

    def time_fn(run) -> float:
        if calls is not None:
            calls.append(("time", run.config["block"]))
        value = times[run.config["block"]]
        if isinstance(value, Exception):
            raise value
        return value

    return run_fn, time_fn


def blocks(*values: int) -> list[dict[str, int]]:
    return [{"block": v} for v in values]


# --------------------------------------------------------------------------------- choose_config


def test_choose_config_takes_the_fastest_by_the_fake_timer() -> None:
    calls: list = []
    run_fn, time_fn = make_run_fn({1: 5.0, 2: 0.5, 3: 3.0}, calls=calls)
    choice = choose_config(blocks(1, 2, 3), run_fn, time_fn=time_fn)
    assert choice.config == {"block": 2} and choice.time_ms == 0.5
    assert [r.time_ms for r in choice.results] == [5.0, 0.5, 3.0]
    assert [r.config["block"] for r in choice.ranked] == [2, 3, 1]
    assert calls == [
        ("build", 1),
        ("time", 1),
        ("build", 2),
        ("time", 2),
        ("build", 3),
        ("time", 3),
    ]


def test_choose_config_tie_goes_to_the_earlier_candidate() -> None:
    run_fn, time_fn = make_run_fn({1: 2.0, 2: 1.0, 3: 1.0})
    assert choose_config(blocks(1, 3, 2), run_fn, time_fn).config == {"block": 3}
    assert choose_config(blocks(1, 2, 3), run_fn, time_fn).config == {"block": 2}


def test_failing_candidates_are_skipped_and_recorded() -> None:
    times = {
        1: 4.0,
        2: 3.0,
        8: 0.1,
        16: RuntimeError("out of resource: shared memory"),
        32: math.nan,
    }
    run_fn, time_fn = make_run_fn(times, raise_build={8})
    choice = choose_config(blocks(1, 8, 16, 32, 2), run_fn, time_fn)
    assert choice.config == {"block": 2} and choice.time_ms == 3.0
    by_block = {r.config["block"]: r for r in choice.results}
    assert by_block[8].error.startswith("build failed: RuntimeError: triton.compiler")
    assert by_block[16].error == "run failed: RuntimeError: out of resource: shared memory"
    assert by_block[32].error.startswith("invalid time")
    assert all(by_block[b].time_ms is None for b in (8, 16, 32))
    assert by_block[1].error is None and by_block[2].error is None


def test_all_candidates_failing_raises_with_reasons() -> None:
    run_fn, time_fn = make_run_fn({1: ValueError("too big"), 2: 1.0}, raise_build={2})
    with pytest.raises(NoViableConfig, match="too big") as info:
        choose_config(blocks(1, 2), run_fn, time_fn)
    assert [r.error is not None for r in info.value.results] == [True, True]


# ------------------------------------------------------------------------ one problem, output check


def register_fake(wrong: set[int] = frozenset(), broken: set[int] = frozenset(), **kw):
    """A tunable computing 2*x; blocks in ``wrong`` compute 2*x+1, in ``broken`` fail to build."""

    buffers: dict[int, torch.Tensor] = {}

    def make_runner(problem: dict, config: dict):
        if config["block"] in broken:
            raise RuntimeError(f"OutOfResources: block {config['block']}")
        x = torch.arange(problem["n"], dtype=torch.float32)
        # one output buffer per problem, shared by all configs: the tuner must snapshot outputs
        out = buffers.setdefault(problem["n"], torch.empty_like(x))

        def run() -> torch.Tensor:
            torch.mul(x, 2, out=out)
            if config["block"] in wrong:
                out.add_(1)
            return out

        run.config = config
        return run

    return register_tunable(KERNEL, blocks(1, 2, 4, 8), [{"n": 10}, {"n": 1000}], make_runner, **kw)


TIMES = {1: 3.0, 2: 2.0, 4: 1.0, 8: 0.5}


def fake_time(run) -> float:
    run()
    return TIMES[run.config["block"]]


def test_tune_problem_skips_a_faster_config_with_wrong_output() -> None:
    tunable = register_fake(wrong={4}, broken={8})
    entry, summary = tune_problem(tunable, {"n": 10}, fake_time)
    assert entry["config"] == {"block": 2} and entry["time_ms"] == 2.0
    assert entry["verified"] is True and entry["default_time_ms"] == 3.0
    errors = {c["config"]["block"]: c.get("error") for c in entry["candidates"]}
    assert errors[4] == "output differs from the default config's output"
    assert errors[8].startswith("build failed: RuntimeError: OutOfResources")
    assert errors[1] is None and errors[2] is None
    assert "{'block': 2}" in summary and "2/4 candidates skipped" in summary


def test_tune_problem_keeps_the_default_when_nothing_matches() -> None:
    tunable = register_fake(wrong={2, 4, 8})
    entry, _ = tune_problem(tunable, {"n": 10}, fake_time)
    assert entry["config"] == {"block": 1} and entry["verified"] is True


def test_tune_problem_unverified_when_the_default_fails() -> None:
    tunable = register_fake(broken={1})
    entry, summary = tune_problem(tunable, {"n": 10}, fake_time)
    assert entry["config"] == {"block": 8} and entry["verified"] is False
    assert entry["default_time_ms"] is None and "UNVERIFIED" in summary


def test_tune_problem_default_outside_candidates_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(lookup._DEFAULTS, KERNEL, lambda problem: {"block": 16})
    TIMES_16 = {**TIMES, 16: 7.0}
    tunable = register_fake()
    entry, _ = tune_problem(tunable, {"n": 4}, lambda run: TIMES_16[run.config["block"]])
    assert entry["default_time_ms"] == 7.0 and entry["config"] == {"block": 8}


def test_tune_kernels_quick_grid_and_round_trip(tmp_path: Path) -> None:
    register_fake(wrong={8}, quick_problems=[{"n": 1000}])
    lines: list[str] = []
    kernels = tune_kernels(tuner.tunables().values(), fake_time, quick=True, log=lines.append)
    assert [e["problem"] for e in kernels[KERNEL]] == [{"n": 1000}] and len(lines) == 1
    kernels = tune_kernels(tuner.tunables().values(), fake_time, log=lines.append)
    assert [e["problem"] for e in kernels[KERNEL]] == [{"n": 10}, {"n": 1000}]

    doc = build_document(GPU, kernels)
    assert doc["triton"] and doc["torch"] == torch.__version__ and doc["slug"] == "fake_gpu_9000"
    path = write_config_file(tmp_path / "fake_gpu_9000.json", doc)
    assert load_config_file(path)["kernels"][KERNEL][0]["config"] == {"block": 4}
    cfg, source = lookup.find_config(KERNEL, {"n": 30}, GPU, config_file=path)
    assert (cfg, source) == ({"block": 4}, str(path))
    os.environ[lookup.ENV_CONFIG_DIR] = str(tmp_path)
    try:
        assert get_config(KERNEL, {"n": 30}, GPU) == {"block": 4}
    finally:
        del os.environ[lookup.ENV_CONFIG_DIR]


def test_register_tunable_defaults_and_errors() -> None:
    tunable = register_tunable("k", blocks(1), [{"n": 1}, {"n": 2}, {"n": 3}], lambda p, c: None)
    assert tunable.quick_problems == ({"n": 1}, {"n": 3})
    assert tuner.tunables() == {"k": tunable}
    with pytest.raises(ValueError, match="candidate"):
        register_tunable("k", [], [{"n": 1}], lambda p, c: None)
    with pytest.raises(ValueError, match="problem"):
        register_tunable("k", blocks(1), [], lambda p, c: None)


def test_outputs_close() -> None:
    a = torch.ones(3)
    assert outputs_close((a, {"g": a}), (a + 1e-6, {"g": a}))
    assert not outputs_close((a, {"g": a}), (a, {"g": a + 0.1}))
    assert not outputs_close(a, torch.ones(4))
    assert not outputs_close(a, a.double())
    assert not outputs_close([a], [a, a])
    assert outputs_close(torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert not outputs_close(torch.tensor([1, 2]), torch.tensor([1, 3]))
    assert not outputs_close(a, None)


# ------------------------------------------------------------------------------------------- files


def small_doc(**extra) -> dict:
    return {"schema": 1, "device_name": GPU, "kernels": {KERNEL: []}, **extra}


def test_write_config_file_validates_and_leaves_no_temp(tmp_path: Path) -> None:
    path = write_config_file(tmp_path / "sub" / "x.json", small_doc(note=1))
    assert json.loads(path.read_text())["note"] == 1
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(ConfigFileError, match="older schema"):
        write_config_file(path, small_doc(schema=0))
    with pytest.raises(ValueError):  # NaN is not JSON
        write_config_file(path, small_doc(note=math.nan))
    assert json.loads(path.read_text())["note"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_merge_with_existing_keeps_other_kernels_of_same_versions(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    old = build_document(GPU, {"other": [{"problem": {"n": 1}, "config": {"a": 1}}]})
    write_config_file(path, old)
    new = build_document(GPU, {KERNEL: [{"problem": {"n": 1}, "config": {"block": 2}}]})
    assert tuner.merge_with_existing(path, new) == ["other"]
    assert sorted(new["kernels"]) == [KERNEL, "other"]
    newer_torch = build_document(GPU, {KERNEL: []}, extra={"torch": "9.9"})
    assert tuner.merge_with_existing(path, newer_torch) == []
    other_gpu = build_document("Other GPU", {KERNEL: []})
    assert tuner.merge_with_existing(path, other_gpu) == []


def _writer(path: str, writer: int, rounds: int) -> None:
    """Write ``rounds`` whole documents of ~150 kB to ``path``, all marked with ``writer``."""
    entries = [
        {"problem": {"i": i}, "config": {"writer": writer, "pad": "x" * 512}} for i in range(300)
    ]
    for r in range(rounds):
        doc = {
            "schema": 1,
            "device_name": "Fake GPU",
            "kernels": {"k": entries},
            "writer": writer,
            "round": r,
        }
        write_config_file(path, doc)


def test_atomic_write_under_two_concurrent_writers(tmp_path: Path) -> None:
    # fork: the writers inherit the imported modules (no second torch import); they use no torch
    ctx = multiprocessing.get_context("fork")
    path = tmp_path / "fake_gpu.json"
    writers = [ctx.Process(target=_writer, args=(str(path), w, 40)) for w in (1, 2)]
    for p in writers:
        p.start()
    reads, seen = 0, set()
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in writers) and time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            time.sleep(0.001)
            continue
        doc = json.loads(text)  # a partial or interleaved file would fail here ...
        entries = doc["kernels"]["k"]
        assert len(entries) == 300  # ... or here
        assert {e["config"]["writer"] for e in entries} == {doc["writer"]}
        seen.add(doc["writer"])
        reads += 1
    for p in writers:
        p.join(timeout=60)
        assert p.exitcode == 0
    final = load_config_file(path)
    assert final["writer"] in (1, 2) and final["round"] == 39
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_gpu.json"]  # no temp files left
    assert reads > 0, "the reader never overlapped the writers"
