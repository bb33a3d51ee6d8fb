"""What the pre/post-processing kernels take: parameter structs, launch signatures, argument packing.

The structs mirror ``kernels/preprocess.cuh`` and ``kernels/postprocess.cuh`` field for field;
:data:`SIGNATURES` lists every entry point's parameters, which a test holds against the PTX that
NVRTC compiles (``kernel_build``), and :func:`pack_arguments` turns a call into cuLaunchKernel's
``kernelParams``. No CUDA is imported here.
"""
from __future__ import annotations

import ctypes
from typing import Any, Sequence

import numpy as np

from mrcnn_edge.runtime.preprocess import Letterbox

__all__ = ["LetterboxParams", "InstanceParams", "SIGNATURES", "pack_arguments", "TILE", "grid"]

TILE = (32, 8)  # the tiled kernels' block: mre::TILE_W x mre::TILE_H


def grid(height: int, width: int, depth: int = 1) -> tuple[int, int, int]:
    """Blocks of :data:`TILE` covering ``height x width`` (x depth)."""
    return (width + TILE[0] - 1) // TILE[0], (height + TILE[1] - 1) // TILE[1], depth


class LetterboxParams(ctypes.Structure):
    """Mirror of ``mre::LetterboxParams`` (kernels/preprocess.cuh); 4-byte fields, no padding."""

    _fields_ = [
        ("src_h", ctypes.c_int), ("src_w", ctypes.c_int), ("src_pitch", ctypes.c_int),
        ("dst_h", ctypes.c_int), ("dst_w", ctypes.c_int), ("out_h", ctypes.c_int), ("out_w", ctypes.c_int),
        ("scale_y", ctypes.c_float), ("scale_x", ctypes.c_float),
        ("mul", ctypes.c_float * 3), ("add", ctypes.c_float * 3),
    ]

    @classmethod
    def make(cls, box: Letterbox, pitch: int, mul: np.ndarray, add: np.ndarray) -> "LetterboxParams":
        # scale = in/out in float32, exactly what mre::interp_scale and torch compute
        return cls(box.frame_h, box.frame_w, pitch, box.canvas_h, box.canvas_w, box.resized_h, box.resized_w,
                   float(np.float32(box.frame_h) / np.float32(box.resized_h)),
                   float(np.float32(box.frame_w) / np.float32(box.resized_w)),
                   (ctypes.c_float * 3)(*map(float, mul)), (ctypes.c_float * 3)(*map(float, add)))


class InstanceParams(ctypes.Structure):
    """Mirror of ``mre::InstanceParams`` (kernels/postprocess.cuh); 4-byte fields, no padding."""

    _fields_ = [("n", ctypes.c_int), ("m", ctypes.c_int), ("height", ctypes.c_int), ("width", ctypes.c_int),
                ("src_pitch", ctypes.c_int), ("dst_pitch", ctypes.c_int),
                ("threshold", ctypes.c_float), ("alpha", ctypes.c_float)]


# Parameters of each kernel entry point, in order ("ptr": device address, "int", "float", or a
# ctypes Structure passed by value). Launches are packed from this table; a test checks it
# against the parameter lists in the PTX that NVRTC compiles.
SIGNATURES: dict[str, tuple[Any, ...]] = {
    "letterbox_f32": ("ptr", LetterboxParams, "ptr"),
    "letterbox_f16": ("ptr", LetterboxParams, "ptr"),
    "paste_mask_u8": ("ptr", "ptr", "int", "int", "int", "int", "int", "int", "float", "ptr"),
    "instance_map": ("ptr", "ptr", "ptr", InstanceParams, "ptr"),
    "instance_map_f16": ("ptr", "ptr", "ptr", InstanceParams, "ptr"),
    "render_instances": ("ptr", "ptr", "ptr", "ptr", "ptr", InstanceParams, "ptr"),
    "render_instances_f16": ("ptr", "ptr", "ptr", "ptr", "ptr", InstanceParams, "ptr"),
    "overlay": ("ptr", "int", "ptr", "ptr", "int", "int", "float"),
}
_SCALARS = {"ptr": ctypes.c_void_p, "int": ctypes.c_int, "float": ctypes.c_float}
def pack_arguments(kernel: str, args: Sequence[Any]) -> tuple[Any, list[Any]]:
    """``(void*[n], holders)`` for cuLaunchKernel's kernelParams; keep ``holders`` alive until launched."""
    signature = SIGNATURES[kernel]
    if len(args) != len(signature):
        raise TypeError(f"{kernel} takes {len(signature)} arguments, got {len(args)}")
    holders = []
    for kind, value in zip(signature, args):
        if isinstance(kind, str):
            holders.append(_SCALARS[kind](value))
        elif isinstance(value, kind):
            holders.append(value)
        else:
            raise TypeError(f"{kernel}: expected {kind.__name__}, got {type(value).__name__}")
    return (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders]), holders
