#!/usr/bin/env bash
# The main job, end to end on the shipped demo model (creates or reuses .venv first).
# Extra arguments go to 'mrcnn-edge demo' (see --help).
source "$(dirname "$0")/_env.sh"
exec mrcnn-edge demo "$@"
