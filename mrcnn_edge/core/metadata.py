"""Self-describing artefacts: the metadata keys every ONNX model and engine sidecar carries.

Values are JSON-encoded strings (ONNX ``metadata_props`` hold strings only). This module has no
heavy imports: the runtime reads metadata on a Jetson without torch or onnx.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from mrcnn_edge.core.contract import MODEL_KEYS, SIDECAR_KEYS
from mrcnn_edge.core.errors import UserError

__all__ = [
    "MODEL_KEYS",
    "SIDECAR_KEYS",
    "encode",
    "decode",
    "sidecar_path",
    "read_sidecar",
    "write_sidecar",
]

# The keys are part of the contract (mrcnn_edge.core.contract); re-exported here for the readers.


def encode(meta: Mapping[str, Any]) -> dict[str, str]:
    """JSON-encode every value (the form stored in ONNX ``metadata_props`` and sidecars)."""
    return {k: json.dumps(v) for k, v in meta.items()}


def decode(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode`; a value that is not JSON is kept as the raw string."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of an engine, from its sidecar; one-line error when missing or unreadable."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise UserError(
            f"{path} not found: an engine needs its sidecar metadata (rebuild it with 'mrcnn-edge build')"
        )
    try:
        props = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read engine metadata {path}: {exc}") from exc
    if not isinstance(props, dict):
        raise UserError(f"engine metadata {path} is not a JSON object")
    return decode(props) if all(isinstance(v, str) for v in props.values()) else props


def write_sidecar(engine_path: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically (JSON-encoded values, like ONNX metadata_props)."""
    from mrcnn_edge.core.atomic import atomic_output

    path = sidecar_path(engine_path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(encode(meta), indent=2, sort_keys=True) + "\n")
    return path
