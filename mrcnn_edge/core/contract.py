"""The contract between the parts, in one place and without heavy imports.

Every fact that more than one part of mrcnn-edge relies on is defined here once: the I/O tensor
names of an exported model, the metadata keys that travel with it, TensorRT's limits that shape the
graph, the plugin's identity and its attribute table, the flavors and precisions, the file
suffixes. The runtime imports this module on a Jetson, so it imports nothing beyond the standard
library. ``docs/DESIGN.md`` describes the same contract in prose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

__all__ = [
    "INPUT_NAME", "CANVAS_MULTIPLE", "canvas_problem", "OUTPUT_NAMES", "OutputSpec", "OUTPUTS", "OUTPUT_SPECS", "num_detections_of", "MODEL_KEYS", "SIDECAR_KEYS", "REQUIRED_KEYS",
    "TRT_NMS_MAX_BOXES", "TRT_TOPK_MAX_K",
    "PLUGIN_NAME", "PLUGIN_VERSION", "PLUGIN_NAMESPACE", "PLUGIN_DOMAIN", "PLUGIN_MAX_LEVELS",
    "PLUGIN_MAX_SAMPLING_RATIO", "PluginAttribute", "PLUGIN_ATTRIBUTES", "plugin_identity",
    "plugin_attribute_defaults", "check_plugin_attributes", "fpn_level_range",
    "FLAVORS", "PRECISIONS", "QUANTIZED_PRECISIONS", "ALL_PRECISIONS", "CALIBRATION_LIMIT", "MASK_HEADS", "DEFAULT_MASK_HEAD", "OPTIONAL_KEYS",
    "VALIDATED_PRECISION_BOUNDS", "validated_drop",
    "INPUT_NORMALIZATIONS", "feed_mean_std", "DEVICES", "ONNX_SUFFIXES", "ENGINE_SUFFIXES",
]

# ---- engine I/O ------------------------------------------------------------------------------------
INPUT_NAME = "images"
"""``images [B,3,H,W]`` float32 (float16 for fp16 models): RGB, ``(x/255 - mean)/std``, letterboxed
top-left into the canvas, zeros elsewhere."""

CANVAS_MULTIPLE = 32
"""Both sides of a model's canvas ``H x W`` are multiples of this: the backbone's coarsest stride
(1/32), so that every feature map tiles the canvas exactly."""


def canvas_problem(height: int, width: int) -> str | None:
    """Why ``height x width`` cannot be a model's canvas, or None when it can (the one canvas rule)."""
    if height <= 0 or width <= 0 or height % CANVAS_MULTIPLE or width % CANVAS_MULTIPLE:
        return f"both sides must be positive multiples of {CANVAS_MULTIPLE}"
    return None


@dataclass(frozen=True)
class OutputSpec:
    """One output of an exported model: its name, its shape rule and its dtype per precision.

    ``dims`` holds symbols and numbers: ``"B"`` the batch, ``"K"`` ``max_detections``, ``"M"`` the
    mask size; numbers are fixed sizes. ``dtype`` is the numpy name for fp32 and int8 models,
    ``dtype_fp16`` the one for fp16 models."""

    name: str
    dims: tuple[str | int, ...]
    dtype: str
    dtype_fp16: str
    meaning: str

    def shape(self, batch: int, max_detections: int, mask_size: int) -> tuple[int, ...]:
        """The concrete shape of this output for a model of these sizes."""
        sizes = {"B": batch, "K": max_detections, "M": mask_size}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)

    def dtype_for(self, precision: str) -> str:
        """numpy dtype name of this output in a model of ``precision`` (fp32, fp16 or int8)."""
        return self.dtype_fp16 if precision == "fp16" else self.dtype


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec("num_detections", ("B", 1), "int32", "int32",
               "valid rows per image; [B,1] so that each frame's layer has one element (nvinfer splits "
               "outputs per frame); models exported before 0.2 have [B], which the runtime still reads"),
    OutputSpec("boxes", ("B", "K", 4), "float32", "float32", "x1, y1, x2, y2 in canvas pixels"),
    OutputSpec("scores", ("B", "K"), "float32", "float32", "descending; 0 past num_detections"),
    OutputSpec("classes", ("B", "K"), "int32", "int32",
               "torchvision label ids (0 is background, never returned); -1 past num_detections"),
    OutputSpec("masks", ("B", "K", "M", "M"), "float32", "float16",
               "probability of each detection's own class, M x M (28 for the standard head)"),
)
"""The engine I/O contract's outputs, in order: export, runners, serving and tests read shapes and
dtypes from here."""
OUTPUT_NAMES = tuple(o.name for o in OUTPUTS)
OUTPUT_SPECS: dict[str, OutputSpec] = {o.name: o for o in OUTPUTS}


def num_detections_of(value: Any) -> list[int]:
    """Per-image valid-row counts from a ``num_detections`` output of shape ``[B,1]`` or, from models
    exported before the ``[B,1]`` contract, ``[B]``. Works on any array-like with ``tolist()``."""
    rows = value.tolist() if hasattr(value, "tolist") else list(value)
    return [int(r[0]) if isinstance(r, (list, tuple)) else int(r) for r in rows]


# ---- metadata (ONNX metadata_props and the engine sidecar; values JSON-encoded strings) -------------
MODEL_KEYS = (
    "mrcnn_edge_version", "arch", "num_classes", "class_names", "input_size", "batch", "mean", "std",
    "channel_order", "max_detections", "score_threshold", "mask_size", "flavor", "precision", "plugin",
    "opset",
)
SIDECAR_KEYS = MODEL_KEYS + ("tensorrt_version", "onnx_sha256", "plugin_library")
OPTIONAL_KEYS = ("input_normalization", "mask_head", "calibration", "validated_precisions")
"""Keys present only where they say something: ``input_normalization`` ("in_graph": the graph takes
0-255 RGB and applies mean/std itself; absent or "external": the feeder normalises),
``mask_head`` ("detections": the mask head runs on the real detections only; absent or "static":
on all ``max_detections`` rows), ``calibration`` (INT8 models: ``{"images", "folder", "canvas",
"method"}``, what ``mrcnn-edge quantize`` calibrated on), ``validated_precisions`` (precisions a
CPU engine may pick by itself for this model, as measured by ``mrcnn-edge validate`` on annotated
images: ``{"bf16": {"engine", "mask_AP", "fp32_mask_AP", "images", "annotations", "date"}}``;
written only for a precision within its ``VALIDATED_PRECISION_BOUNDS``)."""
VALIDATED_PRECISION_BOUNDS: dict[str, float] = {"bf16": 0.01}
"""Precision -> the most mask AP it may lose against fp32 (the model's float parts in fp32; for an
INT8 model its own float parts), on the model's own annotated images, to be recorded in
``validated_precisions`` and chosen by a CPU engine without being asked."""


def validated_drop(metadata: Mapping[str, Any], precision: str) -> float | None:
    """The mask AP ``precision`` loses against fp32 according to the model's ``validated_precisions``
    record, when there is one within the precision's bound; None otherwise: not measured, measured
    outside the bound, or measured against an fp32 mask AP within the bound of 0 (a model that finds
    almost nothing right vouches for nothing: losing all of its AP would be within the bound). A
    hand-edited record is not trusted beyond what it says."""
    record = (metadata.get("validated_precisions") or {}).get(precision)
    bound = VALIDATED_PRECISION_BOUNDS.get(precision)
    if not isinstance(record, Mapping) or bound is None:
        return None
    try:
        reference = float(record["fp32_mask_AP"])
        drop = reference - float(record["mask_AP"])
    except (KeyError, TypeError, ValueError):
        return None
    return drop if math.isfinite(drop) and drop <= bound and reference > bound else None
REQUIRED_KEYS = ("input_size", "mean", "std", "class_names")
"""What the runtime cannot do without; the other keys have defaults there."""

# ---- TensorRT limits that shape the graph ------------------------------------------------------------
TRT_NMS_MAX_BOXES = 5000
"""TensorRT's NMS layer considers at most this many boxes per call."""
TRT_TOPK_MAX_K = 3840
"""TensorRT's TopK layer returns at most this many elements."""

# ---- the plugin --------------------------------------------------------------------------------------
PLUGIN_NAME = "MultilevelRoIAlign"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "mrcnn_edge"
PLUGIN_DOMAIN = "mrcnn_edge"
"""ONNX domain of the plugin node (TensorRT's parser ignores it and looks the op up by name)."""
PLUGIN_MAX_LEVELS = 8          # kMaxLevels in plugins/roi_align_math.h
PLUGIN_MAX_SAMPLING_RATIO = 64  # kMaxSamplingRatio in plugins/roi_align_math.h


def plugin_identity() -> dict[str, str]:
    """The ``plugin`` metadata value of a model that needs the plugin."""
    return {"name": PLUGIN_NAME, "version": PLUGIN_VERSION, "namespace": PLUGIN_NAMESPACE}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def fpn_level_range(spatial_scales: Sequence[float]) -> tuple[int, int]:
    """``(k_min, k_max)`` of torchvision's ``LevelMapper``: ``-log2`` of the first and the last scale.

    Every scale must be a power of two (1/4, 1/8, ... as FPN maps are); the levels need not be
    consecutive or distinct: torchvision's MobileNetV3-FPN has two maps at 1/32, so k_min = k_max = 5
    and every ROI pools from the first map. Raises ``ValueError`` with one line otherwise.
    """
    scales = [float(s) for s in spatial_scales]
    if not 1 <= len(scales) <= PLUGIN_MAX_LEVELS:
        raise ValueError(f"spatial_scales must have 1 to {PLUGIN_MAX_LEVELS} entries, got {len(scales)}")
    levels = []
    for s in scales:
        if not (math.isfinite(s) and 0 < s <= 1):
            raise ValueError(f"spatial_scales must be in (0, 1] (feature pixels per canvas pixel), got {s:g}")
        k = -math.log2(s)
        if abs(k - round(k)) > 1e-6:
            raise ValueError(f"spatial_scales must be powers of two (1/4, 1/8, ...) as FPN maps are, got {s:g}")
        levels.append(int(round(k)))
    return levels[0], levels[-1]


@dataclass(frozen=True)
class PluginAttribute:
    """One attribute of the ``MultilevelRoIAlign`` node (and field of the plugin creator)."""

    name: str
    onnx_type: str                     # "int", "float" or "floats" (ONNX AttributeProto type)
    default: Any
    check: Callable[[Any], bool]
    requirement: str                   # what ``check`` demands, for the error line
    meaning: str


PLUGIN_ATTRIBUTES: tuple[PluginAttribute, ...] = (
    PluginAttribute("output_height", "int", 7, lambda v: _is_int(v) and 1 <= v <= 1024,
                    "an integer from 1 to 1024", "bins along y"),
    PluginAttribute("output_width", "int", 7, lambda v: _is_int(v) and 1 <= v <= 1024,
                    "an integer from 1 to 1024", "bins along x"),
    PluginAttribute("sampling_ratio", "int", 2, lambda v: _is_int(v) and v <= PLUGIN_MAX_SAMPLING_RATIO,
                    f"an integer <= {PLUGIN_MAX_SAMPLING_RATIO} (<= 0: adaptive)",
                    "samples per bin side; <= 0 adaptive ceil(roi / bins)"),
    PluginAttribute("aligned", "int", 0, lambda v: v in (0, 1) and not isinstance(v, float),
                    "0 or 1", "1 shifts by -0.5 px (half-pixel, Detectron2); 0 is torchvision's Mask R-CNN"),
    PluginAttribute("spatial_scales", "floats", (0.25, 0.125, 0.0625, 0.03125),
                    lambda v: _levels_ok(v), f"1 to {PLUGIN_MAX_LEVELS} powers of two in (0, 1]",
                    "feature pixels per canvas pixel, one per map, finest first"),
    PluginAttribute("canonical_scale", "float", 224.0, _finite_positive,
                    "a positive finite number", "FPN level rule: ROI size of the canonical level"),
    PluginAttribute("canonical_level", "int", 4, lambda v: _is_int(v) and 0 <= v <= 64,
                    "an integer from 0 to 64", "FPN level rule: level of a canonical_scale ROI"),
)


def _levels_ok(v: Any) -> bool:
    try:
        fpn_level_range(v)
    except (TypeError, ValueError):
        return False
    return True


def plugin_attribute_defaults() -> dict[str, Any]:
    return {a.name: (list(a.default) if isinstance(a.default, tuple) else a.default) for a in PLUGIN_ATTRIBUTES}


def check_plugin_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes with defaults filled in, checked; ``ValueError`` (one line) naming the first bad one.

    Unknown names are refused, as the plugin creator refuses them."""
    known = {a.name: a for a in PLUGIN_ATTRIBUTES}
    unknown = sorted(set(attrs) - set(known))
    if unknown:
        raise ValueError(f"{PLUGIN_NAME} has no attribute {unknown[0]!r} (it has {', '.join(known)})")
    out = plugin_attribute_defaults()
    for name, value in attrs.items():
        a = known[name]
        if a.onnx_type == "floats":
            value = [float(x) for x in value]
        elif a.onnx_type == "float":
            value = float(value)
        if not a.check(value):
            if name == "spatial_scales":
                fpn_level_range(value)  # raises with the precise reason
            raise ValueError(f"{PLUGIN_NAME} attribute {name} must be {a.requirement}, got {value!r}")
        out[name] = value
    return out


# ---- variants and files ------------------------------------------------------------------------------
# One table per variant kind, name -> what it means: the command line takes its choices and help
# from here, the exporter and the graph check against it.
FLAVORS: dict[str, str] = {
    "tensorrt": "multi-level ROIAlign as one MultilevelRoIAlign plugin node; for TensorRT engines",
    "portable": "standard ONNX ops only (RoiAlign per level); any ONNX Runtime, TensorRT without the plugin",
}
PRECISIONS: dict[str, str] = {
    "fp32": "float32 throughout",
    "fp16": "backbone and heads in float16; boxes, levels and NMS in float32",
}
"""Precision of the exported graph (INT8 is a Q/DQ model made from one of these by ``quantize``)."""
QUANTIZED_PRECISIONS = {"int8": "fp32"}
"""Precision of a Q/DQ model -> the precision of the exported model it is made from: INT8 Q/DQ
(symmetric, per-channel weights) on convolutions and fully connected layers of an fp32 model."""
ALL_PRECISIONS = tuple(PRECISIONS) + tuple(QUANTIZED_PRECISIONS)
CALIBRATION_LIMIT = 200
"""Calibration images ``quantize`` uses at most unless told (the first ones, sorted)."""
MASK_HEADS: dict[str, str] = {
    "static": "mask head on all max_detections rows (static shapes: TensorRT, any engine)",
    "detections": "mask head on the real detections only (data-dependent shape: CPU engines)",
}
"""The ``mask_head`` metadata key's values (absent means ``static``)."""
DEFAULT_MASK_HEAD: dict[str, str] = {"tensorrt": "static", "portable": "detections"}
"""Flavor -> the mask head an export gets unless told otherwise: the ``tensorrt`` flavor keeps static
shapes (its engines need them); the ``portable`` flavor, made for CPU engines, runs the mask head on
the real detections only (the same outputs as the static graph, tested; the demo graph at 512x512
is 37.9 GFLOP with the static head, 19.8 GFLOP with the head on 30 detections)."""
INPUT_NORMALIZATIONS = ("external", "in_graph")


def feed_mean_std(input_normalization: str | None, mean: Sequence[float],
                  std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` with which a feeder makes a model's input as ``(x/255 - mean)/std`` per RGB
    channel (the one in-graph feed rule): the model's own ``mean``/``std`` when the metadata's
    ``input_normalization`` is "external" or absent; ``(0, 0, 0)`` and ``(1/255, ...)`` for an
    "in_graph" model, which takes 0-255 RGB (x unchanged) and normalises itself."""
    if input_normalization == "in_graph":
        return (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)

DEVICES = ("auto", "cpu", "cuda")
"""Where the runtime runs pre/post-processing (and ONNX Runtime its providers): ``auto`` picks the GPU
when the backend is on one."""
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
