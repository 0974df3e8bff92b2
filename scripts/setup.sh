#!/usr/bin/env bash
# Set up everything `make demo` and `make test` need, idempotently:
#   1. Mesa's EGL/GL libraries (apt-get) when they are missing, and jemalloc, which the render
#      workers use where it is installed (~1.08x the shaders a second; optional: a failure is reported),
#   2. a virtual environment in .venv,
#   3. PyTorch: a CUDA build already on the system is kept; otherwise the CPU build torch==2.13.0
#      (never an unpinned torch, which would pull several GB of CUDA packages),
#   4. the project with its train and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

# Read the linker's cache once: `ldconfig -p | grep -q` fails under pipefail when grep stops early.
libs=$(ldconfig -p 2>/dev/null || true)
need_gl=0
for lib in libEGL.so.1 libEGL_mesa.so.0 libGLESv2.so.2 libGL.so.1; do
  grep -q "$lib" <<<"$libs" || need_gl=1
done
if [ "$need_gl" = 1 ]; then
  echo "setup: installing Mesa's EGL libraries"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 >/dev/null
fi
if ! grep -q libjemalloc.so.2 <<<"$libs"; then
  echo "setup: installing jemalloc for the render workers (optional)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"  # never wait at a password prompt for an option
  if ! { timeout 300 $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 \
      $SUDO apt-get install -y -qq libjemalloc2 >/dev/null; } 2>/dev/null; then
    echo "setup: jemalloc not installed; the render workers use the system's malloc (slower, same images)"
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  # System site-packages let a GPU machine's CUDA PyTorch show through.
  "$PY" -m venv --system-site-packages "$VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q --upgrade pip
fi

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing PyTorch's CPU build (torch==2.13.0)"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q torch==2.13.0
fi

echo "setup: installing earthshader[train,dev]"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q -e ".[train,dev]"
