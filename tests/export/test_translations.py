"""The portable flavor's ONNX translation of ``multilevel_roi_align`` equals the op (torchvision's
semantics) for every level layout (canonical scale 56 so that a 256 canvas reaches every level): four consecutive FPN levels, one level (MobileNetV3-FPN's two
1/32 maps), and non-consecutive scales (level i pools from map i; a level past the maps pools to
zeros, as torchvision's ``zip`` over the maps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrcnn_edge.export.translations import translation_table
from mrcnn_edge.model import ops  # noqa: F401  registers the ops

ort = pytest.importorskip("onnxruntime")


class _Pool(torch.nn.Module):
    def __init__(self, scales):
        super().__init__()
        self.scales = scales

    def forward(self, rois, *features):
        return torch.ops.mrcnn_edge.multilevel_roi_align(rois, list(features), [7, 7], 2, False, self.scales, 56.0, 4)


def _rois(n: int, canvas: int, seed: int) -> torch.Tensor:
    """[2, n, 4] boxes from 4 px to the whole canvas, so that every level gets some."""
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(2, n).uniform_(np.log(4.0), np.log(canvas), generator=g))
    aspect = torch.empty(2, n).uniform_(0.5, 2.0, generator=g)
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    x1 = torch.rand(2, n, generator=g) * (canvas - w).clamp(min=1)
    y1 = torch.rand(2, n, generator=g) * (canvas - h).clamp(min=1)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=-1)


@pytest.mark.parametrize("scales", [(1 / 4, 1 / 8, 1 / 16, 1 / 32), (1 / 32, 1 / 32), (1 / 4, 1 / 16)],
                         ids=["four-levels", "one-level", "gap"])
def test_portable_roi_align_equals_the_op(tmp_path, scales):
    canvas = 256
    feats = [torch.randn(2, 8, int(canvas * s), int(canvas * s)) for s in scales]
    rois = _rois(300, canvas, seed=len(scales))
    levels = ops.roi_levels(rois, scales, canonical_scale=56.0)
    k_min, k_max = ops.level_range(scales)
    assert len(torch.unique(levels)) == k_max - k_min + 1  # every level is exercised
    model = _Pool(scales)
    want = model(rois, *feats).numpy()
    args = (rois, *feats)
    program = torch.onnx.export(torch.export.export(model, args), args, None, dynamo=True,
                                custom_translation_table=translation_table("portable"), opset_version=18)
    path = tmp_path / "pool.onnx"
    program.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if len(scales) == 2 and scales[0] != scales[1]:
        # levels 0..2 over two maps: level i pools from map i (torchvision's zip), level 2 from none
        beyond = (levels == 2).numpy()
        assert beyond.any() and not want[beyond].any() and want[~beyond].any()
