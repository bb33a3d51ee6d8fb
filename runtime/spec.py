"""What a model must look like to the runtime: tensor names, shapes and metadata, checked once.

The contract is DESIGN.md's "Engine I/O contract"; this module turns a backend's tensor list plus
the artefact's metadata (ONNX ``metadata_props`` or the engine sidecar) into a :class:`ModelSpec`,
or one ``UserError`` line saying what is missing and how to get a conforming model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.contract import INPUT_NAME, INPUT_NORMALIZATIONS, OUTPUT_NAMES, REQUIRED_KEYS
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import EXPORT_HINT, require_keys

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "REQUIRED_KEYS", "TensorSpec", "ModelSpec", "model_spec"]



@dataclass(frozen=True)
class TensorSpec:
    """One I/O tensor as the backend reports it; ``None`` for a dimension that is not static."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """The model as the runtime uses it (all from the artefact; nothing assumed)."""

    path: Path
    input_hw: tuple[int, int]          # canvas H, W
    batch: int                         # B of images [B,3,H,W]
    input_dtype: np.dtype              # float32, or float16 for fp16 models
    mean: tuple[float, float, float]   # RGB, 0..1 units (torchvision's image_mean)
    std: tuple[float, float, float]
    class_names: tuple[str, ...]       # index = class id; 0 is "__background__"
    mask_size: int                     # M of masks [B,K,M,M]
    max_detections: int                # K
    precision: str = "fp32"
    flavor: str = "portable"
    # "in_graph": the model takes 0-255 RGB and normalises itself (feed x*1 + 0); "external": feed
    # (x/255 - mean)/std. The padding stays 0 either way (see mrcnn_edge.model.edge's docstring).
    input_normalization: str = "external"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def class_name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)


def _floats3(meta: Mapping[str, Any], key: str, path: Path) -> tuple[float, float, float]:
    v = meta[key]
    try:
        vals = tuple(float(x) for x in v)
    except (TypeError, ValueError):
        vals = ()
    if len(vals) != 3 or not all(np.isfinite(vals)):
        raise UserError(f"{path}: metadata '{key}' must be 3 numbers (RGB, 0..1 units), got {v!r}")
    return vals  # type: ignore[return-value]


def model_spec(path: str | Path, meta: Mapping[str, Any], inputs: Mapping[str, TensorSpec],
               outputs: Mapping[str, TensorSpec]) -> ModelSpec:
    """Check a model against the I/O contract and its metadata; build its :class:`ModelSpec`."""
    path = Path(path)
    require_keys(meta, path, REQUIRED_KEYS, f"{EXPORT_HINT} (and build engines with 'mrcnn-edge build', "
                 "which writes the .json sidecar)")
    if INPUT_NAME not in inputs or len(inputs) != 1:
        raise UserError(f"{path}: expected one input named '{INPUT_NAME}', found {sorted(inputs)}")
    absent = [n for n in OUTPUT_NAMES if n not in outputs]
    if absent:
        raise UserError(
            f"{path}: missing outputs {absent} (has {sorted(outputs)}); "
            f"the runtime needs {', '.join(OUTPUT_NAMES)} (DESIGN.md engine I/O contract)"
        )
    counts = outputs["num_detections"].shape  # [B,1]; [B] from models exported before that contract
    if len(counts) not in (1, 2) or (len(counts) == 2 and counts[1] not in (1, None)):
        raise UserError(f"{path}: output 'num_detections' has shape {list(counts)}; the contract has [B,1] "
                        "(or [B] from older exports): re-export it with 'mrcnn-edge export'")
    order = str(meta.get("channel_order", "RGB"))
    if order.upper() != "RGB":
        raise UserError(f"{path}: channel_order {order!r} is not supported; models take RGB input")
    images = inputs[INPUT_NAME]
    if images.dtype not in (np.dtype(np.float32), np.dtype(np.float16)) or len(images.shape) != 4:
        raise UserError(f"{path}: input '{INPUT_NAME}' must be float32/float16 [B,3,H,W], got {images}")
    try:
        h, w = (int(x) for x in meta["input_size"])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: metadata input_size must be [H, W], got {meta['input_size']!r}") from exc
    shape = images.shape
    if shape[1] not in (3, None) or (shape[2], shape[3]) not in ((h, w), (None, None)):
        raise UserError(f"{path}: input '{INPUT_NAME}' has shape {list(shape)} but metadata input_size is [{h}, {w}]")
    batch = shape[0] if isinstance(shape[0], int) else int(meta.get("batch", 1))
    masks = outputs["masks"].shape
    mask_size = masks[-1] if isinstance(masks[-1], int) else int(meta.get("mask_size", 28))
    k = outputs["scores"].shape[-1]
    max_det = k if isinstance(k, int) else int(meta.get("max_detections", 100))
    mean, std = _floats3(meta, "mean", path), _floats3(meta, "std", path)
    if min(std) <= 0:
        raise UserError(f"{path}: metadata std must be positive, got {std}")
    norm = str(meta.get("input_normalization", "external"))
    if norm not in INPUT_NORMALIZATIONS:
        raise UserError(f"{path}: metadata input_normalization {norm!r} is not one of {', '.join(INPUT_NORMALIZATIONS)}")
    names = meta["class_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: metadata class_names must be a list of strings")
    if h <= 0 or w <= 0 or batch <= 0 or mask_size <= 0:
        raise UserError(f"{path}: bad sizes in metadata/shapes (input {h}x{w}, batch {batch}, mask {mask_size})")
    return ModelSpec(
        path=path, input_hw=(h, w), batch=batch, input_dtype=images.dtype, mean=mean, std=std,
        class_names=tuple(names), mask_size=mask_size, max_detections=max_det,
        precision=str(meta.get("precision", "fp32")), flavor=str(meta.get("flavor", "portable")),
        input_normalization=norm, metadata=dict(meta),
    )
