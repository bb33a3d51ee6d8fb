"""Reference post-processing against torchvision's paste_masks_in_image; instance map, overlay, RLE."""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.runtime.coco import rle_counts, rle_encode
from mrcnn_edge.runtime.postprocess import (
    class_colour, expand_boxes, instance_map, overlay, paint_order, paste_masks, paste_probabilities, paste_region,
)

torch = pytest.importorskip("torch")


def _random_case(seed: int, n: int, m: int, hw: tuple[int, int]):
    """Smooth random masks (like a mask head's) and boxes inside the frame (like clipped detections)."""
    import cv2

    rng = np.random.default_rng(seed)
    masks = np.stack([cv2.GaussianBlur(rng.random((m, m)).astype(np.float32), (5, 5), 1.5) for _ in range(n)])
    masks = np.clip((masks - masks.mean()) * 6 + 0.5, 0, 1).astype(np.float32)
    h, w = hw
    x1, y1 = rng.uniform(0, w, n), rng.uniform(0, h, n)
    bw, bh = rng.uniform(0, w / 2, n), rng.uniform(0, h / 2, n)
    boxes = np.stack([x1, y1, np.minimum(x1 + bw, w), np.minimum(y1 + bh, h)], 1).astype(np.float32)
    boxes[:3] = [[0, 0, w, h], [w - 1, h - 1, w, h], [5, 5, 5, 5]]  # whole frame, 1 px corner, empty
    return masks, boxes


@pytest.mark.parametrize("seed,m,hw", [(0, 28, (480, 640)), (1, 14, (100, 80)), (2, 28, (37, 1000))])
def test_paste_matches_torchvision(seed, m, hw):
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    masks, boxes = _random_case(seed, 60, m, hw)
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), hw)[:, 0].numpy()
    ours = paste_probabilities(masks, boxes, hw)
    diff = np.abs(ours - ref)
    ref_bin, ours_bin = ref > 0.5, paste_masks(masks, boxes, hw)
    inter = (ref_bin & ours_bin).sum((1, 2))
    union = (ref_bin | ours_bin).sum((1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    differing = int((ref_bin != ours_bin).sum())
    print(f"max |p - p_tv| {diff.max():.2e}, min IoU {iou.min():.5f}, differing pixels {differing}/{ref_bin.size}")
    assert diff.max() <= 1e-5
    assert iou.min() >= 0.99
    assert differing <= ref_bin.size * 1e-5  # ties at exactly 0.5 +- 1 ulp


def test_expand_boxes_is_torchvisions():
    from torchvision.models.detection.roi_heads import expand_boxes as tv_expand

    rng = np.random.default_rng(3)
    boxes = rng.uniform(-5, 700, size=(200, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    ref = tv_expand(torch.from_numpy(boxes), (28 + 2) / 28).to(torch.int64).numpy()
    assert np.array_equal(expand_boxes(boxes, 28), ref)


def test_paste_region_misses_and_edges():
    mask = np.ones((4, 4), np.float32)
    assert paste_region(mask, (50, 50, 60, 60), (10, 10)) is None           # outside
    assert paste_region(mask, (5, 5, 3, 3), (10, 10)) is None               # inverted (torchvision: empty)
    y0, y1, x0, x1, probs = paste_region(mask, (-3, -3, 2, 2), (10, 10))    # clipped at the top-left
    assert (y0, y1, x0, x1) == (0, 3, 0, 3) and probs.shape == (3, 3)


def test_instance_map_higher_score_wins_and_ids_are_index_plus_one():
    masks = np.ones((3, 8, 8), np.float32)
    boxes = np.array([[0, 0, 40, 40], [20, 20, 60, 60], [100, 100, 110, 110]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)  # the second box overlaps the first and scores higher
    ids = instance_map(masks, boxes, scores, (80, 80))
    bins = paste_masks(masks, boxes, (80, 80))
    assert ids.dtype == np.int32 and ids.shape == (80, 80)
    overlap = bins[0] & bins[1]
    assert overlap.any() and (ids[overlap] == 2).all()
    assert (ids[bins[0] & ~bins[1]] == 1).all()
    assert (ids[~bins[0] & ~bins[1]] == 0).all()
    assert not (ids == 3).any()  # the third box is outside the frame
    assert list(paint_order(scores)) == [1, 2, 0]


def test_instance_map_of_nothing():
    ids = instance_map(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), np.zeros(0), (5, 6))
    assert ids.shape == (5, 6) and not ids.any()


def test_overlay_blends_only_masked_pixels():
    frame = np.full((4, 4, 3), 100, np.uint8)
    ids = np.zeros((4, 4), np.int32)
    ids[0, 0], ids[1, 1] = 1, 2
    colours = np.array([[0, 0, 255], [255, 255, 255]], np.uint8)
    out = overlay(frame, ids, colours, alpha=0.5)
    assert out[0, 0].tolist() == [50, 50, 178]  # round(100*.5 + 255*.5) = 177.5 -> 178
    assert out[1, 1].tolist() == [178, 178, 178]
    assert (out[2:] == 100).all() and frame[0, 0].tolist() == [100, 100, 100]  # input untouched


def test_class_colours_are_stable_and_distinct():
    colours = {class_colour(c) for c in range(1, 30)}
    assert len(colours) == 29 and class_colour(5) == class_colour(5)


# -- COCO RLE -------------------------------------------------------------------------------------
def test_rle_counts_start_with_zeros():
    m = np.array([[1, 0], [1, 1]], bool)  # column-major: 1,1,0,1
    assert rle_counts(m) == [0, 2, 1, 1]
    assert rle_counts(np.zeros((2, 3), bool)) == [6]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own numpy 2 warning
@pytest.mark.parametrize("seed,shape,p", [(0, (480, 640), 0.3), (1, (1, 1), 1.0), (2, (7, 3), 0.5), (3, (50, 60), 0.0)])
def test_rle_is_byte_identical_to_pycocotools(seed, shape, p):
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < p
    if shape == (480, 640):  # long runs and short ones
        mask[100:300, 50:400] = True
    ours = rle_encode(mask)
    ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["size"] == list(ref["size"]) and ours["counts"] == ref["counts"].decode()
    assert np.array_equal(mask_utils.decode(ours).astype(bool), mask)


def test_coco_rle_from_box_regions_equals_the_full_mask_encoding():
    """Issue 11: to_coco() encodes each mask from its box region, never a frame-sized mask."""
    from mrcnn_edge.runtime.coco import rle_encode
    from mrcnn_edge.runtime.detections import _region_rle
    from mrcnn_edge.runtime.postprocess import paste_masks, paste_regions

    rng = np.random.default_rng(7)
    hw = (37, 53)
    masks = rng.random((6, 28, 28)).astype(np.float32)
    boxes = np.array([[0, 0, 53, 37], [5, 4, 20, 30], [-9, -9, 4, 4], [40, 20, 80, 60], [60, 60, 70, 70],
                      [10, 10, 10.5, 10.5]], np.float32)
    full = paste_masks(masks, boxes, hw)
    regions = paste_regions(masks, boxes, hw)
    assert regions[4] is None and full[0].any()
    for i in range(len(masks)):
        assert _region_rle(regions[i], hw) == rle_encode(full[i]), i
