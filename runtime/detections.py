"""``Detections``: what the model found in one frame, in that frame's pixels.

Built by ``Segmenter`` from the flat output tensors; masks are kept at model resolution (``M×M``
probabilities) and pasted into the frame only when asked for (``masks``, ``instance_map()``,
``to_coco()``, ``draw()``), on the CPU or on the GPU depending on the segmenter's ``ops``.
``to_coco()`` pastes box by box (memory follows the boxes); with GPU post-processing ``draw()``
renders on the device from the frame and masks already there (``device``). ``frame`` is the frame
the detections were made on, as the Segmenter converted it: ``draw()`` without an argument draws on
it (its pixels as they are then, edits included) without converting it again.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.coco import rle_string
from mrcnn_edge.runtime.frames import as_bgr8
from mrcnn_edge.runtime.postprocess import MASK_THRESHOLD, ReferenceOps, class_colour

__all__ = ["Detections"]


class Detections:
    """Detections of one frame.

    Attributes:
        boxes (float32 ``[N,4]``): x1, y1, x2, y2 in frame pixels, clipped to the frame.
        scores (float32 ``[N]``): confidences, as the model gave them (descending).
        class_ids (int32 ``[N]``): model class ids (torchvision label ids; 0, background, never appears).
        class_names (list of N str): names from the model's metadata.
        mask_probs (float32 ``[N,M,M]``): mask probabilities in each box, model resolution.
        paste_boxes (float32 ``[N,4]``): the boxes the masks belong to, in frame pixels (``boxes``
            before clipping to the frame; the same unless a box reached into the letterbox padding).
        frame_shape ((h, w)): the frame these refer to.
        frame (uint8 ``[h,w,3]`` BGR or None): that frame, as converted for the model (kept by
            reference: the caller's own array when it was BGR uint8 already).
    """

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, class_names: Sequence[str],
                 mask_probs: np.ndarray, frame_shape: Sequence[int], ops: Any = None,
                 mask_threshold: float = MASK_THRESHOLD, paste_boxes: np.ndarray | None = None,
                 device: Any = None, frame: np.ndarray | None = None) -> None:
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        # the boxes the masks were computed on (frame pixels); differ from `boxes` only where the
        # model's box reached into the letterbox padding, which `boxes` clips away
        self.paste_boxes = self.boxes if paste_boxes is None else np.asarray(paste_boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(class_ids, dtype=np.int32).reshape(-1)
        self.class_names = list(class_names)
        n = len(self.boxes)
        self.mask_probs = np.asarray(mask_probs, dtype=np.float32)
        if self.mask_probs.ndim != 3:
            raise ValueError(f"mask_probs must be [N,M,M], got shape {self.mask_probs.shape}")
        if not (len(self.scores) == len(self.class_ids) == len(self.class_names) == len(self.mask_probs)
                == len(self.paste_boxes) == n):
            raise ValueError("boxes, scores, class_ids, class_names and mask_probs must have the same length")
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.mask_threshold = float(mask_threshold)
        self._ops = ops or ReferenceOps()
        self._masks: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        # cuda_ops.DeviceFrame (with the engine rows of these detections) or None: what draw()
        # may render from on the device; a subset drops it (its rows would need remapping)
        self.device = device
        self.frame = frame

    @classmethod
    def empty(cls, frame_shape: Sequence[int], mask_size: int = 28) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), [], np.zeros((0, mask_size, mask_size)), frame_shape)

    def __len__(self) -> int:
        return len(self.boxes)

    def __repr__(self) -> str:
        found = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.class_names[:5], self.scores[:5]))
        more = ", ..." if len(self) > 5 else ""
        return f"Detections({len(self)} in {self.frame_shape[1]}x{self.frame_shape[0]}: {found}{more})"

    def __getitem__(self, index: Any) -> "Detections":
        """A subset: ``dets[dets.scores > 0.8]``, ``dets[:3]``, ``dets[[0, 2]]``."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Detections(self.boxes[idx], self.scores[idx], self.class_ids[idx],
                          [self.class_names[i] for i in idx], self.mask_probs[idx], self.frame_shape,
                          self._ops, self.mask_threshold, self.paste_boxes[idx], frame=self.frame)

    @property
    def masks(self) -> np.ndarray:
        """bool ``[N,h,w]``: each detection's mask pasted into the frame (computed on first use)."""
        if self._masks is None:
            self._masks = self._ops.paste_masks(self.mask_probs, self.paste_boxes, self.frame_shape, self.mask_threshold)
        return self._masks

    def mask_regions(self) -> list[tuple[int, int, np.ndarray] | None]:
        """Per detection ``(y0, x0, bool [rows, cols])``, its mask over its box clipped to the frame
        (None when the box misses the frame): ``masks[i]`` without the frame-sized zeros."""
        if self._masks is not None:  # already pasted: crop, do not paste again
            return [_crop(m) for m in self._masks]
        return self._ops.paste_regions(self.mask_probs, self.paste_boxes, self.frame_shape, self.mask_threshold)

    def instance_map(self) -> np.ndarray:
        """int32 ``[h,w]``: 0 where no mask, ``i+1`` for detection ``i``; overlaps go to the higher score."""
        if self._ids is None:
            self._ids = self._ops.instance_map(self.mask_probs, self.paste_boxes, self.scores, self.frame_shape,
                                               self.mask_threshold)
        return self._ids

    def colours(self) -> np.ndarray:
        """uint8 ``[N,3]`` BGR: one stable colour per class id."""
        return np.array([class_colour(c) for c in self.class_ids], dtype=np.uint8).reshape(-1, 3)

    def to_coco(self, image_id: int, category_map: Mapping[int, int] | None = None) -> list[dict]:
        """COCO results: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": RLE}``.

        ``category_id`` is the class id, mapped through ``category_map`` when the dataset numbers
        its categories differently. ``segmentation`` is COCO compressed RLE (pycocotools reads it).
        """
        results = []
        regions = self.mask_regions()
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i])
            cid = int(self.class_ids[i])
            results.append({
                "image_id": int(image_id),
                "category_id": int(category_map[cid]) if category_map is not None else cid,
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(float(self.scores[i]), 5),
                "segmentation": _region_rle(regions[i], self.frame_shape),
            })
        return results

    def draw(self, frame: np.ndarray | None = None, alpha: float = 0.5, labels: bool = True,
             boxes: bool = True) -> np.ndarray:
        """A new BGR uint8 image: masks blended in their class colours, boxes and ``name score`` labels.

        ``frame``: the image to draw on (any layout ``frames.as_bgr8`` takes); None: the frame the
        detections were made on (:attr:`frame`), as it is now.
        """
        if frame is None:
            if self.frame is None:
                raise UserError("draw() needs the frame to draw on: these detections do not keep theirs")
            image = self.frame
        else:
            image = as_bgr8(frame)
        if image.shape[:2] != self.frame_shape:
            raise UserError(f"draw() got a {image.shape[1]}x{image.shape[0]} frame for detections "
                            f"of a {self.frame_shape[1]}x{self.frame_shape[0]} one")
        colours = self.colours()
        if not len(self):
            out = image.copy()
        elif self._ids is None and self._ops.fused_render:
            # GPU: paste, cull, threshold and blend in one kernel, no frame-sized id map on the bus
            out = self._ops.render(image, self.mask_probs, self.paste_boxes, self.scores, colours, alpha,
                                   self.mask_threshold, device=self.device)
        else:
            out = self._ops.overlay(image, self.instance_map(), colours, alpha)
        thick = max(1, round(min(self.frame_shape) / 320))
        scale = max(0.35, min(self.frame_shape) / 900)
        for i in range(len(self)):
            colour = tuple(int(c) for c in colours[i])
            x1, y1, x2, y2 = (int(round(float(v))) for v in self.boxes[i])
            if boxes:
                cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
            if labels:
                text = f"{self.class_names[i]} {self.scores[i]:.2f}"
                (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
                ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(y1 + th + 2, self.frame_shape[0] - base)
                cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + base), colour, -1)
                cv2.putText(out, text, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        return out


def _crop(mask: np.ndarray) -> tuple[int, int, np.ndarray] | None:
    """A full-frame bool mask -> ``(y0, x0, crop)`` over its set pixels, or None when empty."""
    ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(ys):
        return None
    return int(ys[0]), int(xs[0]), mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def _region_rle(region: tuple[int, int, np.ndarray] | None, frame_shape: tuple[int, int]) -> dict:
    """COCO compressed RLE of a frame-sized mask that is ``region`` and 0 elsewhere, without
    building the frame-sized mask (= ``coco.rle_encode`` of it; a test compares the two)."""
    h, w = frame_shape
    if region is None or not region[2].any():
        return {"size": [h, w], "counts": rle_string([h * w])}
    y0, x0, crop = region
    # column-major positions of the set pixels: COCO flattens in Fortran order
    cols, rows = np.nonzero(crop.T)
    pos = (x0 + cols).astype(np.int64) * h + (y0 + rows)
    breaks = np.flatnonzero(np.diff(pos) != 1) + 1
    starts = pos[np.concatenate(([0], breaks))]
    ends = pos[np.concatenate((breaks - 1, [len(pos) - 1]))] + 1
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0::2] = np.concatenate((starts, [h * w])) - np.concatenate(([0], ends))
    counts[1::2] = ends - starts
    if counts[-1] == 0:  # a mask that ends set has no closing run of zeros
        counts = counts[:-1]
    return {"size": [h, w], "counts": rle_string(counts.tolist())}
