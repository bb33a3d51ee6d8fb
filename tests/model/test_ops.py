"""The custom ops against torchvision: multi-level ROIAlign and padded NMS."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign

from mrcnn_edge.model import ops  # noqa: F401


def _boxes(n, size, gen):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) ** 3 * size  # mostly small, some large: every level is used
    return torch.cat([xy, xy + wh], 1)


@pytest.mark.parametrize("out,sr", [(7, 2), (14, 2), (7, 0)])
def test_multilevel_roi_align_equals_torchvision(out, sr):
    gen = torch.Generator().manual_seed(out + sr)
    B, C, H, W = 2, 5, 128, 160
    feats = OrderedDict((str(i), torch.randn(B, C, H // 2 ** (i + 2), W // 2 ** (i + 2), generator=gen)) for i in range(4))
    boxes = [_boxes(300, 128, gen), _boxes(250, 128, gen)]
    pool = MultiScaleRoIAlign(list(feats), out, sr)
    ref = pool(feats, boxes, [(H, W)] * B)
    rois = torch.zeros(B, 300, 4)
    rois[0] = boxes[0]
    rois[1, :250] = boxes[1]
    got = torch.ops.mrcnn_edge.multilevel_roi_align(rois, list(feats.values()), [out, out], sr, False,
                                                    [1 / 4, 1 / 8, 1 / 16, 1 / 32], 224.0, 4)
    assert got.shape == (B, 300, C, out, out)
    assert torch.allclose(got[0], ref[:300], atol=1e-6)
    assert torch.allclose(got[1, :250], ref[300:], atol=1e-6)


def test_roi_levels_follow_the_fpn_rule():
    rois = torch.tensor([[0, 0, 10, 10], [0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 2000, 2000],
                         [5, 5, 5, 5], [10, 10, 0, 0]], dtype=torch.float32)
    lv = ops.roi_levels(rois, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    assert lv.tolist() == [0, 1, 2, 3, 3, 0, 0]


def test_roi_align_half_inputs_accumulate_in_float():
    gen = torch.Generator().manual_seed(1)
    feats = [torch.randn(1, 3, 32 // 2 ** i, 32 // 2 ** i, generator=gen) for i in range(3)]
    rois = _boxes(50, 120, gen)[None]
    args = ([7, 7], 2, False, [1 / 4, 1 / 8, 1 / 16], 224.0, 4)
    full = torch.ops.mrcnn_edge.multilevel_roi_align(rois, [f.half().float() for f in feats], *args)
    half = torch.ops.mrcnn_edge.multilevel_roi_align(rois, [f.half() for f in feats], *args)
    assert half.dtype == torch.float16
    assert torch.allclose(half.float(), full, atol=2e-3)


def test_padded_nms_equals_torchvision():
    gen = torch.Generator().manual_seed(3)
    boxes = _boxes(400, 100, gen)[None].repeat(2, 1, 1)
    scores = torch.rand(2, 400, generator=gen)
    keep = torch.ops.mrcnn_edge.padded_nms(boxes, scores, 0.5, 0.2, 50)
    for b in range(2):
        cand = torch.nonzero(scores[b] > 0.2).squeeze(1)
        ref = cand[torchvision.ops.nms(boxes[b, cand], scores[b, cand], 0.5)][:50]
        got = keep[b][keep[b] >= 0]
        assert torch.equal(got, ref)
        assert (keep[b, len(ref):] == -1).all()


def test_fake_implementations_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        rois = torch.empty(2, 10, 4)
        feats = [torch.empty(2, 8, 16, 16), torch.empty(2, 8, 8, 8)]
        out = torch.ops.mrcnn_edge.multilevel_roi_align(rois, feats, [7, 7], 2, False, [0.25, 0.125], 224.0, 4)
        keep = torch.ops.mrcnn_edge.padded_nms(rois, torch.empty(2, 10), 0.5, 0.0, 5)
    assert tuple(out.shape) == (2, 10, 8, 7, 7)
    assert tuple(keep.shape) == (2, 5) and keep.dtype == torch.int64


def test_two_maps_at_one_scale_equal_multiscale_roi_align():
    """MobileNetV3-FPN's two 1/32 maps: torchvision's LevelMapper has k_min = k_max = 5."""
    gen = torch.Generator().manual_seed(9)
    B, C, H, W = 1, 3, 256, 320
    feats = OrderedDict((n, torch.randn(B, C, H // 32, W // 32, generator=gen)) for n in ("0", "1"))
    boxes = [_boxes(200, 256, gen)]
    ref = MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, [(H, W)])
    got = torch.ops.mrcnn_edge.multilevel_roi_align(boxes[0][None], list(feats.values()), [7, 7], 2, False,
                                                    [1 / 32, 1 / 32], 224.0, 4)
    assert torch.allclose(got[0], ref, atol=1e-6)
    assert ops.level_range([1 / 8, 1 / 16, 1 / 32]) == (3, 5)


@pytest.mark.parametrize("scales", [[0.25, 0.1], [1 / 3]])
def test_level_range_refuses_scales_that_are_not_powers_of_two(scales):
    with pytest.raises(ValueError, match="powers of two") as err:
        ops.level_range(scales)
    assert "\n" not in str(err.value)
