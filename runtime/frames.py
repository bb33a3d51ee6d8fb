"""Frame validation: what ``Segmenter`` accepts and how it converts it to ``H×W×3`` uint8 BGR.

Accepted and converted (documented behaviour, tested):

- ``H×W`` or ``H×W×1`` grayscale -> BGR (the gray value in all three channels);
- ``H×W×4`` BGRA (OpenCV's order) -> BGR, alpha dropped (not blended);
- uint16 -> uint8 by ``>> 8`` (the high byte, like OpenCV's imread of 16-bit images);
- float16/32/64 in ``[0, 1]`` -> ``round(x * 255)`` (OpenCV's convention for float images).

Refused with one line (a ``UserError``): empty arrays, non-arrays, other dtypes (int8, int32,
bool ...), other channel counts, more than 3 dimensions (use ``Segmenter.batch``), floats with
NaN/inf or outside ``[0, 1]``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mrcnn_edge.core.errors import UserError

__all__ = ["as_bgr8"]


def _describe(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)}, dtype {a.dtype}"


def as_bgr8(frame: Any) -> np.ndarray:
    """Return ``frame`` as a C-contiguous ``H×W×3`` uint8 BGR array (the input itself when it is one)."""
    if not isinstance(frame, np.ndarray):
        if frame is None:
            raise UserError("got no frame (None): the source returned nothing for this frame")
        try:
            frame = np.asarray(frame)
        except (TypeError, ValueError) as exc:
            raise UserError(f"a frame must be a numpy array, not {type(frame).__name__}") from exc
    a = frame
    if a.dtype.kind not in "biuf":
        raise UserError(f"a frame must be a numeric numpy array (H×W×3 uint8 BGR), got dtype {a.dtype}")
    if a.size == 0:
        raise UserError(f"empty frame ({_describe(a)}): nothing to segment")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        extra = "; use segmenter.batch(frames) for several frames" if a.ndim == 4 else ""
        raise UserError(
            f"unsupported frame layout ({_describe(a)}): expected H×W×3 BGR, H×W×4 BGRA or H×W gray{extra}"
        )
    a = _to_uint8(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return (a >> 8).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise UserError(f"float frame with NaN or inf values ({_describe(a)})")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise UserError(
                f"float frame values must be in [0, 1] (got {lo:g}..{hi:g}); "
                "pass uint8 0..255 frames, or divide by 255"
            )
        return np.rint(a.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
    raise UserError(f"unsupported frame dtype {a.dtype}: pass uint8 (or uint16, or float in [0, 1])")
