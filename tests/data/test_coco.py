"""COCO evaluation of the runtime's detections: boxes as given, masks pasted with the paste boxes."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pycocotools", reason="COCO evaluation needs the [model] extra")

from mrcnn_edge.data.coco import evaluate_detections, load_dataset  # noqa: E402 - after the skip
from mrcnn_edge.runtime.postprocess import FrameRows  # noqa: E402

H, W = 48, 64
GT_BOX = (10.0, 8.0, 42.0, 36.0)  # x1, y1, x2, y2


@pytest.fixture
def dataset(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((H, W, 3), np.uint8))
    x1, y1, x2, y2 = GT_BOX
    ann = {"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
           "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "disk"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": (x2 - x1) * (y2 - y1),
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]}]}
    (tmp_path / "annotations.json").write_text(json.dumps(ann))
    return load_dataset(tmp_path)


def _rows(box=GT_BOX, paste_box=None, class_id=1) -> FrameRows:
    boxes = np.asarray([box], np.float32)
    paste = boxes if paste_box is None else np.asarray([paste_box], np.float32)
    return FrameRows(np.arange(1), boxes, paste, np.array([0.9], np.float32), np.array([class_id], np.int32),
                     np.ones((1, 28, 28), np.float32))  # a full mask: pasted, it fills its paste box


def test_a_detection_on_the_object_scores_full_ap(dataset):
    stats = evaluate_detections(dataset, [(1, _rows())])
    assert stats["box_AP"] == pytest.approx(1.0) and stats["mask_AP50"] == pytest.approx(1.0)
    assert stats["mask_AP"] > 0.5


def test_masks_are_pasted_with_the_paste_boxes_at_the_images_size(dataset):
    """Same reported box, mask computed on a box elsewhere: the box AP stays, the mask AP goes."""
    stats = evaluate_detections(dataset, [(1, _rows(paste_box=(44.0, 30.0, 62.0, 46.0)))])
    assert stats["box_AP"] == pytest.approx(1.0) and stats["mask_AP50"] == pytest.approx(0.0)


def test_the_wrong_class_or_no_detection_scores_nothing(dataset):
    assert evaluate_detections(dataset, [(1, _rows(class_id=2))])["box_AP50"] == pytest.approx(0.0)
    empty = FrameRows(np.arange(0), np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32),
                      np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros((0, 28, 28), np.float32))
    stats = evaluate_detections(dataset, [(1, empty)])
    assert stats["box_AP"] == 0.0 and stats["mask_AP"] == 0.0
