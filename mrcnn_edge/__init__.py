"""mrcnn-edge: a trained torchvision Mask R-CNN, exported to ONNX and TensorRT, run at the edge.

This module stays light: ``import mrcnn_edge.runtime`` imports it on a Jetson with no torch, so
everything that needs torch is loaded on first use (``mrcnn_edge.load_checkpoint`` and friends).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it; imported on first attribute access
_LAZY = {
    "load_checkpoint": "mrcnn_edge.model.checkpoint",
    "save_checkpoint": "mrcnn_edge.model.checkpoint",
    "build_model": "mrcnn_edge.model.checkpoint",
    "ModelConfig": "mrcnn_edge.core.config",
    "EdgeMaskRCNN": "mrcnn_edge.model.edge",
    "demo_checkpoint": "mrcnn_edge.model.assets",
    "UserError": "mrcnn_edge.core.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mrcnn_edge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
