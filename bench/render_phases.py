"""Where a batched SDF shader's render time goes: the render worker's own calls, timed in this process.

One thread, llvmpipe with the pool's settings (``earthshader.render.pool.mesa_env``: ``GALLIVM_PERF=nopt``,
``LP_NUM_THREADS=0``; no shader cache; the workers' allocator, jemalloc where installed, unless
``EARTHSHADER_RENDER_MALLOC=system``), the worker's ``_Renderer``, Stage-2 scenes (``bench/render.py``'s) in batches of ``--batch``.
For each batch it times, in CPU seconds of this process: ``combine`` (namespacing, shared helpers),
``compile`` (``ctx.program``: Mesa's GLSL front end, NIR, link), ``first_draw`` (llvmpipe JIT-compiles
the whole program at its first draw, then draws that group), ``other_draws`` and ``readback`` (reading
the attachments and the pixel check). The last line is one JSON object of milliseconds per shader.

    .venv/bin/python bench/render_phases.py [--n 320] [--batch 32] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from render import sdf_sources

from earthshader.glsl import combine, draw_groups, prepare
from earthshader.render.pool import mesa_env, preload, worker_malloc
from earthshader.render.worker import _Renderer

os.environ["MESA_SHADER_CACHE_DISABLE"] = "true"
mesa_env(os.environ, "llvmpipe")  # the pool's own settings; read when the worker's context is made
# The pool's allocator too: preloaded before this process starts, so start again with it.
_malloc = worker_malloc(None, "llvmpipe")
if _malloc and _malloc not in os.environ.get("LD_PRELOAD", ""):
    preload(os.environ, _malloc)
    os.execv(sys.executable, [sys.executable, *sys.argv])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=320)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()

    renderer = _Renderer()
    bodies = [prepare(s) for s in sdf_sources(args.n, seed=args.seed)]
    spent = dict.fromkeys(("combine", "compile", "first_draw", "other_draws", "readback"), 0.0)
    clock = time.process_time
    for k in range(0, len(bodies), args.batch):
        batch = bodies[k : k + args.batch]
        t0 = clock()
        groups = draw_groups(batch, renderer.outputs(args.size))
        source = combine(batch, True, groups)
        t1 = clock()
        program = renderer.program(source)
        t2 = clock()
        spent["combine"] += t1 - t0
        spent["compile"] += t2 - t1
        for g, group in enumerate(groups):
            start = clock()
            images = renderer.draw(program, g, len(group), args.size, 0.0)
            first = next(images)  # the draw happens here; the first readback too
            drawn = clock()
            rest = list(images)
            assert all(kind == "ok" for kind, _, _ in [first, *rest])
            spent["first_draw" if g == 0 else "other_draws"] += drawn - start
            spent["readback"] += clock() - drawn
        program.release()
    per_shader = {name: round(1000 * value / len(bodies), 2) for name, value in spent.items()}
    per_shader["total"] = round(sum(per_shader.values()), 2)
    for name, value in per_shader.items():
        print(f"{name:12s} {value:6.2f} CPU ms a shader")
    print(json.dumps({**per_shader, "n": len(bodies), "batch": args.batch, "size": args.size}))


if __name__ == "__main__":
    main()
