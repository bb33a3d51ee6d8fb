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


def _import_failure(exc: ImportError) -> str:
    """One line for a cv2 that is absent (:data:`OPENCV_MISSING`) or present but failing to import.

    A cv2 built against numpy 1.x (JetPack's) does not import under numpy 2: numpy's check for
    "A module that was compiled using NumPy 1.x" raises, and numpy 1.x's ``import_array`` turns that
    into "numpy.core.multiarray failed to import". Then the line names both numpy versions.
    """
    if isinstance(exc, ModuleNotFoundError) and exc.name == "cv2":
        return OPENCV_MISSING
    why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        import numpy

        numpy_version = str(numpy.__version__)
    except Exception:  # noqa: BLE001 - a broken numpy is reported by the line itself
        numpy_version = "unknown (numpy does not import)"
    line = f"OpenCV (cv2) is installed but does not import ({why}); numpy {numpy_version} is installed"
    if numpy_version.split(".")[0].isdigit() and int(numpy_version.split(".")[0]) >= 2 and (
            "compiled using NumPy 1.x" in str(exc) or "multiarray failed to import" in str(exc)):
        line += (" and this cv2 was built against numpy 1.x (JetPack's is): pip install 'numpy<2' "
                 "(mrcnn-edge doctor says which numpy it was built with)")
    else:
        line += "; mrcnn-edge doctor tells more"
    return line


try:
    import cv2
except ImportError as _exc:
    raise OpenCVMissing(_import_failure(_exc)) from _exc
