# Sourced by the quick-start scripts: create or reuse .venv and install what the project needs.
# Reinstalls only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MRCNN_EDGE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "mrcnn-edge needs Python >= 3.10 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.mrcnn-edge-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/_env.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[setup] installing mrcnn-edge and its dependencies into $VENV (first run: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch/torchvision pinned to the releases this project is tested with; on aarch64 the CPU
  # wheels of an older pair are the ones that install without CUDA.
  if [ "$(uname -m)" = "aarch64" ]; then TORCH="torch==2.9.1 torchvision==0.24.1"; else TORCH="torch==2.14.1 torchvision==0.29.1"; fi
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q $TORCH
  "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
