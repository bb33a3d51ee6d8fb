"""OpenCV, imported in one place, with one line saying where to get it when it is missing.

OpenCV is not a dependency of the base install: on a Jetson, pip's wheels would shadow JetPack's
GStreamer-enabled OpenCV. Every runtime module takes ``cv2`` from here.
"""
from __future__ import annotations

from mrcnn_edge.core.errors import UserError

__all__ = ["cv2", "OpenCVMissing", "OPENCV_MISSING"]

OPENCV_MISSING = (
    "OpenCV (cv2) is not installed: on a Jetson use JetPack's (sudo apt install nvidia-opencv, in a venv made "
    "with --system-site-packages); elsewhere pip install 'mrcnn-edge[opencv]'"
)


class OpenCVMissing(UserError, ImportError):
    """cv2 cannot be imported. A UserError (one line from the CLI) that ``except ImportError`` also catches."""


try:
    import cv2
except ImportError as _exc:
    raise OpenCVMissing(OPENCV_MISSING) from _exc
