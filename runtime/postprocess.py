"""Reference post-processing (numpy): masks pasted into the frame, instance map, overlay.

Same meaning as ``kernels/postprocess.cu`` and torchvision's ``paste_masks_in_image``: each
``M×M`` mask is padded by one zero pixel, its frame box is expanded by ``(M+2)/M`` about the centre
and truncated to integers (:func:`expand_boxes`), the padded mask is resized bilinearly
(``align_corners=False``) to the integer box size and placed at the box's top-left, clipped to the
frame. Pixels are in the mask when the pasted probability is ``> threshold`` (0.5).
The arithmetic is float32 in the order of ``mre::paste_value`` so that the host build of the
kernels matches it bit for bit.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from mrcnn_edge.core.contract import num_detections_of
from mrcnn_edge.runtime.preprocess import Letterbox, bilinear_taps

__all__ = [
    "MASK_THRESHOLD",
    "FrameRows",
    "rows_to_frame",
    "expand_boxes",
    "paste_region",
    "paste_probabilities",
    "paste_masks",
    "paste_regions",
    "paint_order",
    "instance_map",
    "overlay",
    "class_colour",
    "ReferenceOps",
]

MASK_THRESHOLD = 0.5


@dataclass(frozen=True)
class FrameRows:
    """The detections of one image as plain arrays: the one internal detections type.

    The runtime builds the user's ``Detections`` from it; validation compares it, COCO evaluation
    scores it. Its pixels are those of its maker: :func:`rows_to_frame` gives frame pixels,
    :meth:`from_outputs` the model's canvas pixels as they are.

    rows (int64 ``[N]``): the model-output rows kept; boxes (float32 ``[N,4]``): x1,y1,x2,y2
    (in frame pixels clipped to the image); paste_boxes (float32 ``[N,4]``): the boxes the masks
    were computed on, unclipped (paste masks with these); scores (float32 ``[N]``); classes
    (int32 ``[N]``, label ids); masks (float32 ``[N,M,M]`` probabilities of each detection's class).
    """

    rows: np.ndarray
    boxes: np.ndarray
    paste_boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray], b: int) -> "FrameRows":
        """Image ``b``'s first ``num_detections`` rows of a model's outputs, in canvas pixels, unfiltered
        (what the graph returned, for comparing two runners), copied: a backend's buffers are reused."""
        n = num_detections_of(outputs["num_detections"])[b]
        boxes = outputs["boxes"][b, :n].astype(np.float32)
        return cls(np.arange(n), boxes, boxes.copy(), outputs["scores"][b, :n].astype(np.float32),
                   outputs["classes"][b, :n].astype(np.int32), outputs["masks"][b, :n].astype(np.float32))


def rows_to_frame(outputs: Mapping[str, np.ndarray], b: int, box: Letterbox, score_threshold: float) -> FrameRows:
    """Image ``b`` of a model's outputs (engine I/O contract) -> its detections in frame pixels.

    Keeps the first ``num_detections`` rows whose class is a real one (> 0, not padding -1), whose
    score is ``>= score_threshold`` and whose numbers are finite. The one canvas-to-frame step:
    ``Segmenter.finish``, ``validate`` and ``benchmark`` all call it.
    """
    k = outputs["scores"].shape[1]
    n = min(max(num_detections_of(outputs["num_detections"])[b], 0), k)  # [B,1], or [B] of older models
    scores = outputs["scores"][b, :n].astype(np.float32)
    classes = outputs["classes"][b, :n].astype(np.int32)
    boxes = outputs["boxes"][b, :n].astype(np.float32)
    keep = (classes > 0) & (scores >= np.float32(score_threshold)) & np.isfinite(boxes).all(axis=1)
    keep &= np.isfinite(scores)
    return FrameRows(np.flatnonzero(keep), box.boxes_to_frame(boxes[keep]), box.boxes_to_frame(boxes[keep], clip=False),
                     scores[keep], classes[keep], outputs["masks"][b, :n][keep].astype(np.float32))


def expand_boxes(boxes: np.ndarray, mask_size: int, padding: int = 1) -> np.ndarray:
    """Frame boxes ``[N,4]`` float -> the integer paste boxes ``[N,4]`` int32 (x0, y0, x1, y1).

    torchvision's ``expand_masks`` scale ``(M+2p)/M`` and ``expand_boxes`` in float32, then
    ``.to(torch.int64)`` (truncation toward zero).
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.float32(float(mask_size + 2 * padding) / mask_size)
    half = np.float32(0.5)
    w_half = (b[:, 2] - b[:, 0]) * half * scale
    h_half = (b[:, 3] - b[:, 1]) * half * scale
    x_c = (b[:, 2] + b[:, 0]) * half
    y_c = (b[:, 3] + b[:, 1]) * half
    out = np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)
    return np.trunc(out).astype(np.int64).clip(-(2**30), 2**30).astype(np.int32)


def paste_region(mask: np.ndarray, box: Sequence[int], frame_hw: Sequence[int]
                 ) -> tuple[int, int, int, int, np.ndarray] | None:
    """Pasted probabilities of one ``M×M`` mask inside the frame: ``(y0, y1, x0, x1, probs)``.

    ``box`` is an :func:`expand_boxes` row; ``probs`` is float32 ``[y1-y0, x1-x0]`` for frame rows
    ``y0:y1`` and columns ``x0:x1``. None when the box misses the frame.
    """
    m = mask.shape[-1]
    bx0, by0, bx1, by1 = (int(v) for v in box)
    height, width = int(frame_hw[0]), int(frame_hw[1])
    x0, x1 = max(bx0, 0), min(bx1 + 1, width)
    y0, y1 = max(by0, 0), min(by1 + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    padded[1:-1, 1:-1] = mask
    ty = bilinear_taps(m + 2, by1 - by0 + 1, np.arange(y0 - by0, y1 - by0))
    tx = bilinear_taps(m + 2, bx1 - bx0 + 1, np.arange(x0 - bx0, x1 - bx0))
    wy = ty.w1[:, None]
    rows = padded[ty.i0] * (1 - wy) + padded[ty.i1] * wy      # rows first ...
    probs = rows[:, tx.i0] * (1 - tx.w1) + rows[:, tx.i1] * tx.w1  # ... then columns
    return y0, y1, x0, x1, probs


def paste_probabilities(masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int]) -> np.ndarray:
    """``[N,M,M]`` masks + frame boxes -> ``[N,H,W]`` float32 pasted probabilities."""
    masks = np.asarray(masks, dtype=np.float32)
    out = np.zeros((len(masks), int(frame_hw[0]), int(frame_hw[1])), dtype=np.float32)
    if len(masks):
        for i, box in enumerate(expand_boxes(boxes, masks.shape[-1])):
            region = paste_region(masks[i], box, frame_hw)
            if region is not None:
                y0, y1, x0, x1, probs = region
                out[i, y0:y1, x0:x1] = probs
    return out


def paste_masks(masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """``[N,H,W]`` bool: pasted probability ``> threshold``."""
    masks = np.asarray(masks, dtype=np.float32)
    out = np.zeros((len(masks), int(frame_hw[0]), int(frame_hw[1])), dtype=bool)
    if len(masks):
        for i, box in enumerate(expand_boxes(boxes, masks.shape[-1])):
            region = paste_region(masks[i], box, frame_hw)
            if region is not None:
                y0, y1, x0, x1, probs = region
                out[i, y0:y1, x0:x1] = probs > np.float32(threshold)
    return out


def paste_regions(masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                  threshold: float = MASK_THRESHOLD) -> list[tuple[int, int, np.ndarray] | None]:
    """Per detection ``(y0, x0, bool [rows, cols])``: the pasted mask over its box clipped to the
    frame, or None where the box misses the frame. Memory follows the boxes, not ``N×H×W``."""
    masks = np.asarray(masks, dtype=np.float32)
    out: list[tuple[int, int, np.ndarray] | None] = [None] * len(masks)
    if len(masks):
        for i, box in enumerate(expand_boxes(boxes, masks.shape[-1])):
            region = paste_region(masks[i], box, frame_hw)
            if region is not None:
                y0, _, x0, _, probs = region
                out[i] = (y0, x0, probs > np.float32(threshold))
    return out


def paint_order(scores: np.ndarray) -> np.ndarray:
    """Detection indices, highest score first (ties: lower index first)."""
    return np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable").astype(np.int32)


def instance_map(masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray, frame_hw: Sequence[int],
                 threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """``[H,W]`` int32: 0 = no detection, ``i+1`` = detection ``i``; where masks overlap the higher score wins."""
    masks = np.asarray(masks, dtype=np.float32)
    ids = np.zeros((int(frame_hw[0]), int(frame_hw[1])), dtype=np.int32)
    if len(masks):
        pboxes = expand_boxes(boxes, masks.shape[-1])
        for i in paint_order(scores)[::-1]:  # lowest score first, so higher scores paint over
            region = paste_region(masks[i], pboxes[i], frame_hw)
            if region is not None:
                y0, y1, x0, x1, probs = region
                ids[y0:y1, x0:x1][probs > np.float32(threshold)] = i + 1
    return ids


def overlay(frame: np.ndarray, ids: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """New BGR uint8 frame: ``colours[id-1]`` (``[N,3]`` BGR uint8) blended with ``alpha`` where ``id > 0``.

    Per channel ``round(pixel*(1-alpha) + colour*alpha)`` in float32 (= ``mre::blend_channel``).
    """
    out = frame.copy()
    sel = ids > 0
    if sel.any():
        a = np.float32(alpha)
        px = out[sel].astype(np.float32)
        col = np.asarray(colours, dtype=np.uint8)[ids[sel] - 1].astype(np.float32)
        v = px * (1 - a) + col * a + np.float32(0.5)
        out[sel] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def class_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class id (golden-ratio hues)."""
    hue = (int(class_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


class ReferenceOps:
    """The CPU implementation of the mask operations ``Detections`` delegates to (see ``cuda_ops.CudaOps``)."""

    name = "cpu"
    # render() is overlay(instance_map()): Detections draws through its cached instance map instead;
    # CudaOps renders in one pass without an id map (fused_render True)
    fused_render = False

    def paste_masks(self, masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                    threshold: float = MASK_THRESHOLD) -> np.ndarray:
        return paste_masks(masks, boxes, frame_hw, threshold)

    def instance_map(self, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                     frame_hw: Sequence[int], threshold: float = MASK_THRESHOLD) -> np.ndarray:
        return instance_map(masks, boxes, scores, frame_hw, threshold)

    def paste_regions(self, masks: np.ndarray, boxes: np.ndarray, frame_hw: Sequence[int],
                      threshold: float = MASK_THRESHOLD) -> list[tuple[int, int, np.ndarray] | None]:
        return paste_regions(masks, boxes, frame_hw, threshold)

    def overlay(self, frame: np.ndarray, ids: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        return overlay(frame, ids, colours, alpha)

    def render(self, frame: np.ndarray, masks: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
               colours: np.ndarray, alpha: float = 0.5, threshold: float = MASK_THRESHOLD,
               device: object = None) -> np.ndarray:
        """``frame`` with the masks blended in: ``overlay(frame, instance_map(...))`` (``device`` unused)."""
        if len(masks) == 0:
            return frame.copy()
        return overlay(frame, instance_map(masks, boxes, scores, frame.shape[:2], threshold), colours, alpha)
