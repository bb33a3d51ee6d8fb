"""Metadata of an exported artefact (ONNX ``metadata_props`` or an engine's sidecar), checked.

The one reader of both: ``engine.py`` (build, on a device without onnx or torch), ``validate``
and ``serve`` come here. ONNX files are read with the runtime's protobuf walk, not onnx.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mrcnn_edge.core.contract import ENGINE_SUFFIXES
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import decode, read_sidecar

__all__ = ["read_onnx_metadata", "read_model_metadata"]


def read_onnx_metadata(path: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """(``OnnxInfo`` of the file, its decoded ``metadata_props``); one-line errors, no key required."""
    from mrcnn_edge.core.onnx_info import read_onnx_info

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model {path} not found" if not path.exists() else f"{path} is not a file")
    try:
        info = read_onnx_info(path)
    except UserError as exc:
        raise UserError(f"cannot read {path} as an ONNX model: {exc}") from exc
    try:
        return info, decode(info.metadata)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path.name}: its mrcnn-edge metadata is not valid JSON ({exc})") from exc


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of ``model.onnx`` or ``model.engine``; one-line errors when absent."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"model {p} not found")
    if p.suffix.lower() in ENGINE_SUFFIXES:
        meta = read_sidecar(p)
    else:
        _, meta = read_onnx_metadata(p)
    missing = [k for k in ("input_size", "batch", "num_classes") if k not in meta]
    if missing:
        raise UserError(f"{p} carries no mrcnn-edge metadata ({', '.join(missing)} missing): export it with 'mrcnn-edge export'")
    return meta
