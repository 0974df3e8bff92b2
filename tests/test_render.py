"""The renderer, on a real EGL context in real worker processes: images, faults, memory, CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS, assert_images_close, load_png

from earthshader.render import RenderPool, RenderResult

GOLDEN = TESTS / "golden"
ADVERSARIAL = sorted((TESTS / "adversarial").glob("*.glsl"))
# A valid shader whose image we know exactly: white left half, black right half.
HALF = "void mainImage(out vec4 c, in vec2 p) {{ c = vec4(vec3(step(p.x, iResolution.x * 0.5)), 1.0); }} // {tag}"


def _half_expected(size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), np.float32)
    img[:, : size // 2] = 1.0
    return img


def _expected_kind(path: Path) -> str:
    return re.match(r"// expect: (\w+)", path.read_text(encoding="utf-8")).group(1)


@pytest.mark.parametrize("name", ["gradient", "sdf_scene", "raymarch"])
def test_render_matches_golden_image(pool, name):
    result = pool.render((GOLDEN / f"{name}.glsl").read_text(), size=128)
    assert result.ok, result
    assert result.image.dtype == np.float32 and result.image.shape == (128, 128, 3)
    assert_images_close(result.image, load_png(GOLDEN / f"{name}.png"), f"golden_{name}")


def test_render_orientation_top_left_marker_lands_top_left(pool):
    marker = "void mainImage(out vec4 c, in vec2 p) { bool tl = p.x < 16.0 && p.y > iResolution.y - 16.0; c = vec4(vec3(tl ? 1.0 : 0.0), 1.0); }"
    img = pool.render(marker, size=64).image
    assert img[:16, :16].min() == 1.0  # top-left block white
    assert img[16:].max() == 0.0 and img[:, 16:].max() == 0.0


def test_render_frag_coord_is_pixel_centre(pool):
    img = pool.render(
        "void mainImage(out vec4 c, in vec2 p) { c = vec4(fract(p), p.x / 1024.0, 1.0); }", size=32
    ).image
    assert np.abs(img[..., :2] - 0.5).max() <= 1 / 255
    assert np.allclose(img[0, :, 2], (np.arange(32) + 0.5) / 1024, atol=1 / 255)


def test_render_uses_time_uniform(pool):
    src = "void mainImage(out vec4 c, in vec2 p) { c = vec4(vec3(fract(iTime)), 1.0); }"
    assert pool.render(src, size=8, time=0.25).image[0, 0, 0] == pytest.approx(0.25, abs=1 / 255)
    assert pool.render(src, size=8, time=0.75).image[0, 0, 0] == pytest.approx(0.75, abs=1 / 255)


def test_render_is_deterministic_across_pools_and_batches():
    src = (GOLDEN / "raymarch.glsl").read_text()
    others = [HALF.format(tag=i) for i in range(5)]
    with (
        RenderPool(workers=1, batch_size=1, cache_mb=0) as a,
        RenderPool(workers=2, batch_size=8, cache_mb=0) as b,
    ):
        first = a.render(src).image
        second = a.render(src).image
        batched = b.render_many(others + [src] + others[::-1] + ["//x\n" + src])
    assert np.array_equal(first, second)
    assert np.array_equal(first, batched[5].image) and np.array_equal(first, batched[-1].image)


def test_render_many_renders_identical_sources_once(pool):
    before = pool.stats.renders
    srcs = [HALF.format(tag="dedupe-a"), HALF.format(tag="dedupe-b")] * 5
    results = pool.render_many(srcs)
    assert pool.stats.renders - before == 2
    assert all(r.ok for r in results) and results[0] is results[2]
    again = pool.render_many(srcs[:2])
    assert pool.stats.renders - before == 2 and again[0] is results[0]  # served from the cache


@pytest.mark.parametrize("path", ADVERSARIAL, ids=[p.stem for p in ADVERSARIAL])
def test_render_adversarial_shader_gets_its_kind_and_pool_recovers(pool, path):
    expected = _expected_kind(path)
    start = time.monotonic()
    result = pool.render(path.read_text(encoding="utf-8"))
    elapsed = time.monotonic() - start
    assert isinstance(result, RenderResult)
    assert result.kind == expected, result
    assert (result.image is not None) == (expected == "ok")
    assert result.kind == "ok" or result.message  # a failure always says why
    # Within its deadlines: compile (5 s) + draw (3 s) + a worker restart.
    assert elapsed < 20, f"{path.stem} took {elapsed:.1f} s"
    after = pool.render(HALF.format(tag=path.stem))
    assert after.ok, after
    assert np.array_equal(after.image, _half_expected(128))


def test_render_adversarial_batch_gives_same_kinds_as_alone():
    """Bad shaders mixed into batches with good ones: each gets its own kind, the good ones render."""
    srcs, kinds = [], []
    for i, path in enumerate(ADVERSARIAL):
        srcs += [path.read_text(encoding="utf-8"), HALF.format(tag=f"batch{i}")]
        kinds += [_expected_kind(path), "ok"]
    with RenderPool(
        workers=2, batch_size=16, compile_timeout=5.0, draw_timeout=3.0, max_worker_mb=1024
    ) as pool:
        results = pool.render_many(srcs)
    assert [r.kind for r in results] == kinds
    for r in results[1::2]:
        assert np.array_equal(r.image, _half_expected(128))


@pytest.mark.parametrize(
    "source, kind",
    [
        (
            "void mainImage(out vec4 c, in vec2 p) { c = vec4(1.0); }\n" + "float f(){return 1.0;}\n" * 50000,
            "rejected",
        ),
        ("void mainImage(out vec4 c, in vec2 p) { c = vec4(1.0); }\x00", "rejected"),
        (
            "".join(f"#define D{i} {i}.0\n" for i in range(300))
            + "void mainImage(out vec4 c, in vec2 p) { c = vec4(D1); }",
            "rejected",
        ),
    ],
    ids=["one_megabyte", "nul_byte", "too_many_defines"],
)
def test_render_generated_adversarial_is_rejected(pool, source, kind):
    result = pool.render(source)
    assert result.kind == kind and result.seconds == 0.0


def test_render_workers_recycle_and_memory_stays_bounded():
    """Thousands of unique renders in one pool: workers retire, their memory does not keep growing."""
    template = "void mainImage(out vec4 c, in vec2 p) {{ float d = length(p / iResolution.xy - vec2({x:.4f}, 0.5)) - 0.2; c = vec4(vec3(step(d, 0.0)), 1.0); }}"
    peak = []
    with RenderPool(workers=2, max_renders_per_worker=400, cache_mb=0) as pool:
        for chunk in range(6):
            srcs = [template.format(x=(chunk * 400 + i) / 2400) for i in range(400)]
            results = pool.render_many(srcs, size=32)
            assert all(r.ok for r in results)
            peak.append(max(pool.worker_rss_mb(), default=0.0))
        assert pool.stats.renders == 2400
        assert pool.stats.recycled >= 4
    assert max(peak) < 600, f"worker memory peaked at {max(peak):.0f} MiB"


def test_render_cli_writes_png_and_reports_errors(tmp_path):
    good = tmp_path / "good.glsl"
    good.write_text((GOLDEN / "gradient.glsl").read_text())
    out = tmp_path / "out.png"
    run = [sys.executable, "-m", "earthshader.cli", "render"]
    ok = subprocess.run(run + [str(good), "-o", str(out), "--size", "64"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert load_png(out).shape == (64, 64, 3)

    again = subprocess.run(run + [str(good), "-o", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    bad = tmp_path / "bad.glsl"
    bad.write_text("// a comment\nvoid mainImage(out vec4 c, in vec2 p) {\n    c = vec4(nope);\n}\n")
    failed = subprocess.run(run + [str(bad), "-o", str(tmp_path / "bad.png")], capture_output=True, text=True)
    assert failed.returncode == 1
    assert re.fullmatch(
        rf"compile_error: {re.escape(str(bad))}:3:\d+: `nope' undeclared", failed.stderr.strip()
    )
    assert not (tmp_path / "bad.png").exists()

    missing = subprocess.run(
        run + [str(tmp_path / "nope.glsl"), "-o", str(tmp_path / "x.png")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_render_pool_interrupted_leaves_no_worker_behind():
    """An exception inside render_many (Ctrl-C in a trainer) kills the busy workers."""
    endless = "void mainImage(out vec4 c, in vec2 p) { float x = 0.0; for (int i = 0; i < 20000; i++) x += sin(x + p.x); c = vec4(x); }"
    with RenderPool(workers=1, mode="llvmpipe", draw_timeout=30.0) as pool:
        pool.render(HALF.format(tag="warm"))
        pids = pool.worker_pids()
        timer = threading.Timer(
            0.5, lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        )
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            pool.render(endless, size=256)
        timer.cancel()
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert pool.render(HALF.format(tag="after")).ok
