"""mrcnn_edge.runtime: run an exported Mask R-CNN on frames, with no torch (Jetson-friendly).

    from mrcnn_edge.runtime import Segmenter
    with Segmenter.from_path("model.engine") as seg:      # or "model.onnx"
        dets = seg(frame)                                  # H×W×3 uint8 BGR
        dets.boxes, dets.scores, dets.class_names, dets.masks, dets.instance_map()
        cv2.imwrite("out.jpg", dets.draw(frame))

Names are imported on first use, so ``import mrcnn_edge.runtime`` stays cheap and imports
neither torch nor onnxruntime, TensorRT or cuda-python.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY = {
    "Segmenter": "segmenter", "Work": "segmenter", "DEFAULT_SCORE_THRESHOLD": "segmenter",
    "Detections": "detections",
    "Backend": "backends", "BACKENDS": "backends", "open_backend": "backends",
    "OrtBackend": "backends.ort", "register_custom_op_domain": "backends.ort",
    "TrtBackend": "backends.trt",
    "ModelSpec": "spec", "TensorSpec": "spec",
    "Letterbox": "preprocess", "letterbox": "preprocess",
    "paste_masks": "postprocess", "instance_map": "postprocess", "overlay": "postprocess",
    "as_bgr8": "frames",
    "rle_encode": "coco",
    "open_source": "io.sources", "csi_pipeline": "io.sources", "Source": "io.sources", "Frame": "io.sources",
    "open_sink": "io.outputs", "Sink": "io.sinks",
    "Pipeline": "pipeline", "RunStats": "pipeline", "Batcher": "batcher", "BatchStats": "batcher",
    "CudaOps": "gpu.cuda_ops",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mrcnn_edge.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
