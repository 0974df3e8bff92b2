"""The render worker: a separate process that holds one GL context and renders what it is sent.

Run as ``python -m earthshader.render.worker READ_FD WRITE_FD``. Messages are pickled over two pipes
(``multiprocessing.connection.Connection``):

- parent -> worker: ``(bodies, size, time)``, a batch of prepared ``mainImage`` bodies
  (:func:`earthshader.glsl.prepare`), or ``None`` to exit;
- worker -> parent: ``("ready", renderer)`` once; per batch, first ``("done", i, "compile_error",
  message, None)`` for each body that does not compile, then ``("compiled", n)``, then one
  ``("done", i, kind, message, rgb_bytes_or_None)`` per compiled body, drawn in order.

A batch compiles into one program (:func:`earthshader.glsl.combine`) so that llvmpipe JIT-compiles
once for all of it. When that fails, each body is compiled alone to find the culprits (and to
report errors in the user's own line numbers), then the rest are combined again.

Untrusted shaders may hang or crash this process; the parent enforces deadlines and restarts it.
"""

from __future__ import annotations

import os
import re
import sys
from multiprocessing.connection import Connection

_ERROR_LINE_RE = re.compile(r"^\s*\d+:(\d+)\((\d+)\):\s*(?:error|ERROR):\s*(.*)$", re.M)


def compile_message(text: str, user_lines: int) -> str:
    """The first compiler error, as ``line L:C: message`` in the user's own line numbers.

    Errors located outside the user's ``user_lines`` lines (link errors, the wrapper's ``main``)
    carry no location.
    """
    match = _ERROR_LINE_RE.search(text)
    if match:
        line, col, msg = match.groups()
        if 1 <= int(line) <= user_lines:
            return f"line {line}:{col}: {msg.strip()}"
        return msg.strip()
    skip = {"GLSL Compiler failed", "GLSL Linker failed", "fragment_shader", "vertex_shader"}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("=")]
    lines = [ln for ln in lines if ln not in skip]
    return lines[0] if lines else "compilation failed"


class _Renderer:
    def __init__(self):
        import moderngl

        from earthshader.glsl import HEADER, VERTEX_SHADER

        self.gl = moderngl
        kwargs = {"standalone": True, "backend": "egl"}
        if os.environ.get("EARTHSHADER_EGL_DEVICE"):
            kwargs["device_index"] = int(os.environ["EARTHSHADER_EGL_DEVICE"])
        self.ctx = moderngl.create_context(**kwargs)
        # A blend that changes nothing (result = source) makes llvmpipe treat shaders as not opaque,
        # so it JIT-compiles one fragment function per shader instead of two (whole and edge tiles):
        # half the JIT time, the same pixels (bench/RESULTS.md).
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.ONE, moderngl.ZERO
        self.vertex_shader = VERTEX_SHADER
        self.header = HEADER
        self.framebuffers = {}

    def program(self, source: str):
        return self.ctx.program(vertex_shader=self.vertex_shader, fragment_shader=source)

    def compile_batch(self, bodies: list[str], send) -> list[tuple[int, object]]:
        """Programs to draw, as (index, (program, which)); compile errors are sent as found."""
        from earthshader.glsl import combine, wrap_prepared

        if len(bodies) > 1:
            try:
                program = self.program(combine(bodies))
                return [(i, (program, i)) for i in range(len(bodies))]
            except self.gl.Error:
                pass
        good = []
        for i, body in enumerate(bodies):
            try:
                good.append((i, self.program(wrap_prepared(body))))
            except self.gl.Error as exc:
                send(("done", i, "compile_error", compile_message(str(exc), body.count("\n") + 1), None))
        if len(good) > 1:
            for _, program in good:
                program.release()
            try:
                program = self.program(combine([bodies[i] for i, _ in good]))
                return [(i, (program, k)) for k, (i, _) in enumerate(good)]
            except self.gl.Error:  # names clash after all: draw each from its own program
                good = [(i, self.program(wrap_prepared(bodies[i]))) for i, _ in good]
        return [(i, (program, None)) for i, program in good]

    def draw(self, program, which: int | None, size: int, t: float):
        """Draw one shader; returns (kind, message, payload)."""
        import numpy as np

        from earthshader.glsl import MAX_LOOP_ITERATIONS

        fbo = self.framebuffers.get(size)
        if fbo is None:
            fbo = self.ctx.framebuffer(color_attachments=[self.ctx.renderbuffer((size, size), 4, dtype="f4")])
            self.framebuffers[size] = fbo
        uniforms = {
            "iResolution": (float(size), float(size), 1.0),
            "iTime": float(t),
            "iTimeDelta": 1.0 / 60.0,
            "iFrame": int(round(t * 60.0)),
            "iFrameRate": 60.0,
            "iMouse": (0.0, 0.0, 0.0, 0.0),
            # A fixed date keeps renders reproducible: 2026-01-01, seconds of the day = time.
            "iDate": (2026.0, 0.0, 1.0, float(t)),
            "es_which": which or 0,
        }
        for name, value in uniforms.items():
            if name in program:
                program[name].value = value
        vao = self.ctx.vertex_array(program, [])
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 1.0)
        vao.render(self.gl.TRIANGLES, vertices=3)
        raw = fbo.read(components=4, dtype="f4")
        vao.release()

        rgba = np.frombuffer(raw, dtype=np.float32).reshape(size, size, 4)
        rgb = rgba[..., :3]
        over_budget = int((rgba[..., 3] > MAX_LOOP_ITERATIONS + 1.5).sum())
        if over_budget:
            msg = f"loop ran past {MAX_LOOP_ITERATIONS} iterations in {over_budget} of {size * size} pixels"
            return "timeout", msg, None
        finite = np.isfinite(rgb)
        if not finite.all():
            bad = int((~finite.all(axis=2)).sum())
            return (
                "invalid_output",
                f"non-finite output (NaN/Inf, or never written) in {bad} of {size * size} pixels",
                None,
            )
        # Quantise as a display (and a PNG) would, so a saved image is the render, bit for bit.
        pixels = np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)[::-1]
        return "ok", "", np.ascontiguousarray(pixels).tobytes()


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    renderer = _Renderer()
    conn_out.send(("ready", renderer.ctx.info.get("GL_RENDERER", "unknown")))
    while True:
        job = conn_in.recv()
        if job is None:
            return
        bodies, size, t = job
        todo = renderer.compile_batch(bodies, conn_out.send)
        conn_out.send(("compiled", len(todo)))
        programs = {id(program): program for _, (program, _) in todo}
        for i, (program, which) in todo:
            kind, message, payload = renderer.draw(program, which, size, t)
            conn_out.send(("done", i, kind, message, payload))
        for program in programs.values():
            program.release()


def main(argv: list[str]) -> int:
    conn_in = Connection(int(argv[0]), writable=False)
    conn_out = Connection(int(argv[1]), readable=False)
    try:
        _serve(conn_in, conn_out)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
