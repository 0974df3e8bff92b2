"""``earthshader render SHADER.glsl -o OUT.png [--size N] [--time T]``.

Exit 0 and a PNG on success; on failure exit 1 and one line ``KIND: FILE:LINE:COL: message``
(``FILE:LINE: message`` where the driver gives no column, as NVIDIA's does).
"""

from __future__ import annotations

import os
import re
import sys

from earthshader.errors import ArgumentParser, UsageError


def cli_main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="earthshader render", description=__doc__.splitlines()[0])
    parser.add_argument("shader", help="a Shadertoy-style .glsl file defining mainImage")
    parser.add_argument("-o", "--out", required=True, help="PNG to write")
    parser.add_argument("--size", type=int, default=128, help="width and height in pixels (default 128)")
    parser.add_argument("--time", type=float, default=0.0, help="iTime in seconds (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)

    if not 1 <= args.size <= 4096:
        raise UsageError(f"--size must be between 1 and 4096, not {args.size}")
    if os.path.exists(args.out) and not args.overwrite:
        raise UsageError(f"{args.out} exists (pass --overwrite to replace it)")
    try:
        with open(args.shader, encoding="utf-8", errors="surrogateescape") as f:
            source = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.shader}: {exc.strerror}") from None

    from PIL import Image

    from earthshader.render import RenderPool

    with RenderPool(workers=1) as pool:
        result = pool.render(source, size=args.size, time=args.time)
    if not result.ok:
        message = re.sub(r"^line (\d+(?::\d+)?): ", rf"{args.shader}:\1: ", result.message)
        message = re.sub(r"\(line (\d+)\)$", rf"({args.shader}:\1)", message)
        print(f"{result.kind}: {message}", file=sys.stderr)
        return 1
    pixels = (result.image * 255.0 + 0.5).astype("uint8")
    tmp = args.out + ".tmp"
    Image.fromarray(pixels).save(tmp, format="PNG")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} ({args.size}x{args.size}, {result.seconds * 1000:.0f} ms)")
    return 0
