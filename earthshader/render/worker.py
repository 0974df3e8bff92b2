"""The render worker: a separate process that holds one GL context and renders what it is sent.

Run as ``python -m earthshader.render.worker READ_FD WRITE_FD``. Messages are pickled over two pipes
(``multiprocessing.connection.Connection``):

- parent -> worker: ``(bodies, size, time)``, a batch of prepared ``mainImage`` bodies
  (:func:`earthshader.glsl.prepare`), or ``None`` to exit;
- worker -> parent: ``("ready", renderer)`` once; per batch, first ``("done", i, "compile_error",
  message, None)`` for each body that does not compile, then ``("compiled", groups, programs)``
  (the indices of the bodies each draw renders, in drawing order; the number of GL programs they
  come from), then one ``("done", i, kind, message, rgb_bytes_or_None)`` per compiled body, in
  that order.

A batch compiles into one program (:func:`earthshader.glsl.combine`) so that llvmpipe JIT-compiles
once for all of it, and one draw of it renders up to eight bodies, one a colour attachment. When
that fails, each body is compiled alone to find the culprits (and to report errors in the user's
own line numbers), then the rest are combined again.

Untrusted shaders may hang or crash this process; the parent enforces deadlines and restarts it.
"""

from __future__ import annotations

import os
import re
import sys
from multiprocessing.connection import Connection

# Mesa: "0:3(12): error: `nope' undeclared"; NVIDIA: '0(3) : error C1503: undefined variable "nope"'
# (a line, no column).
_ERROR_LINE_RES = (
    re.compile(r"^\s*\d+:(\d+)\((\d+)\):\s*(?:error|ERROR):\s*(.*)$", re.M),
    re.compile(r"^\s*\d+\((\d+)\)()\s*:\s*error\s+C\d+:\s*(.*)$", re.M),
)


def compile_message(text: str, user_lines: int) -> str:
    """The first compiler error, as ``line L:C: message`` in the user's own line numbers (``line L:
    message`` where the driver gives no column, as NVIDIA's does).

    Errors located outside the user's ``user_lines`` lines (link errors, the wrapper's ``main``)
    carry no location.
    """
    for pattern in _ERROR_LINE_RES:
        match = pattern.search(text)
        if match:
            line, col, msg = match.groups()
            if 1 <= int(line) <= user_lines:
                return f"line {line}{':' + col if col else ''}: {msg.strip()}"
            return msg.strip()
    skip = {"GLSL Compiler failed", "GLSL Linker failed", "fragment_shader", "vertex_shader"}
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= set("=")]
    lines = [ln for ln in lines if ln not in skip]
    return lines[0] if lines else "compilation failed"


class _Renderer:
    def __init__(self):
        import moderngl

        from earthshader.glsl import MAX_OUTPUTS, VERTEX_SHADER

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
        self.dedupe = os.environ.get("EARTHSHADER_RENDER_DEDUPE", "1") != "0"
        # Bodies one draw renders (one colour attachment each); EARTHSHADER_RENDER_OUTPUTS=1 draws
        # them one by one.
        outputs = int(os.environ.get("EARTHSHADER_RENDER_OUTPUTS", MAX_OUTPUTS))
        self.max_outputs = max(1, min(outputs, MAX_OUTPUTS, int(self.ctx.info.get("GL_MAX_DRAW_BUFFERS", 1))))
        self.framebuffers = {}

    def program(self, source: str):
        return self.ctx.program(vertex_shader=self.vertex_shader, fragment_shader=source)

    def outputs(self, size: int) -> int:
        """Colour attachments of a combined program's framebuffer: as many as allowed up to 64 MiB."""
        return max(1, min(self.max_outputs, (64 << 20) // (size * size * 16)))

    def compile_batch(self, bodies: list[str], size: int, send) -> list[tuple[object, int | None, list[int]]]:
        """Draws to make, as (program, which, indices of the bodies it renders); compile errors are
        sent as found."""
        from earthshader.glsl import combine, draw_groups, wrap_prepared

        if len(bodies) > 1:
            groups = draw_groups(bodies, self.outputs(size))
            try:
                program = self.program(combine(bodies, self.dedupe, groups))
                return [(program, g, group) for g, group in enumerate(groups)]
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
            rest = [bodies[i] for i, _ in good]
            groups = draw_groups(rest, self.outputs(size))
            try:
                program = self.program(combine(rest, self.dedupe, groups))
                return [(program, g, [good[k][0] for k in group]) for g, group in enumerate(groups)]
            except self.gl.Error:  # names clash after all: draw each from its own program
                good = [(i, self.program(wrap_prepared(bodies[i]))) for i, _ in good]
        return [(program, None, [i]) for i, program in good]

    def _framebuffer(self, size: int, outputs: int):
        # One framebuffer for every draw of a program: llvmpipe JIT-compiles a program again for
        # each new set of colour attachments.
        fbo = self.framebuffers.get((size, outputs))
        if fbo is None:
            buffers = [self.ctx.renderbuffer((size, size), 4, dtype="f4") for _ in range(outputs)]
            fbo = self.framebuffers[size, outputs] = self.ctx.framebuffer(color_attachments=buffers)
        return fbo

    def draw(self, program, which: int | None, count: int, size: int, t: float):
        """Draw ``count`` bodies of a program at once (``which`` picks them in a combined program,
        None for a single one); yields (kind, message, payload) for each, in order."""
        fbo = self._framebuffer(size, 1 if which is None else self.outputs(size))
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
        vao.release()
        for j in range(count):
            yield check_pixels(fbo.read(components=4, dtype="f4", attachment=j), size)


def check_pixels(raw: bytes, size: int) -> tuple[str, str, bytes | None]:
    """(kind, message, payload) for one drawn RGBA float image: its loop budget, finiteness, pixels.

    The payload is the image as a display (and a PNG) would show it, so a saved image is the
    render, bit for bit: RGB, top row first, each channel ``rint(clip(c, 0, 1) * 255)``.
    """
    import numpy as np

    from earthshader.glsl import MAX_LOOP_ITERATIONS

    rgba = np.frombuffer(raw, dtype=np.float32).reshape(size, size, 4)
    alpha = rgba[..., 3]  # 1 + the pixel's loop iterations, always finite
    if alpha.max() > MAX_LOOP_ITERATIONS + 1.5:
        over_budget = int((alpha > MAX_LOOP_ITERATIONS + 1.5).sum())
        msg = f"loop ran past {MAX_LOOP_ITERATIONS} iterations in {over_budget} of {size * size} pixels"
        return "timeout", msg, None
    if not np.isfinite(rgba).all():  # one pass over all four channels, then the precise count
        bad = int((~np.isfinite(rgba[..., :3]).all(axis=2)).sum())
        if bad:
            return (
                "invalid_output",
                f"non-finite output (NaN/Inf, or never written) in {bad} of {size * size} pixels",
                None,
            )
    q = np.clip(rgba, np.float32(0.0), np.float32(1.0))
    q *= np.float32(255.0)
    # Adding 1.5 * 2**23 rounds a float in [0, 255] to the nearest integer, ties to even (as rint),
    # and leaves that integer in the float's lowest byte: one pass instead of rint and a cast.
    q += np.float32(12582912.0)
    low = 0 if sys.byteorder == "little" else 3
    return "ok", "", q.view(np.uint8).reshape(size, size, 16)[::-1, :, low:12:4].tobytes()


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    renderer = _Renderer()
    conn_out.send(("ready", renderer.ctx.info.get("GL_RENDERER", "unknown")))
    while True:
        job = conn_in.recv()
        if job is None:
            return
        bodies, size, t = job
        draws = renderer.compile_batch(bodies, size, conn_out.send)
        programs = {id(program): program for program, _, _ in draws}
        conn_out.send(("compiled", [indices for _, _, indices in draws], len(programs)))
        for program, which, indices in draws:
            for i, (kind, message, payload) in zip(
                indices, renderer.draw(program, which, len(indices), size, t), strict=True
            ):
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
