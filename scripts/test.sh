#!/usr/bin/env bash
# Run the test suite (creates or reuses .venv first). Extra arguments go to pytest.
source "$(dirname "$0")/_env.sh"
exec python -m pytest -q "$@"
