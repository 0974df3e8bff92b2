"""Build the embedded tiny Qwen2-VL (about 4M parameters) with its GLSL tokenizer and processor.

Deterministic and offline; by default into $EARTHSHADER_HOME/tiny-<hash> (~/.cache/earthshader), where
`model_name_or_path: tiny` finds it. Training builds it on first use anyway; this makes it explicit.

    python scripts/init_model.py [--out DIR] [--overwrite]

Same as `earthshader init-model ...`.
"""

import sys

from earthshader.cli import main

if __name__ == "__main__":
    sys.exit(main(["init-model", *sys.argv[1:]]))
