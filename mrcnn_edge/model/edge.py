"""``EdgeMaskRCNN``: torchvision Mask R-CNN inference rebuilt with static shapes.

The modules (backbone, RPN head, box and mask heads) are the trained torchvision ones; what
changes is the glue between them. Every tensor has a shape fixed by the canvas ``H x W``, the
batch ``B`` and the knobs below, so ``torch.export``, ONNX and TensorRT take the graph as is.

Differences from torchvision eager, each named here and tested:

* ``clip to canvas``: boxes are clipped to the canvas, not to each image's resized size (the
  graph does not know it); equal when the canvas is the resized image size.
* ``candidate cap``: class-aware NMS sees at most ``box_candidates`` (score-sorted) boxes, since
  TensorRT's NMS takes at most 5000; torchvision sees all ``R x (classes-1)`` above the threshold.
  Only models with more than ``box_candidates`` scores above ``score_threshold`` can differ.
* ``padded rows``: outputs have ``max_detections`` rows; rows past ``num_detections`` are zero,
  with class -1.

Two export options change how, not what, the graph computes:

* ``normalize_in_graph``: the input is 0-255 RGB and the graph applies ``(x/255 - mean)/std``
  itself (for DeepStream, whose one ``net-scale-factor`` cannot express per-channel std). The
  canvas padding is then whatever the feeder puts there: equal to the normalised graph when the
  padding is ``255*mean`` per channel (normalised 0, torchvision's padding); black padding
  normalises to ``-mean/std`` instead.
* ``mask_head="detections"``: the mask head runs on the first ``max(num_detections)`` rows only
  (data-dependent shape; CPU engines) instead of all ``max_detections`` rows; the outputs are the
  same, padded to ``max_detections`` rows.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.image_list import ImageList

from mrcnn_edge.core.contract import MASK_HEADS, PRECISIONS, TRT_NMS_MAX_BOXES, TRT_TOPK_MAX_K, canvas_problem
from mrcnn_edge.model import ops  # noqa: F401  registers torch.ops.mrcnn_edge.*

__all__ = ["EdgeMaskRCNN"]


def _decode(deltas: Tensor, anchors: Tensor, weights: tuple[float, float, float, float], clip: float) -> Tensor:
    """torchvision ``BoxCoder.decode_single`` on ``[..., 4]`` tensors (float32)."""
    wx, wy, ww, wh = weights
    widths = anchors[..., 2] - anchors[..., 0]
    heights = anchors[..., 3] - anchors[..., 1]
    ctr_x = anchors[..., 0] + 0.5 * widths
    ctr_y = anchors[..., 1] + 0.5 * heights
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = torch.clamp(deltas[..., 2] / ww, max=clip)
    dh = torch.clamp(deltas[..., 3] / wh, max=clip)
    pcx, pcy = dx * widths + ctr_x, dy * heights + ctr_y
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    # torchvision computes the half sizes as tensors of the same dtype: keep that order of operations
    hw, hh = torch.tensor(0.5, dtype=pcy.dtype) * pw, torch.tensor(0.5, dtype=pcx.dtype) * ph
    return torch.stack([pcx - hw, pcy - hh, pcx + hw, pcy + hh], dim=-1)


def _clip(boxes: Tensor, height: int, width: int) -> Tensor:
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1)


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, k]]`` for ``x [B, N, ...]`` and ``idx [B, K]`` (idx >= 0)."""
    extra = x.shape[2:]
    flat_idx = idx.reshape(idx.shape[0], idx.shape[1], *([1] * len(extra))).expand(idx.shape[0], idx.shape[1], *extra)
    return torch.gather(x, 1, flat_idx)


class EdgeMaskRCNN(nn.Module):
    """Static-shape inference of a torchvision ``MaskRCNN``.

    Input ``images (Tensor[B, 3, H, W])``: RGB, ``(x/255 - mean)/std``, letterboxed top-left,
    zeros elsewhere (float32; float16 is accepted for fp16 models).
    Output, in the order of ``contract.OUTPUTS`` (which states each shape and dtype):
    ``num_detections [B,1] int32``, ``boxes [B,K,4] float32`` (x1,y1,x2,y2 canvas pixels),
    ``scores [B,K] float32`` descending, ``classes [B,K] int32`` (torchvision label ids, -1 past
    ``num_detections``), ``masks [B,K,M,M]`` probabilities of the detection's own class (float32,
    or float16 for fp16).
    """

    def __init__(
        self,
        model: MaskRCNN,
        input_size: tuple[int, int] = (512, 512),
        batch: int = 1,
        rpn_pre_nms_top_n: int | None = None,
        rpn_post_nms_top_n: int | None = None,
        rpn_nms_iou: float | None = None,
        box_nms_iou: float | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        box_candidates: int = TRT_TOPK_MAX_K,
        precision: str = "fp32",
        normalize_in_graph: bool = False,
        mask_head: str = "static",
    ) -> None:
        super().__init__()
        H, W = int(input_size[0]), int(input_size[1])
        why = canvas_problem(H, W)
        if why:
            raise ValueError(f"canvas {H}x{W}: {why}")
        if batch < 1:
            raise ValueError(f"batch {batch}: must be >= 1")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
        if mask_head not in MASK_HEADS:
            raise ValueError(f"mask head {mask_head!r}: one of {', '.join(MASK_HEADS)}")
        model = copy.deepcopy(model).eval()  # fp16 casts modules in place: the caller's model stays as it is
        rpn, rh = model.rpn, model.roi_heads
        self.H, self.W, self.B = H, W, int(batch)
        self.precision = precision
        self.backbone = model.backbone
        self.rpn_head = rpn.head
        self.box_head, self.box_predictor = rh.box_head, rh.box_predictor
        self.mask_head, self.mask_predictor = rh.mask_head, rh.mask_predictor
        self.pre_nms_top_n = int(rpn_pre_nms_top_n or rpn._pre_nms_top_n["testing"])
        self.post_nms_top_n = int(rpn_post_nms_top_n or rpn._post_nms_top_n["testing"])
        self.rpn_nms_iou = float(rpn.nms_thresh if rpn_nms_iou is None else rpn_nms_iou)
        self.box_nms_iou = float(rh.nms_thresh if box_nms_iou is None else box_nms_iou)
        self.score_threshold = float(rh.score_thresh if score_threshold is None else score_threshold)
        self.max_detections = int(max_detections or rh.detections_per_img)
        self.rpn_min_size = float(rpn.min_size)
        self.box_min_size = 1e-2  # torchvision's postprocess_detections
        self.rpn_weights = tuple(rpn.box_coder.weights)
        self.box_weights = tuple(rh.box_coder.weights)
        self.clip = float(rh.box_coder.bbox_xform_clip)
        self.num_classes = int(rh.box_predictor.cls_score.out_features)
        self.box_candidates = int(box_candidates)
        self.mask_head_rows = mask_head
        self.normalize_in_graph = bool(normalize_in_graph)
        # (x/255 - mean)/std == x*mul + add, per RGB channel, float32 (torchvision's image_mean/std)
        mean = torch.tensor(model.transform.image_mean, dtype=torch.float64).reshape(1, 3, 1, 1)
        std = torch.tensor(model.transform.image_std, dtype=torch.float64).reshape(1, 3, 1, 1)
        self.register_buffer("input_mul", (1.0 / (255.0 * std)).float(), persistent=False)
        self.register_buffer("input_add", (-mean / std).float(), persistent=False)

        # Everything that depends only on the canvas is computed once here.
        with torch.no_grad():
            dummy = torch.zeros(1, 3, H, W)
            feats = self.backbone(dummy)
        self.feature_names = list(feats.keys())
        sizes = [tuple(f.shape[-2:]) for f in feats.values()]
        anchors = model.rpn.anchor_generator(ImageList(dummy, [(H, W)]), list(feats.values()))[0]
        self.register_buffer("anchors", anchors.float(), persistent=False)  # [N, 4]
        self.anchors_per_level = [s[0] * s[1] * rpn.head.cls_logits.out_channels for s in sizes]
        self.box_pool = self._pool_params(rh.box_roi_pool, feats)
        self.mask_pool = self._pool_params(rh.mask_roi_pool, feats)
        self.mask_size = 2 * int(self.mask_pool["output_size"][0])
        self.rpn_candidates = sum(min(self.pre_nms_top_n, n) for n in self.anchors_per_level)
        # a small canvas can have fewer candidates than proposals asked for: never ask NMS for more
        self.post_nms_top_n = min(self.post_nms_top_n, self.rpn_candidates)
        if precision == "fp16":
            for m in (self.backbone, self.rpn_head, self.box_head, self.box_predictor, self.mask_head, self.mask_predictor):
                m.half()
        self.eval()

    def _pool_params(self, pool: nn.Module, feats: dict[str, Tensor]) -> dict[str, Any]:
        names = [n for n in self.feature_names if n in pool.featmap_names]
        scales = []
        for n in names:
            approx = feats[n].shape[-2] / self.H
            scales.append(2.0 ** round(math.log2(approx)))
        out = pool.output_size
        return {
            "names": names,
            "output_size": [int(out[0]), int(out[1])] if isinstance(out, (tuple, list)) else [int(out), int(out)],
            "sampling_ratio": int(pool.sampling_ratio),
            "aligned": False,  # torchvision's MultiScaleRoIAlign
            "spatial_scales": scales,
            "canonical_scale": float(pool.canonical_scale),
            "canonical_level": int(pool.canonical_level),
        }

    def _roi_align(self, rois: Tensor, feats: dict[str, Tensor], p: dict[str, Any]) -> Tensor:
        return torch.ops.mrcnn_edge.multilevel_roi_align(
            rois, [feats[n] for n in p["names"]], p["output_size"], p["sampling_ratio"], p["aligned"],
            p["spatial_scales"], p["canonical_scale"], p["canonical_level"],
        )

    # ------------------------------------------------------------------ stages
    def proposals(self, feats: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """RPN: ``(boxes [B, P, 4] float32, valid [B, P] bool)`` with P = ``rpn_post_nms_top_n``."""
        B = self.B
        logits, deltas = self.rpn_head(list(feats.values()))
        obj_levels, del_levels = [], []
        for o, d in zip(logits, deltas):  # torchvision's permute_and_flatten: [B, H*W*A, C]
            _, A, h, w = o.shape
            obj_levels.append(o.reshape(B, A, 1, h, w).permute(0, 3, 4, 1, 2).reshape(B, -1).float())
            del_levels.append(d.reshape(B, A, 4, h, w).permute(0, 3, 4, 1, 2).reshape(B, -1, 4).float())
        step = float(max(self.H, self.W) + 1)  # per-level NMS: levels moved apart by a fixed offset
        boxes_l, shifted_l, scores_l, offset = [], [], [], 0
        for lvl, (o, d, n) in enumerate(zip(obj_levels, del_levels, self.anchors_per_level)):
            top, idx = o.topk(min(self.pre_nms_top_n, n), dim=1)  # on logits, like torchvision
            anchors = self.anchors[offset: offset + n][idx]  # [B, k, 4]
            boxes = _clip(_decode(_gather_rows(d, idx), anchors, self.rpn_weights, self.clip), self.H, self.W)
            scores = torch.sigmoid(top)
            small = ((boxes[..., 2] - boxes[..., 0]) < self.rpn_min_size) | ((boxes[..., 3] - boxes[..., 1]) < self.rpn_min_size)
            scores_l.append(torch.where(small, torch.full_like(scores, -1.0), scores))
            boxes_l.append(boxes)
            shifted_l.append(boxes + lvl * step)
            offset += n
        boxes, scores = torch.cat(boxes_l, 1), torch.cat(scores_l, 1)
        keep = torch.ops.mrcnn_edge.padded_nms(torch.cat(shifted_l, 1), scores, self.rpn_nms_iou, -0.5, self.post_nms_top_n)
        valid = keep >= 0
        kept = _gather_rows(boxes, keep.clamp(min=0))
        kept = torch.where(valid.unsqueeze(-1), kept, torch.zeros_like(kept))
        return kept, valid

    def detect(self, feats: dict[str, Tensor], proposals: Tensor, valid: Tensor) -> tuple[Tensor, ...]:
        """Box head + class-aware NMS: ``(num [B] int32, boxes [B,K,4], scores [B,K], classes [B,K] int32)``."""
        B, P, K = self.B, proposals.shape[1], self.max_detections
        dtype = feats[self.feature_names[0]].dtype
        pooled = self._roi_align(proposals, feats, self.box_pool)  # [B, P, C, 7, 7]
        x = self.box_head(pooled.reshape(B * P, *pooled.shape[2:]).to(dtype))
        logits, regression = self.box_predictor(x)
        nc = self.num_classes
        scores = torch.softmax(logits.float(), -1).reshape(B, P, nc)[..., 1:]  # background dropped
        boxes = _decode(regression.float().reshape(B, P, nc, 4), proposals.unsqueeze(2), self.box_weights, self.clip)
        boxes = _clip(boxes, self.H, self.W)[:, :, 1:]  # [B, P, nc-1, 4]
        labels = torch.arange(1, nc).reshape(1, 1, nc - 1).expand(B, P, nc - 1)
        small = ((boxes[..., 2] - boxes[..., 0]) < self.box_min_size) | ((boxes[..., 3] - boxes[..., 1]) < self.box_min_size)
        ok = valid.unsqueeze(-1) & ~small
        scores = torch.where(ok, scores, torch.zeros_like(scores))
        boxes, scores, labels = boxes.reshape(B, -1, 4), scores.reshape(B, -1), labels.reshape(B, -1)
        n_cand = boxes.shape[1]
        if n_cand > TRT_NMS_MAX_BOXES:  # the candidate cap (see module docstring)
            scores, top = scores.topk(min(self.box_candidates, n_cand), dim=1)
            boxes, labels = _gather_rows(boxes, top), torch.gather(labels, 1, top)
        offset = labels.to(boxes.dtype).unsqueeze(-1) * float(max(self.H, self.W) + 1)
        keep = torch.ops.mrcnn_edge.padded_nms(boxes + offset, scores, self.box_nms_iou, self.score_threshold,
                                               min(K, boxes.shape[1]))
        if keep.shape[1] < K:  # fewer candidates than output rows: pad
            keep = torch.cat([keep, torch.full((B, K - keep.shape[1]), -1, dtype=keep.dtype)], 1)
        found = keep >= 0
        safe = keep.clamp(min=0)
        det_boxes = torch.where(found.unsqueeze(-1), _gather_rows(boxes, safe), torch.zeros(1, 1, 4))
        det_scores = torch.where(found, torch.gather(scores, 1, safe), torch.zeros(1, 1))
        det_classes = torch.where(found, torch.gather(labels, 1, safe), torch.full_like(safe, -1))
        return found.sum(1).to(torch.int32), det_boxes, det_scores, det_classes.to(torch.int32)

    def segment(self, feats: dict[str, Tensor], boxes: Tensor, classes: Tensor, num: Tensor | None = None) -> Tensor:
        """Mask head on the detections: ``[B, K, M, M]`` probabilities of each detection's class.

        With ``num [B] int32`` (``mask_head="detections"``), only the first ``max(num)`` rows go
        through the mask head (rows are score-sorted, the valid ones first); the rest are zero."""
        if num is not None:
            K = boxes.shape[1]
            # data-dependent: torch.export makes it an unbacked size (no int()). At least one row, so
            # that the graph never holds an empty batch: some mask heads (ResNet-50-FPN v2's norm
            # layers) branch on an empty input, a guard torch.export cannot decide on an unbacked
            # size. A row past num_detections has class -1 and its mask is zeroed below.
            n = num.max().clamp(min=1).item()
            torch._check(n >= 1)
            torch._check(n <= K)
            masks = self.segment(feats, boxes[:, :n], classes[:, :n])
            pad = masks.new_zeros(masks.shape[0], K - n, *masks.shape[2:])
            return torch.cat([masks, pad], 1).reshape(self.B, K, self.mask_size, self.mask_size)
        B, K = boxes.shape[:2]
        dtype = feats[self.feature_names[0]].dtype
        pooled = self._roi_align(boxes, feats, self.mask_pool)
        logits = self.mask_predictor(self.mask_head(pooled.reshape(B * K, *pooled.shape[2:]).to(dtype)))
        M = logits.shape[-1]
        idx = classes.clamp(min=0).to(torch.int64).reshape(B * K, 1, 1, 1).expand(B * K, 1, M, M)
        masks = torch.sigmoid(torch.gather(logits, 1, idx).reshape(B, K, M, M))
        masks = torch.where((classes >= 0).reshape(B, K, 1, 1), masks, torch.zeros_like(masks))
        return masks

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        if self.normalize_in_graph:  # 0-255 RGB in; normalised in float32 before any cast
            images = images.float() * self.input_mul + self.input_add
        feats = self.backbone(images.to(dtype))
        proposals, valid = self.proposals(feats)
        num, boxes, scores, classes = self.detect(feats, proposals, valid)
        masks = self.segment(feats, boxes, classes, num if self.mask_head_rows == "detections" else None)
        # [B,1]: one element per frame's layer, as the contract's num_detections is (nvinfer splits per frame)
        return num.reshape(self.B, 1), boxes, scores, classes, masks
