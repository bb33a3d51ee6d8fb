"""Reference pre-processing (numpy/OpenCV): frame -> model input, with the CUDA kernel's meaning.

The model input (DESIGN.md, "Engine I/O contract"): ``images`` ``[B,3,H,W]``, RGB, normalised as
``(x/255 - mean)/std``. The frame is resized keeping its aspect (``scale = min(H/h, W/w)``) to
``floor(h*scale) × floor(w*scale)`` with bilinear interpolation, ``align_corners=False`` and **no
antialias**, which is what torchvision's ``GeneralizedRCNNTransform`` does
(``F.interpolate(scale_factor=scale, mode="bilinear", recompute_scale_factor=True)``), placed at the
top-left of the canvas. Everything else in the canvas is **0 in the normalised tensor** (padding is
applied after normalisation, like torchvision's ``batch_images``), not the normalised value of black.

``kernels/preprocess.cu`` computes the same thing on the GPU; tests compare both with torchvision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Letterbox", "Taps", "bilinear_taps", "normalization", "letterbox_into", "letterbox"]


@dataclass(frozen=True)
class Letterbox:
    """Where a frame sits in the canvas: ``resized_h × resized_w`` at the top-left, ``scale`` apart."""

    frame_h: int
    frame_w: int
    canvas_h: int
    canvas_w: int
    scale: float      # min(canvas_h/frame_h, canvas_w/frame_w), float64 like torchvision's
    resized_h: int    # floor(frame_h*scale), clamped to 1..canvas_h
    resized_w: int

    @classmethod
    def fit(cls, frame_hw: Sequence[int], canvas_hw: Sequence[int]) -> "Letterbox":
        h, w = int(frame_hw[0]), int(frame_hw[1])
        ch, cw = int(canvas_hw[0]), int(canvas_hw[1])
        scale = min(ch / h, cw / w)
        # torch: output_size = int(in * scale_factor); a 1 px result floor would make 0: keep 1
        rh = min(max(math.floor(float(h) * scale), 1), ch)
        rw = min(max(math.floor(float(w) * scale), 1), cw)
        return cls(h, w, ch, cw, scale, rh, rw)

    def boxes_to_frame(self, boxes: np.ndarray, clip: bool = True) -> np.ndarray:
        """Canvas boxes ``[N,4]`` x1,y1,x2,y2 -> frame pixels, float32.

        ``clip``: first clip to the resized image (torchvision's ``clip_boxes_to_image`` on the
        resized size; the graph only clips to the canvas), then scale by ``frame/resized`` per axis
        in float32 (torchvision's ``resize_boxes``). Without ``clip`` the box keeps any part in the
        canvas padding: the box its mask was computed on, which is the one to paste it with.
        """
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        if clip:
            np.clip(b[:, 0::2], 0.0, np.float32(self.resized_w), out=b[:, 0::2])
            np.clip(b[:, 1::2], 0.0, np.float32(self.resized_h), out=b[:, 1::2])
        rw = np.float32(self.frame_w) / np.float32(self.resized_w)
        rh = np.float32(self.frame_h) / np.float32(self.resized_h)
        b[:, 0::2] *= rw
        b[:, 1::2] *= rh
        return b


@dataclass(frozen=True)
class Taps:
    """Bilinear taps of one axis: ``out[d] = src[i0]*(1-w1) + src[i1]*w1``."""

    i0: np.ndarray  # int64
    i1: np.ndarray  # int64
    w1: np.ndarray  # float32


def bilinear_taps(in_size: int, out_size: int, dst: np.ndarray | None = None) -> Taps:
    """torch ``F.interpolate(mode="bilinear", align_corners=False)`` taps, float32 (= ``mre::bilinear_tap``)."""
    scale = np.float32(in_size) / np.float32(out_size)
    d = np.arange(out_size) if dst is None else np.asarray(dst)
    src = scale * (d.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return Taps(i0, i1, (src - i0.astype(np.float32)).astype(np.float32))


def normalization(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(mul, add)`` float32 per RGB channel with ``(x/255 - mean)/std == x*mul + add``."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    return (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)


def letterbox_into(frame: np.ndarray, out: np.ndarray, mul: np.ndarray, add: np.ndarray) -> Letterbox:
    """Write the model input for one BGR uint8 frame into ``out`` (``[3,H,W]`` float32 or float16).

    Float32 arithmetic in the order of ``mre::letterbox_pixel`` (rows, then columns, then
    ``v*mul + add``), on torch's float32 taps: bit-identical to the kernels' host build and within
    float rounding of torch. (OpenCV's float resize is 10x faster but computes the taps in
    double, which differs from torch by up to ~1e-4 after normalisation on noisy images.)
    """
    ch, cw = out.shape[1], out.shape[2]
    box = Letterbox.fit(frame.shape[:2], (ch, cw))
    rh, rw = box.resized_h, box.resized_w
    if (rh, rw) == (box.frame_h, box.frame_w):
        image = frame.astype(np.float32)  # identity taps: a*1 + b*0 == a exactly
    else:
        ty, tx = bilinear_taps(box.frame_h, rh), bilinear_taps(box.frame_w, rw)
        wy = ty.w1[:, None, None]
        rows = np.multiply(frame[ty.i0], 1 - wy, dtype=np.float32)
        rows += np.multiply(frame[ty.i1], wy, dtype=np.float32)
        wx = tx.w1[None, :, None]
        image = np.take(rows, tx.i0, axis=1)
        image *= 1 - wx
        image += np.take(rows, tx.i1, axis=1) * wx
    out[:, rh:, :] = 0
    out[:, :rh, rw:] = 0
    for c in range(3):  # RGB channel c is BGR channel 2-c
        if out.dtype == np.float32:
            np.multiply(image[:, :, 2 - c], mul[c], out=out[c, :rh, :rw])
            out[c, :rh, :rw] += add[c]
        else:  # round once, from the float32 result
            out[c, :rh, :rw] = image[:, :, 2 - c] * mul[c] + add[c]
    return box


def letterbox(frame: np.ndarray, canvas_hw: Sequence[int], mean: Sequence[float], std: Sequence[float],
              dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, Letterbox]:
    """One frame -> (``[3,H,W]`` model input of ``dtype``, its ``Letterbox``)."""
    out = np.empty((3, int(canvas_hw[0]), int(canvas_hw[1])), dtype=dtype)
    mul, add = normalization(mean, std)
    return out, letterbox_into(frame, out, mul, add)
