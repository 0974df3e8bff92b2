"""Unique-shader render throughput: the project's pool against the naive way, in one run.

    MESA_SHADER_CACHE_DISABLE=true .venv/bin/python bench/render.py [--reps 3] [--size 128]

Sources: 100 distinct Stage-2 SDF scenes (2-5 shapes, printed by earthshader.scenes) and 100
heavier shaders (value-noise fbm, domain warping, Voronoi, raymarched scenes with soft shadows).
Throughput counts compile + draw + readback of every shader, nothing cached (Mesa's on-disk shader
cache is turned off, the pool's cache too).

- naive: what a first script does: a new EGL context per shader in this process, Mesa's default
  llvmpipe (threads per core), one program, one draw, one readback.
- pool: earthshader.render.RenderPool as shipped (workers = cores, llvmpipe with LLVM's
  optimisation passes off, batches of 32 shaders a program, 8 for shaders with loops, helper
  functions the shaders of a batch share compiled once, eight shaders drawn at once, jemalloc in
  the workers where it is installed). On a GPU machine the workers draw on the GPU's EGL device.
- variants, for the record: the pool with glibc's malloc in its workers (``pool_system_malloc``;
  the same as ``pool`` where jemalloc is not installed); the pool with batches of 1; the pool on
  softpipe, one at a time; on request (``--ways``), the batches of 16 of before (``pool_batch16``),
  the pool without sharing the helper functions that shaders of a batch define identically
  (``pool_nodedupe``), drawing a batch's shaders one a draw instead of eight (``pool_outputs1``),
  or neither (``pool_neither``).

The last line is one JSON object: sdf_per_s, naive_sdf_per_s, heavy_per_s, naive_heavy_per_s, the
speedups, the variants, and CPU milliseconds per shader (the pool's workers' and this process's
own CPU time, all threads): a figure that moves much less than wall-clock rates on a shared
machine, though contention for the cores still inflates it (up to 1.7x seen on the 2-core machine),
so compare it between runs made side by side. Every figure is the median over --reps runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("MESA_SHADER_CACHE_DISABLE", "true")

import numpy as np  # noqa: E402
from machine import calibration_ms, cpu_times, steal_share  # noqa: E402

HEAVY_TEMPLATES = [
    # value-noise fbm
    """float hash(vec2 p) {{ return fract(sin(dot(p, vec2(127.1, 311.7))) * 43758.5453); }}
float noise(vec2 p) {{
    vec2 i = floor(p), f = fract(p);
    vec2 u = f * f * (3.0 - 2.0 * f);
    return mix(mix(hash(i), hash(i + vec2(1.0, 0.0)), u.x), mix(hash(i + vec2(0.0, 1.0)), hash(i + vec2(1.0)), u.x), u.y);
}}
float fbm(vec2 p) {{
    float v = 0.0, a = 0.5;
    for (int i = 0; i < {octaves}; i++) {{ v += a * noise(p); p = p * 2.03 + vec2({a:.3f}, {b:.3f}); a *= 0.5; }}
    return v;
}}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {{
    vec2 uv = fragCoord / iResolution.y * {scale:.2f};
    float n = fbm(uv + iTime * 0.1);
    fragColor = vec4(mix(vec3(0.1, 0.2, 0.4), vec3(0.9, 0.8, {c:.2f}), n), 1.0);
}}""",
    # domain warping
    """float hash(vec2 p) {{ return fract(sin(dot(p, vec2(12.9898, 78.233))) * 43758.5453); }}
float noise(vec2 p) {{
    vec2 i = floor(p), f = fract(p);
    vec2 u = f * f * (3.0 - 2.0 * f);
    return mix(mix(hash(i), hash(i + vec2(1.0, 0.0)), u.x), mix(hash(i + vec2(0.0, 1.0)), hash(i + vec2(1.0)), u.x), u.y);
}}
float fbm(vec2 p) {{
    float v = 0.0, a = 0.5;
    mat2 m = mat2(1.6, 1.2, -1.2, 1.6);
    for (int i = 0; i < {octaves}; i++) {{ v += a * noise(p); p = m * p; a *= 0.5; }}
    return v;
}}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {{
    vec2 p = fragCoord / iResolution.y * {scale:.2f};
    vec2 q = vec2(fbm(p), fbm(p + vec2({a:.3f}, {b:.3f})));
    vec2 r = vec2(fbm(p + 4.0 * q + vec2(1.7, 9.2)), fbm(p + 4.0 * q + vec2(8.3, 2.8)));
    float f = fbm(p + 4.0 * r);
    fragColor = vec4(vec3(f * {c:.2f}, f * f, length(q)), 1.0);
}}""",
    # Voronoi
    """vec2 hash2(vec2 p) {{ return fract(sin(vec2(dot(p, vec2(127.1, 311.7)), dot(p, vec2(269.5, 183.3)))) * 43758.5453); }}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {{
    vec2 uv = fragCoord / iResolution.y * {scale:.2f} + vec2({a:.3f}, {b:.3f});
    vec2 g = floor(uv), f = fract(uv);
    float md = 8.0;
    for (int j = -1; j <= 1; j++)
        for (int i = -1; i <= 1; i++) {{
            vec2 o = vec2(float(i), float(j));
            vec2 r = o + hash2(g + o) - f;
            md = min(md, dot(r, r));
        }}
    fragColor = vec4(vec3(sqrt(md)) * vec3(1.0, {c:.2f}, 0.6), 1.0);
}}""",
    # raymarched scene with soft shadows
    """float sdTorus(vec3 p, vec2 t) {{ vec2 q = vec2(length(p.xz) - t.x, p.y); return length(q) - t.y; }}
float map(vec3 p) {{
    float d = p.y + 1.0;
    d = min(d, length(p - vec3({a:.3f}, 0.0, 0.0)) - 0.8);
    d = min(d, sdTorus(p - vec3(-1.2, -0.4, {b:.3f}), vec2(0.6, 0.2)));
    return d;
}}
vec3 calcNormal(vec3 p) {{
    vec2 e = vec2(1e-3, 0.0);
    return normalize(vec3(map(p + e.xyy) - map(p - e.xyy), map(p + e.yxy) - map(p - e.yxy), map(p + e.yyx) - map(p - e.yyx)));
}}
float softShadow(vec3 ro, vec3 rd) {{
    float res = 1.0, t = 0.02;
    for (int i = 0; i < {octaves}0; i++) {{ float h = map(ro + rd * t); res = min(res, 8.0 * h / t); t += clamp(h, 0.02, 0.2); if (h < 1e-3 || t > 10.0) break; }}
    return clamp(res, 0.0, 1.0);
}}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {{
    vec2 uv = (2.0 * fragCoord - iResolution.xy) / iResolution.y;
    vec3 ro = vec3(0.0, 0.5, -{scale:.2f}), rd = normalize(vec3(uv, 1.6));
    float t = 0.0;
    for (int i = 0; i < 100; i++) {{ float d = map(ro + rd * t); if (d < 1e-3 || t > 20.0) break; t += d; }}
    vec3 col = vec3(0.6, 0.7, 0.9) - rd.y * 0.3;
    if (t < 20.0) {{
        vec3 p = ro + rd * t, n = calcNormal(p), l = normalize(vec3(0.5, 0.8, -0.3));
        col = vec3(0.8, {c:.2f}, 0.5) * (0.1 + max(dot(n, l), 0.0) * softShadow(p + n * 0.01, l));
    }}
    fragColor = vec4(col, 1.0);
}}""",
]


# The pools a run may time, with their RenderPool arguments besides cache_mb=0 ("naive" is no pool).
WAYS = {
    "naive": {},
    "pool": {},
    "pool_batch1": {"batch_size": 1, "loop_batch_size": 1},
    "pool_batch16": {"batch_size": 16, "loop_batch_size": 16},  # the batches of before 2026-11-22
    "pool_softpipe": {"batch_size": 1, "loop_batch_size": 1, "mode": "softpipe"},
    "pool_nodedupe": {"dedupe": False},
    "pool_outputs1": {"outputs": 1},
    "pool_neither": {"dedupe": False, "outputs": 1},
    "pool_system_malloc": {"malloc": "system"},  # glibc's malloc in the workers, not jemalloc
}
DEFAULT_WAYS = ("naive", "pool", "pool_system_malloc", "pool_batch1", "pool_softpipe")


def sdf_sources(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct Stage-2 scenes printed as GLSL."""
    from earthshader.scenes import random_scene, to_glsl

    out: dict[str, None] = {}
    i = 0
    while len(out) < n:
        out[to_glsl(random_scene(2, np.random.default_rng([seed, i])))] = None
        i += 1
    return list(out)


def heavy_sources(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        template = HEAVY_TEMPLATES[i % len(HEAVY_TEMPLATES)]
        out.append(
            template.format(
                octaves=int(rng.integers(4, 7)),
                a=rng.uniform(-1, 1),
                b=rng.uniform(-1, 1),
                c=rng.uniform(0.2, 0.9),
                scale=rng.uniform(3.0, 6.0),
            )
        )
    return out


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes, all their threads included."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def naive_render_all(sources: list[str], size: int) -> tuple[float, int, float]:
    """A new context per shader, in this process, Mesa's defaults. Returns (seconds, ok, cpu seconds)."""
    import moderngl

    from earthshader.glsl import VERTEX_SHADER, wrap

    ok = 0
    cpu0 = _cpu_seconds([os.getpid()])
    start = time.perf_counter()
    for source in sources:
        ctx = moderngl.create_context(standalone=True, backend="egl")
        fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer((size, size), 4, dtype="f4")])
        program = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=wrap(source))
        program["iResolution"].value = (size, size, 1.0)
        vao = ctx.vertex_array(program, [])
        fbo.use()
        vao.render(moderngl.TRIANGLES, vertices=3)
        pixels = np.frombuffer(fbo.read(components=4, dtype="f4"), dtype=np.float32)
        ok += bool(np.isfinite(pixels).all())
        ctx.release()
    return time.perf_counter() - start, ok, _cpu_seconds([os.getpid()]) - cpu0


def pool_render_all(pool, sources: list[str], size: int) -> tuple[float, int, float]:
    """The pool's render_many. Returns (seconds, ok, CPU seconds of this process and its workers)."""
    pids = [os.getpid(), *pool.worker_pids()]
    cpu0 = _cpu_seconds(pids)
    start = time.perf_counter()
    results = pool.render_many(sources, size=size)
    seconds = time.perf_counter() - start
    # Workers started during the run count from zero; workers killed during it are lost (none here).
    pids = sorted(set(pids) | set(pool.worker_pids()))
    return seconds, sum(r.ok for r in results), _cpu_seconds(pids) - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument(
        "--ways",
        default=",".join(DEFAULT_WAYS),
        help=f"comma-separated subset of {','.join(WAYS)} (default: {','.join(DEFAULT_WAYS)})",
    )
    parser.add_argument("--sets", default="sdf,heavy", help="comma-separated subset of sdf,heavy")
    args = parser.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    if not ways or set(ways) - set(WAYS):
        parser.error(f"--ways takes names from {','.join(WAYS)}")
    set_names = [s for s in args.sets.split(",") if s]
    if not set_names or set(set_names) - {"sdf", "heavy"}:
        parser.error("--sets takes names from sdf,heavy")

    from earthshader.render import RenderPool
    from earthshader.render.pool import detect_mode

    makers = {"sdf": sdf_sources, "heavy": heavy_sources}
    sets = {name: makers[name](args.n) for name in set_names}
    pools = {way: RenderPool(cache_mb=0, **WAYS[way]) for way in ways if way != "naive"}
    warm = [f"void mainImage(out vec4 c, in vec2 p) {{ c = vec4({i}.0 / 8.0); }}" for i in range(8)]
    for pool in pools.values():  # start the workers before timing
        pool.render_many(warm, size=8)

    rates: dict[str, list[float]] = {}
    cpu_ms_each: dict[str, list[float]] = {}
    steal: list[float] = []
    calibration = [calibration_ms()]
    for rep in range(args.reps):
        for set_name, sources in sets.items():
            runs = {"naive": lambda s=sources: naive_render_all(s, args.size)} if "naive" in ways else {}
            for pool_name, pool in pools.items():
                runs[pool_name] = lambda s=sources, p=pool: pool_render_all(p, s, args.size)
            for run_name, run in runs.items():
                before = cpu_times()
                seconds, ok, cpu = run()
                stolen = steal_share(before, cpu_times())
                if stolen is not None:
                    steal.append(stolen)
                rate = len(sources) / seconds
                cpu_ms = 1000 * cpu / len(sources)
                rates.setdefault(f"{run_name}_{set_name}", []).append(rate)
                cpu_ms_each.setdefault(f"{run_name}_{set_name}", []).append(cpu_ms)
                print(
                    f"rep {rep} {set_name:5s} {run_name:13s} {rate:8.1f} shaders/s  {cpu_ms:7.1f} CPU ms/shader"
                    f"  ({ok}/{len(sources)} ok)  steal {stolen if stolen is not None else 'n/a'}",
                    flush=True,
                )
    for pool in pools.values():
        pool.close()
    calibration.append(calibration_ms())

    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_ms_each.items()}
    result: dict[str, object] = {}  # the keys of a full run, in its order; ways not run are left out

    def put(name: str, table: dict[str, float], key: str) -> None:
        if key in table:
            result[name] = round(table[key], 1)

    for s in ("sdf", "heavy"):
        put(f"{s}_per_s", med, f"pool_{s}")
        put(f"naive_{s}_per_s", med, f"naive_{s}")
    for s in ("sdf", "heavy"):
        if f"pool_{s}" in med and f"naive_{s}" in med:
            result[f"{s}_speedup"] = round(med[f"pool_{s}"] / med[f"naive_{s}"], 2)
    for way in ways:
        if way not in ("pool", "naive"):
            for s in ("sdf", "heavy"):
                put(f"{way.removeprefix('pool_')}_{s}_per_s", med, f"{way}_{s}")
    for s in ("sdf", "heavy"):
        put(f"cpu_ms_{s}", cpu, f"pool_{s}")
        put(f"naive_cpu_ms_{s}", cpu, f"naive_{s}")
        for way in ("pool_system_malloc", "pool_batch16", "pool_nodedupe", "pool_outputs1", "pool_neither"):
            put(f"{way.removeprefix('pool_')}_cpu_ms_{s}", cpu, f"{way}_{s}")
    if "pool_sdf" in med and "pool_system_malloc_sdf" in med:
        result["jemalloc_sdf_speedup"] = round(med["pool_sdf"] / med["pool_system_malloc_sdf"], 3)
    result |= {
        "worker_malloc": pools["pool"].malloc if "pool" in pools else None,
        "render_mode": detect_mode(),  # what the pool as shipped renders on (pool_softpipe names its own)
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "steal_median": statistics.median(steal) if steal else None,  # the host's share of our CPUs
        "calibration_ms": calibration,  # before and after: machine/calibration_ms, lower is faster
        "size": args.size,
        "reps": args.reps,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
