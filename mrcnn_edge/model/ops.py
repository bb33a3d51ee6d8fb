"""The data-dependent steps of the edge graph as ``torch.library`` custom ops (namespace ``mrcnn_edge``).

Each op has a CPU reference implementation (torchvision's semantics) and a fake implementation
(shapes only) so that ``torch.export`` traces through it; the ONNX exporter maps each op to a
node sequence per flavor (``mrcnn_edge.export.translations``).

* ``multilevel_roi_align`` is the ``MultilevelRoIAlign`` TensorRT plugin's contract
  (DESIGN.md): FPN level per ROI, then ``torchvision.ops.roi_align`` on that level.
* ``padded_nms`` is NMS with a static output: the kept indices in descending score order,
  padded with -1 to ``max_output``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torchvision
from torch import Tensor

from mrcnn_edge.core.contract import fpn_level_range

__all__ = ["multilevel_roi_align", "padded_nms", "roi_levels", "level_range"]


def level_range(spatial_scales: Sequence[float]) -> tuple[int, int]:
    """(k_min, k_max) of torchvision's ``LevelMapper``: ``-log2`` of the first and of the last scale.

    One definition for the op, the plugin's CPU build and the portable flavor:
    ``mrcnn_edge.core.contract.fpn_level_range`` (``ValueError``, one line, for scales that are not powers
    of two). Two 1/32 maps (MobileNetV3-FPN) give (5, 5): every ROI pools from the first map.
    """
    return fpn_level_range(spatial_scales)


def roi_levels(rois: Tensor, spatial_scales: Sequence[float], canonical_scale: float = 224.0, canonical_level: int = 4) -> Tensor:
    """Index of the feature map each ROI pools from (torchvision's ``LevelMapper``).

    rois (Tensor[..., 4], float32): x1, y1, x2, y2 in canvas pixels. Returns int64 of shape ``rois.shape[:-1]``.
    ``floor(canonical_level + log2(sqrt(w*h) / canonical_scale) + 1e-6)``, clamped to the maps given;
    boxes of zero or negative area (and non-finite ones) go to the finest map.
    """
    k_min, k_max = level_range(spatial_scales)
    rois = rois.float()
    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
    s = torch.sqrt(area)
    lvl = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(1e-6, dtype=s.dtype))
    lvl = torch.nan_to_num(lvl, nan=float(k_min), posinf=float(k_max), neginf=float(k_min))
    return (torch.clamp(lvl, min=k_min, max=k_max) - k_min).to(torch.int64)


@torch.library.custom_op("mrcnn_edge::multilevel_roi_align", mutates_args=())
def multilevel_roi_align(
    rois: Tensor,
    features: list[Tensor],
    output_size: Sequence[int],
    sampling_ratio: int,
    aligned: bool,
    spatial_scales: Sequence[float],
    canonical_scale: float,
    canonical_level: int,
) -> Tensor:
    """Pool each ROI from its FPN level.

    Args:
        rois (Tensor[B, R, 4], float32): x1, y1, x2, y2 in canvas pixels.
        features (list of Tensor[B, C, H_l, W_l]): finest first, all of one dtype.
    Returns:
        Tensor[B, R, C, out_h, out_w] of the features' dtype (float32 accumulation). ROIs of
        negative area or with non-finite coordinates pool to zeros, as in the plugin.
    """
    B, R = rois.shape[0], rois.shape[1]
    C = features[0].shape[1]
    oh, ow = int(output_size[0]), int(output_size[1])
    out = torch.zeros((B * R, C, oh, ow), dtype=torch.float32)
    if B * R == 0:
        return out.reshape(B, R, C, oh, ow).to(features[0].dtype)
    levels = roi_levels(rois, spatial_scales, canonical_scale, canonical_level).reshape(-1)
    r = rois.reshape(-1, 4).float()
    usable = torch.isfinite(r).all(1) & (r[:, 2] >= r[:, 0]) & (r[:, 3] >= r[:, 1])
    levels = torch.where(usable, levels, torch.full_like(levels, -1))
    batch_idx = torch.arange(B, dtype=torch.float32).repeat_interleave(R).unsqueeze(1)
    flat = torch.cat([batch_idx, rois.reshape(-1, 4).float()], dim=1)
    for lvl, (feat, scale) in enumerate(zip(features, spatial_scales)):
        idx = torch.nonzero(levels == lvl).squeeze(1)
        if idx.numel() == 0:
            continue
        pooled = torchvision.ops.roi_align(feat.float(), flat[idx], (oh, ow), spatial_scale=float(scale),
                                           sampling_ratio=int(sampling_ratio), aligned=bool(aligned))
        out[idx] = pooled
    return out.reshape(B, R, C, oh, ow).to(features[0].dtype)


@multilevel_roi_align.register_fake
def _(rois, features, output_size, sampling_ratio, aligned, spatial_scales, canonical_scale, canonical_level):
    B, R = rois.shape[0], rois.shape[1]
    return features[0].new_empty((B, R, features[0].shape[1], int(output_size[0]), int(output_size[1])))


@torch.library.custom_op("mrcnn_edge::padded_nms", mutates_args=())
def padded_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_output: int) -> Tensor:
    """Per-image NMS with a static output.

    Args:
        boxes (Tensor[B, N, 4], float32): x1, y1, x2, y2. Class-aware callers offset boxes per class.
        scores (Tensor[B, N], float32): boxes with ``score <= score_threshold`` are dropped
            (``-inf`` keeps every box).
    Returns:
        Tensor[B, max_output], int64: indices into N of the kept boxes by descending score, then -1.
    """
    B = boxes.shape[0]
    out = torch.full((B, max_output), -1, dtype=torch.int64)
    for b in range(B):
        cand = torch.nonzero(scores[b] > score_threshold).squeeze(1)
        keep = torchvision.ops.nms(boxes[b, cand].float(), scores[b, cand].float(), float(iou_threshold))
        keep = cand[keep[:max_output]]
        out[b, : keep.numel()] = keep
    return out


@padded_nms.register_fake
def _(boxes, scores, iou_threshold, score_threshold, max_output):
    return boxes.new_empty((boxes.shape[0], max_output), dtype=torch.int64)
