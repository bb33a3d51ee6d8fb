"""Self-describing artefacts: the one reader of the metadata every ONNX model and engine sidecar carries.

Values are JSON-encoded strings (ONNX ``metadata_props`` hold strings only). This module has no
heavy imports: the runtime, the engine build (on a device without torch or onnx), validation,
quantization and serving all read metadata through :func:`read_metadata` (or
:func:`read_onnx_metadata` when they also need the graph's nodes) and check the keys they need with
:func:`require_keys`, against the contract's ``REQUIRED_KEYS`` (to run a model) or ``MODEL_KEYS``
(to build, quantize, validate or serve it: every key an export writes).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from mrcnn_edge.core.contract import ENGINE_SUFFIXES, MODEL_KEYS, REQUIRED_KEYS, SIDECAR_KEYS
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.onnx_info import OnnxInfo, read_onnx_info

__all__ = [
    "MODEL_KEYS",
    "SIDECAR_KEYS",
    "encode",
    "decode",
    "sidecar_path",
    "read_sidecar",
    "write_sidecar",
    "set_onnx_metadata",
    "read_onnx_metadata",
    "read_metadata",
    "require_keys",
    "EXPORT_HINT",
]

# The keys are part of the contract (mrcnn_edge.core.contract); re-exported here for the readers.

EXPORT_HINT = "export it with 'mrcnn-edge export'"
"""What to do about a model without the metadata a reader needs (the default advice)."""


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


def set_onnx_metadata(proto: Any, meta: Mapping[str, Any]) -> None:
    """Make ``meta`` (JSON-encoded) the whole ``metadata_props`` of an ONNX ``ModelProto`` (no onnx
    import: the proto object is the caller's)."""
    del proto.metadata_props[:]
    for k, v in encode(meta).items():
        proto.metadata_props.add(key=k, value=v)


def read_onnx_metadata(path: str | os.PathLike) -> tuple[OnnxInfo, dict[str, Any]]:
    """(what the torch- and onnx-free reader found in the file, its decoded ``metadata_props``).

    One-line errors for a missing or unreadable file; no key is required here (see
    :func:`require_keys`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"ONNX model {path} not found")
    if not path.is_file():
        raise UserError(f"{path} is not a file")
    info = read_onnx_info(path)  # its errors name the file
    return info, decode(info.metadata)


def read_metadata(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS,
                  hint: str = EXPORT_HINT) -> dict[str, Any]:
    """The metadata of ``model.onnx`` (its ``metadata_props``) or ``model.engine`` (its sidecar),
    with the ``required`` keys present; one-line errors otherwise."""
    p = Path(path)
    if p.suffix.lower() in ENGINE_SUFFIXES:
        if not p.is_file():
            raise UserError(f"engine {p} not found" if not p.exists() else f"{p} is not a file")
        meta = read_sidecar(p)
    else:
        _, meta = read_onnx_metadata(p)
    require_keys(meta, p, required, hint)
    return meta


def require_keys(meta: Mapping[str, Any], path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS,
                 hint: str = EXPORT_HINT) -> None:
    """The one check of required metadata keys: a ``UserError`` line naming the file, the missing
    keys (the first four) and ``hint`` (what to do) when any of ``required`` is absent."""
    missing = [k for k in required if k not in meta]
    if not missing:
        return
    shown = ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")
    if not any(k in meta for k in MODEL_KEYS):
        raise UserError(f"{path} has no mrcnn-edge metadata ({shown} missing): {hint}")
    raise UserError(f"{path} lacks the mrcnn-edge metadata {shown}: {hint}")
