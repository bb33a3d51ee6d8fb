#!/usr/bin/env bash
# Run the test suite (creates or reuses .venv first). Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
# Beside a checkout (and beside CI's fresh clone) shared/ holds TensorRT's header sets (10.3, 10.16,
# 11.1): with them the plugin tests compile the plugin class against each instead of skipping.
if [[ -z "${MRCNN_EDGE_TRT_HEADERS:-}" && -d ../shared/tensorrt-headers ]]; then
  export MRCNN_EDGE_TRT_HEADERS="$(cd ../shared/tensorrt-headers && pwd)"
fi
exec python -m pytest -q "$@"
