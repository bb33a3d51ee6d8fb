"""ONNX translations of the ``mrcnn_edge`` custom ops, one set per flavor.

* ``tensorrt``: ``multilevel_roi_align`` is one ``MultilevelRoIAlign`` node (domain ``mrcnn_edge``)
  that TensorRT's ONNX parser hands to our plugin.
* ``portable``: standard ops only; per level ``NonZero`` -> ``Gather`` -> ``RoiAlign`` (opset 16
  coordinate modes), the levels' rows put back in ROI order by one ``Gather``; one ``RoiAlign`` over
  every ROI when the scales make one level (MobileNetV3-FPN).

``padded_nms`` is the standard ``NonMaxSuppression`` in both flavors, followed by static-shape
glue: kept boxes are marked in a ``[B, N]`` mask, and ``TopK`` returns them by descending score,
padded with -1.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import onnxscript
from onnxscript import opset18 as op

from mrcnn_edge.core.contract import PLUGIN_DOMAIN, PLUGIN_NAMESPACE, PLUGIN_VERSION, fpn_level_range

__all__ = ["translation_table"]

_custom = onnxscript.values.Opset(PLUGIN_DOMAIN, 1)


def _roi_align_trt(rois, features: Sequence, output_size: Sequence[int], sampling_ratio: int, aligned: bool,
                   spatial_scales: Sequence[float], canonical_scale: float, canonical_level: int):
    pooled = _custom.MultilevelRoIAlign(
        rois,
        *features,
        output_height=int(output_size[0]),
        output_width=int(output_size[1]),
        sampling_ratio=int(sampling_ratio),
        aligned=int(bool(aligned)),
        spatial_scales=[float(s) for s in spatial_scales],
        canonical_scale=float(canonical_scale),
        canonical_level=int(canonical_level),
        plugin_version=PLUGIN_VERSION,
        plugin_namespace=PLUGIN_NAMESPACE,
    )
    try:  # the custom node's output type is not inferable by onnxscript: state it
        pooled.dtype = features[0].dtype
    except AttributeError:  # pragma: no cover - older onnxscript values
        pass
    return pooled


def _roi_align_portable(rois, features: Sequence, output_size: Sequence[int], sampling_ratio: int, aligned: bool,
                        spatial_scales: Sequence[float], canonical_scale: float, canonical_level: int):
    oh, ow = int(output_size[0]), int(output_size[1])
    k_min, k_max = fpn_level_range(spatial_scales)  # torchvision's LevelMapper, refuses non-powers of two
    shape = op.Shape(rois)
    B = op.Slice(shape, [0], [1])
    R = op.Slice(shape, [1], [2])
    flat = op.Reshape(rois, op.Constant(value_ints=[-1, 4]))  # [B*R, 4]
    n = op.Mul(B, R)
    batch_idx = op.Reshape(op.Expand(op.Unsqueeze(op.Range(op.Constant(value_int=0), op.Squeeze(B), op.Constant(value_int=1)), [1]),
                                     op.Concat(B, R, axis=0)), op.Constant(value_ints=[-1]))
    C = op.Slice(op.Shape(features[0]), [1], [2])
    mode = "half_pixel" if aligned else "output_half_pixel"

    def pool(feat, scale, boxes, batch):
        return op.RoiAlign(feat, op.CastLike(boxes, feat), batch, coordinate_transformation_mode=mode, mode="avg",
                           output_height=oh, output_width=ow, sampling_ratio=int(sampling_ratio),
                           spatial_scale=float(scale))

    levels = k_max - k_min + 1  # the maps past it get no ROI (levels are clipped to the range)
    if levels == 1:  # e.g. MobileNetV3-FPN's two 1/32 maps: every ROI pools from the first
        out = pool(features[0], spatial_scales[0], flat, batch_idx)
    else:
        # FPN level of each ROI, as torchvision's LevelMapper (float32 arithmetic)
        x1 = op.Slice(flat, [0], [1], [1])
        y1 = op.Slice(flat, [1], [2], [1])
        x2 = op.Slice(flat, [2], [3], [1])
        y2 = op.Slice(flat, [3], [4], [1])
        area = op.Mul(op.Sub(x2, x1), op.Sub(y2, y1))
        s = op.Sqrt(area)
        log2 = op.Div(op.Log(op.Div(s, op.Constant(value_float=float(canonical_scale)))), op.Constant(value_float=math.log(2.0)))
        lvl = op.Floor(op.Add(op.Add(op.Constant(value_float=float(canonical_level)), log2), op.Constant(value_float=1e-6)))
        lvl = op.Where(op.IsNaN(lvl), op.Constant(value_float=float(k_min)), lvl)
        lvl = op.Clip(lvl, op.Constant(value_float=float(k_min)), op.Constant(value_float=float(k_max)))
        lvl = op.Reshape(op.Cast(op.Sub(lvl, op.Constant(value_float=float(k_min))), to=7), op.Constant(value_ints=[-1]))
        # each level pools its own ROIs; the results, level after level, are put back in ROI order
        # by one Gather (a ScatterND per level into a zero tensor copied the whole output each time)
        order, pooled = [], []
        for i in range(levels):
            idx = op.Reshape(op.NonZero(op.Equal(lvl, op.Constant(value_int=i))), op.Constant(value_ints=[-1]))
            order.append(idx)
            if i < len(features):
                pooled.append(pool(features[i], spatial_scales[i], op.Gather(flat, idx, axis=0),
                                   op.Gather(batch_idx, idx, axis=0)))
            else:  # a level between non-consecutive scales has no map: its ROIs pool to zeros (torchvision)
                pooled.append(op.Expand(op.CastLike(op.Constant(value_float=0.0), features[0]),
                                        op.Concat(op.Shape(idx), C, op.Constant(value_ints=[oh, ow]), axis=0)))
        order = op.Concat(*order, axis=0)  # ROI index of each pooled row
        rows = op.Range(op.Constant(value_int=0), op.Squeeze(n), op.Constant(value_int=1))
        where = op.ScatterElements(op.Expand(op.Constant(value_int=0), n), order, rows, axis=0)
        out = op.Gather(op.Concat(*pooled, axis=0), where, axis=0)  # row of each ROI
    return op.Reshape(out, op.Concat(B, R, C, op.Constant(value_ints=[oh, ow]), axis=0))


def _padded_nms(boxes, scores, iou_threshold: float, score_threshold: float, max_output: int):
    # boxes [B,N,4], scores [B,N] float32
    scores3 = op.Unsqueeze(scores, [1])  # [B,1,N]
    max_out = op.Constant(value_ints=[int(max_output)])
    iou = op.Constant(value_floats=[float(iou_threshold)])
    if math.isfinite(score_threshold):
        sel = op.NonMaxSuppression(boxes, scores3, max_out, iou, op.Constant(value_floats=[float(score_threshold)]))
    else:
        sel = op.NonMaxSuppression(boxes, scores3, max_out, iou)
    # sel [S,3] = (batch, class, box): mark the kept boxes in a [B,N] mask
    b_and_box = op.Gather(sel, op.Constant(value_ints=[0, 2]), axis=1)
    n_sel = op.Slice(op.Shape(sel), [0], [1])
    marks = op.ScatterND(op.ConstantOfShape(op.Shape(scores)), b_and_box, op.Expand(op.Constant(value_floats=[1.0]), n_sel))
    neg = op.CastLike(op.Constant(value_float=-1.0e30), scores)
    masked = op.Where(op.Greater(marks, op.Constant(value_float=0.5)), scores, neg)
    values, indices = op.TopK(masked, op.Constant(value_ints=[int(max_output)]), axis=1, largest=1, sorted=1)
    return op.Where(op.Greater(values, op.CastLike(op.Constant(value_float=-1.0e29), values)), indices,
                    op.CastLike(op.Constant(value_int=-1), indices))


def translation_table(flavor: str) -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export`` in the given flavor."""
    import torch

    from mrcnn_edge.model import ops  # noqa: F401  registers the ops

    roi = {"tensorrt": _roi_align_trt, "portable": _roi_align_portable}[flavor]
    return {
        torch.ops.mrcnn_edge.multilevel_roi_align.default: roi,
        torch.ops.mrcnn_edge.padded_nms.default: _padded_nms,
    }
