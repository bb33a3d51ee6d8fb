"""Tiny models and videos that follow the I/O contract, for tests, smoke runs and benchmarks.

:func:`make_contract_model` writes an ONNX model (needs the ``onnx`` package; opset 17) with the
exact inputs, outputs and metadata of an exported Mask R-CNN (DESIGN.md "Engine I/O contract"),
whose detections are simple functions of the input, so that the whole runtime (letterbox,
inference, box scaling, mask pasting) can be checked end to end without torch:

- ``boxes``, ``classes``, ``num_detections``: constants (the given canvas boxes; padding rows are
  zero with class -1); ``num_detections`` is ``[B,1]`` as the contract has it, or ``[B]`` as models
  exported before that (``legacy_num_detections=True``), which the runtime still reads;
- ``masks[b,k]`` = ``sigmoid(gain * RoiAlign(mean over RGB of images[b], boxes[k]))``: bright
  pixels inside a box give mask values near 1, dark ones near 0, canvas padding exactly 0.5;
- ``scores[b,k]`` = ``base_scores[k] * (0.5 + 0.5 * sigmoid(mean(images[b])))`` (descending).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_BOXES", "make_contract_model", "contract_metadata",
    "moving_squares", "write_video",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# canvas pixels (x1, y1, x2, y2) for a 128x160 canvas
DEFAULT_BOXES = ((8.0, 8.0, 88.0, 72.0), (64.0, 40.0, 152.0, 120.0), (0.0, 0.0, 40.0, 30.0))


def contract_metadata(canvas_hw: Sequence[int], batch: int, class_names: Sequence[str], mask_size: int,
                      max_detections: int, precision: str = "fp32", flavor: str = "portable",
                      mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> dict[str, Any]:
    """Every key of ``mrcnn_edge.core.metadata.MODEL_KEYS`` for a synthetic model."""
    from mrcnn_edge.core.contract import plugin_identity

    plugin = plugin_identity() if flavor == "tensorrt" else None
    return {
        "mrcnn_edge_version": "0.1.0", "arch": "synthetic", "num_classes": len(class_names),
        "class_names": list(class_names), "input_size": [int(canvas_hw[0]), int(canvas_hw[1])],
        "batch": int(batch), "mean": list(mean), "std": list(std), "channel_order": "RGB",
        "max_detections": int(max_detections), "score_threshold": 0.05, "mask_size": int(mask_size),
        "flavor": flavor, "precision": precision, "plugin": plugin, "opset": 17,
    }


def make_contract_model(path: str | Path, *, canvas_hw: Sequence[int] = (128, 160), batch: int = 1,
                        mask_size: int = 8, boxes: Sequence[Sequence[float]] = DEFAULT_BOXES,
                        classes: Sequence[int] = (1, 2, 1), base_scores: Sequence[float] = (0.9, 0.8, 0.7),
                        max_detections: int = 5, class_names: Sequence[str] = ("__background__", "square", "disk"),
                        precision: str = "fp32", flavor: str = "portable", gain: float = 4.0,
                        metadata: Mapping[str, Any] | None = None, with_metadata: bool = True,
                        legacy_num_detections: bool = False) -> Path:
    """Write a contract-conforming ONNX model to ``path`` (see the module docstring). Its outputs
    are ``contract.OUTPUTS``: names, shapes and dtypes (per ``precision``) from there."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mrcnn_edge.core.contract import OUTPUTS, PLUGIN_DOMAIN, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
    from mrcnn_edge.core.metadata import encode

    h, w = int(canvas_hw[0]), int(canvas_hw[1])
    n, k, m, b = len(boxes), int(max_detections), int(mask_size), int(batch)
    if not (len(classes) == len(base_scores) == n <= k):
        raise ValueError("boxes, classes and base_scores must have the same length, at most max_detections")
    fp16 = precision == "fp16"
    in_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    box_rows = np.zeros((k, 4), np.float32)
    box_rows[:n] = np.asarray(boxes, np.float32)
    cls_rows = np.full((k,), -1, np.int32)
    cls_rows[:n] = classes
    base = np.zeros((1, k), np.float32)
    base[0, :n] = base_scores
    valid = np.zeros((1, k, 1, 1), np.float32)
    valid[0, :n] = 1.0

    def const(name: str, value: np.ndarray) -> Any:
        return numpy_helper.from_array(np.ascontiguousarray(value), name)

    inits = [
        const("rois", np.tile(box_rows, (b, 1))), const("roi_batch", np.repeat(np.arange(b, dtype=np.int64), k)),
        const("gain", np.float32(gain)), const("half", np.float32(0.5)), const("base", base),
        const("valid", valid), const("mask_shape", np.array([b, k, m, m], np.int64)),
        const("boxes_c", np.tile(box_rows[None], (b, 1, 1))), const("classes_c", np.tile(cls_rows[None], (b, 1))),
        const("num_c", np.full((b,) if legacy_num_detections else (b, 1), n, np.int32)),
        const("axis1", np.array([1], np.int64)),
    ]
    nodes = [helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("ReduceMean", ["x"], ["gray"], axes=[1], keepdims=1))
    if flavor == "tensorrt":
        nodes.append(helper.make_node(
            PLUGIN_NAME, ["rois", "gray"], ["pooled"], domain=PLUGIN_DOMAIN,
            output_height=m, output_width=m, sampling_ratio=2, aligned=0, spatial_scales=[1.0],
            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE))
    else:
        nodes.append(helper.make_node(
            "RoiAlign", ["gray", "rois", "roi_batch"], ["pooled"], mode="avg", output_height=m,
            output_width=m, sampling_ratio=2, spatial_scale=1.0, coordinate_transformation_mode="half_pixel"))
    nodes += [
        helper.make_node("Mul", ["pooled", "gain"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["prob"]),
        helper.make_node("Reshape", ["prob", "mask_shape"], ["prob4"]),
        helper.make_node("Mul", ["prob4", "valid"], ["masks32"]),
        helper.make_node("Cast", ["masks32"], ["masks"], to=helper.np_dtype_to_tensor_dtype(
            np.dtype(next(o for o in OUTPUTS if o.name == "masks").dtype_for(precision)))),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sigmoid", ["mean"], ["smean"]),
        helper.make_node("Mul", ["smean", "half"], ["s1"]),
        helper.make_node("Add", ["s1", "half"], ["s2"]),
        helper.make_node("Unsqueeze", ["s2", "axis1"], ["s3"]),
        helper.make_node("Mul", ["s3", "base"], ["scores"]),
        helper.make_node("Identity", ["boxes_c"], ["boxes"]),
        helper.make_node("Identity", ["classes_c"], ["classes"]),
        helper.make_node("Identity", ["num_c"], ["num_detections"]),
    ]
    outputs = []
    for o in OUTPUTS:  # the contract's names, shape rule and dtype per precision, in its order
        shape = list(o.shape(b, k, m))
        if o.name == "num_detections" and legacy_num_detections:
            shape = shape[:1]
        outputs.append(helper.make_tensor_value_info(
            o.name, helper.np_dtype_to_tensor_dtype(np.dtype(o.dtype_for(precision))), shape))
    graph = helper.make_graph(nodes, "contract", [helper.make_tensor_value_info("images", in_type, [b, 3, h, w])],
                              outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(PLUGIN_DOMAIN, 1)] if flavor == "tensorrt" else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="mrcnn_edge.runtime.testing")
    model.ir_version = 8
    if with_metadata:
        meta = contract_metadata((h, w), b, class_names, m, k, precision, flavor)
        meta.update(metadata or {})
        helper.set_model_props(model, encode(meta))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def moving_squares(count: int, hw: Sequence[int] = (480, 640), side: int = 120, seed: int = 0) -> Iterator[np.ndarray]:
    """BGR uint8 frames: a white square moving over a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    h, w = int(hw[0]), int(hw[1])
    for i in range(count):
        frame = rng.integers(0, 30, size=(h, w, 3), dtype=np.uint8)
        x = int((w - side) * (0.5 + 0.5 * np.sin(i / 15.0)))
        y = int((h - side) * (0.5 + 0.5 * np.cos(i / 23.0)))
        frame[y:y + side, x:x + side] = 255
        yield frame


def write_video(path: str | Path, frames: Iterator[np.ndarray] | Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """Write BGR frames to ``path`` (``.avi``: MJPG, ``.mp4``: mp4v)."""
    import cv2

    path = Path(path)
    writer = None
    try:
        for frame in frames:
            if writer is None:
                fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
                writer = cv2.VideoWriter(str(path), fourcc, fps, (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write {path}")
            writer.write(frame)
    finally:
        if writer is not None:
            writer.release()
    return path
