"""The `earthshader` command: one subcommand per stage.

Each subcommand lives in the module of its idea and exposes `cli_main(argv) -> int`; this file only
dispatches, so that `earthshader render` never imports torch. A `UsageError` (bad input) becomes one
line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from earthshader.errors import UsageError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "render": ("earthshader.render.cli", "render a Shadertoy shader file to PNG"),
    "data": ("earthshader.data", "build a dataset of (image, shader) pairs"),
    "init-model": ("earthshader.models", "build the embedded tiny Qwen2-VL"),
    "sft": ("earthshader.sft", "supervised warmup with weighted cross-entropy"),
    "grpo": ("earthshader.grpo", "render-in-the-loop GRPO"),
    "eval": ("earthshader.audit", "audit a model on held-out images"),
    "plot": ("earthshader.plots", "reward and loss curves from run logs"),
    "export": ("earthshader.export", "export a trained adapter or merged model"),
}


def _usage() -> str:
    lines = ["usage: earthshader COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(
            f"earthshader: error: unknown command {name!r} (one of: {', '.join(COMMANDS)})", file=sys.stderr
        )
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as exc:
        print(
            f"earthshader {name}: error: this command needs {exc.name!r}; install earthshader[train]",
            file=sys.stderr,
        )
        return 2
    try:
        return int(module.cli_main(rest) or 0)
    except UsageError as exc:
        print(f"earthshader {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"earthshader {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
