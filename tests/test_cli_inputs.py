"""What a user feeds ``tritri fit``: every kind of image file, and the edges of its options.

Images (generated here with Pillow): each is read as a viewer shows it -- its mean against an
8-bit twin, transparency over white, orientation, first frame -- or refused in one line naming
the file. Options: bad values are one-line errors (exit status 2, no traceback); the outputs are
written atomically and independently, what is said to be written is there, and a re-run into the
same ``--out`` leaves no stale file (docs/SPEC.md section 5).

Fits are tiny (16 px, 4 triangles, 2 steps) and run in-process on the torch-free CPU loop.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fit_helpers import one_line_error
from PIL import Image

from tritri.cli import main
from tritri.fitting.export import load_image_array, sample_image_path

OUTPUTS = ("final.png", "comparison.png", "triangles.svg", "triangles.json", "metrics.jsonl",
           "loss.png")  # fmt: skip
LEVEL = 1 / 255


@pytest.fixture(autouse=True)
def _cpu_fit(monkeypatch, tmp_path):
    """The torch-free CPU fit (numba), not the Triton interpreter the suite switches on; no
    network."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def fit(capsys, *args: str, out: Path | None = None, tiny: bool = True) -> tuple[int, str]:
    """Run ``tritri fit`` in-process; (exit status, stderr)."""
    argv = ["fit", "-q", *args]
    if tiny:
        argv += ["--size", "16", "-n", "4", "--steps", "2"]
    if out is not None:
        argv += ["--out", str(out)]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    return rc, capsys.readouterr().err


def written(err: str) -> list[Path]:
    """The files the closing line says were written."""
    line = next(line for line in err.splitlines() if "; wrote " in line)
    return [Path(p) for p in line.split("; wrote ", 1)[1].split(", ")]


# --- the image zoo -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 64x48 RGB crop of the sample photograph (uint8, H x W x 3)."""
    with Image.open(sample_image_path()) as im:
        return np.asarray(im.convert("RGB").resize((64, 64)))[8:56]


def _png16(path: Path, rgb16: np.ndarray) -> None:
    """Write a 48-bit RGB PNG by hand (Pillow cannot): 16 bits per channel, big-endian."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))  # fmt: skip


def _make(kind: str, folder: Path, photo: np.ndarray) -> tuple[Path, np.ndarray]:
    """The file of ``kind`` and what a viewer shows of it ((H, W, 3) float in [0, 1])."""
    grey8 = np.asarray(Image.fromarray(photo).convert("L"))
    grey = np.repeat(grey8[..., None] / 255.0, 3, axis=-1)
    rgb = photo / 255.0
    path = folder / f"{kind}.png"
    if kind == "grey8":
        Image.fromarray(grey8).save(path)
        return path, grey
    if kind == "grey16":  # mode I;16 (it was clipped at 255: a white blob)
        Image.fromarray(grey8.astype(np.uint16) * 257).save(path)
        return path, grey
    if kind == "int32":  # mode I (32-bit integers holding 16-bit values)
        path = path.with_suffix(".tiff")
        Image.fromarray(grey8.astype(np.int32) * 257).save(path)
        return path, grey
    if kind == "float":  # mode F, values in [0, 1]
        path = path.with_suffix(".tiff")
        Image.fromarray((grey8 / 255.0).astype(np.float32)).save(path)
        return path, grey
    if kind == "rgb48":
        _png16(path, photo.astype(np.uint16) * 257)
        return path, rgb
    if kind == "palette":
        pal = Image.fromarray(photo).quantize(16)
        pal.save(path)
        return path, np.asarray(pal.convert("RGB")) / 255.0
    if kind == "rgba_half_transparent":  # left half blue, right half transparent *red*
        rgba = np.zeros((48, 64, 4), np.uint8)
        rgba[:, :32] = (0, 0, 255, 255)
        rgba[:, 32:] = (255, 0, 0, 0)
        Image.fromarray(rgba).save(path)
        shown = np.ones((48, 64, 3))
        shown[:, :32] = (0, 0, 1)
        return path, shown
    if kind == "grey_alpha":  # LA, alpha 128 of 255: about half way to white
        la = np.stack([grey8, np.full_like(grey8, 128)], axis=-1)
        Image.fromarray(la).save(path)
        return path, grey * (128 / 255) + 127 / 255
    if kind == "palette_transparent":  # a GIF whose colour index 0 is transparent
        path = path.with_suffix(".gif")
        p = np.ones((48, 64), np.uint8)
        p[:, 32:] = 0
        im = Image.fromarray(p, mode="P")
        im.putpalette([255, 0, 0, 0, 128, 0] + [0] * 762)
        im.save(path, transparency=0)
        shown = np.ones((48, 64, 3))
        shown[:, :32] = (0, 128 / 255, 0)
        return path, shown
    if kind == "cmyk_jpeg":
        path = path.with_suffix(".jpg")
        Image.fromarray(photo).convert("CMYK").save(path, quality=95)
        return path, rgb
    if kind == "webp":
        path = path.with_suffix(".webp")
        Image.fromarray(photo).save(path, lossless=True)
        return path, rgb
    if kind == "tiff":
        path = path.with_suffix(".tiff")
        Image.fromarray(photo).save(path)
        return path, rgb
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, tolerance",
    [("grey8", 0), ("grey16", LEVEL), ("int32", LEVEL), ("float", LEVEL), ("rgb48", LEVEL),
     ("palette", 0), ("rgba_half_transparent", 0), ("grey_alpha", 1.5 * LEVEL),
     ("palette_transparent", 0), ("cmyk_jpeg", 3 * LEVEL), ("webp", 0), ("tiff", 0)],
)  # fmt: skip
def test_an_image_is_read_as_a_viewer_shows_it(tmp_path, photo, kind, tolerance):
    path, shown = _make(kind, tmp_path, photo)
    target = load_image_array(path)  # (3, H, W), the file's own size
    assert target.shape == (3, *shown.shape[:2]) and target.dtype == np.float32
    assert 0.0 <= target.min() and target.max() <= 1.0
    got = target.transpose(1, 2, 0)
    # the mean within the tolerance (1 level for the high-bit twins of the 8-bit image), and no
    # pixel far off
    assert abs(got.mean() - shown.mean()) <= tolerance + 1e-6, (got.mean(), shown.mean())
    assert np.abs(got - shown).max() <= max(tolerance, LEVEL) + 0.05 * (kind == "cmyk_jpeg")


def test_sixteen_bit_grey_fits_like_its_eight_bit_twin(tmp_path, photo, capsys):
    """The reporter's case: a 16-bit PNG was fitted as a white blob (mean 227 of 255)."""
    path16, _ = _make("grey16", tmp_path, photo)
    path8, _ = _make("grey8", tmp_path, photo)
    for path, out in ((path16, tmp_path / "o16"), (path8, tmp_path / "o8")):
        rc, err = fit(capsys, str(path), out=out)
        assert rc == 0, err
    final16 = np.asarray(Image.open(tmp_path / "o16" / "final.png"), dtype=float)
    final8 = np.asarray(Image.open(tmp_path / "o8" / "final.png"), dtype=float)
    assert abs(final16.mean() - final8.mean()) < 2.0


def test_transparent_pixels_are_fitted_over_white(tmp_path, photo, capsys):
    path, _ = _make("rgba_half_transparent", tmp_path, photo)
    rc, err = fit(capsys, str(path), out=tmp_path / "run")
    assert rc == 0, err
    assert "transparent pixels composited over white" in err
    comparison = np.asarray(Image.open(tmp_path / "run" / "comparison.png"), dtype=float)
    # the target's transparent half (shown at the image's own size, 64 x 48: --render-size)
    hidden = comparison[:, 40:64]
    assert hidden.min() >= 250  # white (Lanczos rings a little at the edge), not red


def test_exif_orientation_is_applied(tmp_path):
    im = np.zeros((20, 40, 3), np.uint8)
    im[:, 20:] = 255  # stored: dark left, white right
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: dark on top
    path = tmp_path / "rotated.jpg"
    Image.fromarray(im).save(path, exif=exif, quality=95)
    target = load_image_array(path)
    assert target.shape == (3, 40, 20)
    assert target[:, :15].mean() < 0.1 and target[:, 25:].mean() > 0.9


def test_an_animated_gif_fits_its_first_frame_and_says_so(tmp_path, capsys):
    frames = [Image.new("RGB", (24, 24), c) for c in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    rc, err = fit(capsys, str(path), out=tmp_path / "run")
    assert rc == 0, err
    assert "anim.gif has 3 frames" in err and "first" in err
    target = load_image_array(path)
    assert abs(target[0].mean() - 200 / 255) < 0.02 and target[1].mean() < 0.2


@pytest.mark.parametrize("shape", [(1, 1), (2000, 3), (3, 2000)])
def test_tiny_and_extreme_aspect_images_fit(tmp_path, capsys, shape):
    path = tmp_path / "odd.png"
    Image.new("RGB", shape[::-1], (10, 200, 30)).save(path)
    rc, err = fit(capsys, str(path), out=tmp_path / "run")
    assert rc == 0, err
    assert "Traceback" not in err
    with Image.open(tmp_path / "run" / "final.png") as im:
        # shown at the image's own size up to 1024 (--render-size), never enlarged
        assert max(im.size) == min(1024, max(shape))


def test_size_above_the_image_is_not_an_upscale_unless_asked(tmp_path, capsys):
    path = tmp_path / "small.png"
    Image.new("RGB", (12, 10), (90, 90, 200)).save(path)
    rc, err = fit(capsys, str(path), "--size", "40", "-n", "4", "--steps", "1",
                  out=tmp_path / "a", tiny=False)  # fmt: skip
    assert rc == 0, err
    assert "small.png is 12x10" in err and "--upscale" in err
    assert Image.open(tmp_path / "a" / "final.png").size == (12, 10)
    rc, err = fit(capsys, str(path), "--size", "40", "--upscale", "-n", "4", "--steps", "1",
                  out=tmp_path / "b", tiny=False)  # fmt: skip
    assert rc == 0, err
    assert Image.open(tmp_path / "b" / "final.png").size == (40, 33)


@pytest.mark.parametrize(
    "kind, message",
    [("truncated", "cannot read"), ("empty", "the file is empty"),
     ("directory", "no image files in"), ("text", "cannot read"),
     ("missing", "no such image file")],
)  # fmt: skip
def test_an_unreadable_image_is_one_line(tmp_path, photo, capsys, kind, message):
    path = tmp_path / f"{kind}.png"
    if kind == "truncated":
        Image.fromarray(photo).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("hello, I am not a picture\n")
    rc, err = fit(capsys, str(path), out=tmp_path / "run")
    assert rc == 2
    one_line_error(err, message, str(path))
    assert not (tmp_path / "run").exists()


# --- triangles.json values ---------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path, capsys) -> dict:
    rc, err = fit(capsys, "--steps", "0", out=tmp_path / "first", tiny=False)
    assert rc == 0, err
    return json.loads((tmp_path / "first" / "triangles.json").read_text())


@pytest.mark.parametrize(
    "field, index, value",
    [("colors", (0, 0), "NaN"), ("background", (0,), "NaN"), ("verts", (1, 2, 0), "Infinity"),
     ("opacity", (2,), "-Infinity"), ("colors", (1, 2), 1e39), ("opacity", (0,), 1.5)],
)  # fmt: skip
def test_a_bad_value_in_an_init_json_is_one_line_naming_file_and_field(
    tmp_path, capsys, saved, field, index, value
):
    data = dict(saved)
    node = data[field] = json.loads(json.dumps(saved[field]))
    for i in index[:-1]:
        node = node[i]
    node[index[-1]] = float(value) if isinstance(value, str) else value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))  # writes NaN / Infinity tokens, as Python's json does
    rc, err = fit(capsys, "--init", str(path), out=tmp_path / "run")
    assert rc == 2
    one_line_error(err, str(path), field)
    assert not (tmp_path / "run").exists()


def test_an_oversized_init_file_is_refused_unread(tmp_path, capsys):
    from tritri.fitting.starts import MAX_JSON_BYTES

    path = tmp_path / "huge.json"
    with open(path, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_JSON_BYTES + 1)
    rc, err = fit(capsys, "--init", str(path), out=tmp_path / "run")
    assert rc == 2
    one_line_error(err, str(path), "MB")


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [(["--sigma", "inf"], "--sigma must be a finite number > 0"),
     (["--lr", "inf"], "--lr must be a finite number > 0"),
     (["--lr-verts", "inf"], "--lr-verts must be a finite number > 0"),
     (["--lr", "nan"], "--lr must be a finite number > 0"),
     (["--seed", "-5"], "--seed must be >= 0")],
)  # fmt: skip
def test_bad_option_values_are_one_line(tmp_path, capsys, args, message):
    rc, err = fit(capsys, *args, out=tmp_path / "run")
    assert rc == 2
    one_line_error(err, message)


def _make_read_only(path: Path) -> None:
    """Make the directory ``path`` refuse new files, also to root (``chattr +i``); skip where
    that cannot be done."""
    if os.geteuid() != 0:
        path.chmod(0o555)
    else:
        import subprocess

        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("cannot make a directory read-only for root here (chattr +i)")
    try:
        (path / "probe").write_text("")
    except OSError:
        return
    (path / "probe").unlink()
    pytest.skip("the read-only directory is still writable here")


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        import subprocess

        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_a_read_only_out_directory_is_one_line(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    _make_read_only(out)
    try:
        rc, err = fit(capsys, out=out)
    finally:
        _make_writable(out)
    assert rc == 2
    one_line_error(err, "--out", str(out))


# --- outputs -----------------------------------------------------------------------------------


def test_zero_steps_writes_what_it_says_and_leaves_no_stale_file(tmp_path, capsys):
    out = tmp_path / "run"
    rc, err = fit(capsys, out=out)  # 2 steps: every output, loss.png included
    assert rc == 0 and all((out / name).is_file() for name in OUTPUTS), err
    rc, err = fit(capsys, "--steps", "0", "-n", "4", "--size", "16", out=out, tiny=False)
    assert rc == 0, err
    said = written(err)
    assert all(p.is_file() for p in said), said
    assert (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text() == ""
    assert not (out / "loss.png").exists()  # nothing to draw; the last run's curve is gone
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in said)


def test_ctrl_c_before_the_first_step_writes_what_it_says(tmp_path, capsys, monkeypatch):
    from tritri.fitting import cpu_fit

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpu_fit, "_objective", ctrl_c)  # in the first step, before any record
    out = tmp_path / "run"
    rc, err = fit(capsys, out=out)
    assert rc == 130, err
    said = written(err)
    assert all(p.is_file() for p in said), said
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in said)
    assert "metrics.jsonl" in [p.name for p in said]


def test_a_writer_that_fails_loses_no_other_output(tmp_path, capsys, monkeypatch):
    """One output that cannot be written is reported in one line; the others are written, and no
    older file of that name is left behind."""
    from tritri.fitting import export

    out = tmp_path / "run"
    rc, err = fit(capsys, out=out)
    assert rc == 0, err

    def broken(*args, **kwargs):
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(export, "save_svg", broken)
    rc, err = fit(capsys, out=out)
    assert rc == 1, err
    one_line_error(err, "triangles.svg", "cannot convert float infinity")
    assert not (out / "triangles.svg").exists()
    for name in OUTPUTS:
        if name != "triangles.svg":
            assert (out / name).is_file(), name


def test_a_second_ctrl_c_while_writing_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    from tritri.fitting import export

    out = tmp_path / "run"
    real = export.save_svg

    def interrupted_midway(verts, colors, opacity, background, path, **kwargs):
        Path(path).write_text("<svg")  # half a file...
        raise KeyboardInterrupt  # ...and the second Ctrl-C

    monkeypatch.setattr(export, "save_svg", interrupted_midway)
    try:
        rc, err = fit(capsys, out=out)
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped tritri fit (a traceback, partial outputs)")
    assert rc == 130, err
    assert "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    assert "triangles.svg" not in names  # not half of one
    assert all(name in OUTPUTS for name in names), names  # no temporary file left
    monkeypatch.setattr(export, "save_svg", real)


def test_an_atomic_write_that_fails_leaves_the_old_file(tmp_path):
    from tritri.fitting.files import atomic_path

    path = tmp_path / "triangles.svg"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


def test_the_svg_writer_takes_non_finite_values_and_refuses_an_infinite_sigma(tmp_path):
    from tritri.fitting.export import save_svg

    verts = np.array(
        [[[0.1, 0.1], [0.9, 0.2], [0.5, 0.9]], [[np.nan, 0.1], [0.9, 0.2], [0.5, 0.9]]]
    )
    colors = np.array([[np.nan, 0.5, 0.5], [0.2, 0.2, 0.2]])
    path = save_svg(verts, colors, np.array([0.5, np.inf]), np.array([np.nan, 1.0, 1.0]),
                    tmp_path / "t.svg", width=16, height=16, sigma=0.5)  # fmt: skip
    assert path.read_text().count("<g ") == 1  # the NaN-position triangle left out
    with pytest.raises(ValueError, match="sigma"):
        save_svg(verts, colors, np.array([0.5, 0.5]), np.ones(3), tmp_path / "u.svg", width=16,
                 height=16, sigma=float("inf"))  # fmt: skip
    assert not (tmp_path / "u.svg").exists()


def test_the_wheel_ships_every_data_file():
    """pyproject's package-data covers every non-Python file of the package (the configs'
    README.md was left out of the wheel)."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    repo = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["tritri"]
    package = repo / "tritri"
    for path in package.rglob("*"):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
