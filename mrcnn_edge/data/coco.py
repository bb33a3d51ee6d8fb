"""COCO-format datasets in, COCO box and mask AP out (pycocotools).

``load_dataset`` reads ``DIR/annotations.json`` (images under ``DIR/images`` or next to it);
``evaluate_detections`` scores per-image detections in image pixels against it: the runtime's
:class:`~mrcnn_edge.runtime.postprocess.FrameRows`, masks pasted into the image by the runtime's
own paste (torchvision's ``paste_masks_in_image`` semantics), so the AP is the runtime's.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mrcnn_edge.core.errors import UserError, require
from mrcnn_edge.runtime.postprocess import FrameRows, paste_masks

__all__ = ["Dataset", "load_dataset", "evaluate_detections", "encode_masks"]


@dataclass
class Dataset:
    """A COCO instance-segmentation dataset on disk."""

    root: Path
    coco: Any  # pycocotools.coco.COCO
    image_ids: list[int]
    class_names: list[str]  # index = category id; gaps filled with "class_<id>"

    def image_path(self, image_id: int) -> Path:
        info = self.coco.imgs[image_id]
        for base in (self.root / "images", self.root):
            p = base / info["file_name"]
            if p.is_file():
                return p
        raise UserError(f"image {info['file_name']} of the annotations is not in {self.root} or {self.root / 'images'}")

    def read_image(self, image_id: int) -> np.ndarray:
        """BGR uint8 ``[H, W, 3]``; checks that its size matches the annotation."""
        import cv2

        p = self.image_path(image_id)
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read image {p}")
        info = self.coco.imgs[image_id]
        if (info.get("height"), info.get("width")) != img.shape[:2]:
            raise UserError(
                f"annotations do not match the images: {p.name} is {img.shape[1]}x{img.shape[0]}, "
                f"annotations say {info.get('width')}x{info.get('height')}"
            )
        return img

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``boxes [N,4] x1y1x2y2`` float32, ``labels [N]`` int64, ``masks [N,H,W]`` uint8 (crowds dropped)."""
        mask_api = require("pycocotools.mask", "model", "COCO datasets")
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes, labels, masks = [], [], []
        for a in anns:
            x, y, bw, bh = a["bbox"]
            if bw < 1 or bh < 1:
                continue
            seg = a["segmentation"]
            if isinstance(seg, list):
                rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                rle = mask_api.frPyObjects(seg, h, w)
            else:
                rle = seg
            masks.append(mask_api.decode(rle))
            boxes.append([x, y, x + bw, y + bh])
            labels.append(a["category_id"])
        return (
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64),
            np.asarray(masks, np.uint8).reshape(-1, h, w),
        )


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Open ``path/annotations.json`` (or an annotations file directly)."""
    coco_mod = require("pycocotools.coco", "model", "COCO datasets")
    p = Path(path)
    ann = p if p.is_file() else p / "annotations.json"
    if not ann.is_file():
        raise UserError(f"no COCO annotations at {ann} (expected a folder with annotations.json and images/)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = coco_mod.COCO(str(ann))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise UserError(f"{ann} is not a valid COCO annotations file ({exc})") from exc
    if not coco.imgs:
        raise UserError(f"{ann} lists no images")
    root = ann.parent
    cats = coco.cats
    n = max(cats) + 1 if cats else 1
    names = ["__background__"] + [cats[i]["name"] if i in cats else f"class_{i}" for i in range(1, n)]
    return Dataset(root=root, coco=coco, image_ids=sorted(coco.imgs), class_names=names)


def encode_masks(masks: np.ndarray) -> list[dict]:
    """``[N,H,W]`` binary masks to COCO compressed RLE dicts (counts as str)."""
    mask_api = require("pycocotools.mask", "model", "COCO RLE")
    rles = mask_api.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def _results(dataset: Dataset, detections: Iterable[tuple[int, FrameRows]], with_masks: bool) -> list[dict]:
    out: list[dict] = []
    for image_id, d in detections:
        rles = None
        if with_masks and len(d.boxes):
            info = dataset.coco.imgs[image_id]
            rles = encode_masks(paste_masks(d.masks, d.paste_boxes, (info["height"], info["width"])))
        for i in range(len(d.boxes)):
            x1, y1, x2, y2 = (float(v) for v in d.boxes[i])
            r = {
                "image_id": int(image_id),
                "category_id": int(d.classes[i]),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(d.scores[i]),
            }
            if rles is not None:
                r["segmentation"] = rles[i]
            out.append(r)
    return out


def evaluate_detections(dataset: Dataset, detections: Sequence[tuple[int, FrameRows]]) -> dict[str, float]:
    """COCO AP of ``(image_id, rows)`` pairs, ``rows`` in the image's pixels (``rows_to_frame``): keys
    ``box_AP``, ``box_AP50``, ``box_AP75``, ``mask_AP``, ... (-1 where undefined)."""
    cocoeval = require("pycocotools.cocoeval", "model", "COCO evaluation")
    image_ids = [int(image_id) for image_id, _ in detections]
    stats: dict[str, float] = {}
    for iou_type, prefix in (("bbox", "box"), ("segm", "mask")):
        res = _results(dataset, detections, with_masks=iou_type == "segm")
        if not res:
            for k in ("AP", "AP50", "AP75"):
                stats[f"{prefix}_{k}"] = 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = dataset.coco.loadRes(json.loads(json.dumps(res)))
            ev = cocoeval.COCOeval(dataset.coco, dt, iou_type)
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = ev.stats
        stats.update({f"{prefix}_AP": float(s[0]), f"{prefix}_AP50": float(s[1]), f"{prefix}_AP75": float(s[2]),
                      f"{prefix}_APs": float(s[3]), f"{prefix}_APm": float(s[4]), f"{prefix}_APl": float(s[5])})
    return stats
