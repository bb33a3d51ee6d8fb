"""Metadata of an exported artefact (ONNX ``metadata_props`` or an engine's sidecar), checked."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mrcnn_edge.core.contract import ENGINE_SUFFIXES
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import MODEL_KEYS, decode, read_sidecar

__all__ = ["read_model_metadata"]


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of ``model.onnx`` or ``model.engine``; one-line errors when absent."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model {p} not found")
    if p.suffix.lower() in ENGINE_SUFFIXES:
        meta = read_sidecar(p)
    else:
        # the torch-free, onnx-free reader: engine builds and the runtime need no onnx
        from mrcnn_edge.runtime.onnx_info import read_onnx_info

        try:
            meta = decode(read_onnx_info(p).metadata)
        except UserError as exc:
            raise UserError(f"cannot read {p} as ONNX: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise UserError(f"{p}: its mrcnn-edge metadata is not valid JSON ({exc})") from exc
    missing = [k for k in ("input_size", "batch", "num_classes") if k not in meta]
    if missing:
        raise UserError(f"{p} carries no mrcnn-edge metadata ({', '.join(missing)} missing): export it with 'mrcnn-edge export'")
    unknown = [k for k in MODEL_KEYS if k not in meta]
    meta["_missing_keys"] = unknown
    return meta
