"""Train a torchvision Mask R-CNN from scratch on a COCO-format dataset, on a CPU.

There are no pretrained weights without internet, so the trainer is built to make a small but
real model quickly: a MobileNetV3-Large FPN with a narrow FPN and heads ("demo" preset), trainable
BatchNorm, AdamW with warm-up and cosine decay, flips and 90-degree rotations as augmentation.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch

from mrcnn_edge.model.checkpoint import build_model, save_checkpoint
from mrcnn_edge.core.config import preset_config
from .coco import Dataset, evaluate_detections, load_dataset
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.postprocess import FrameRows

__all__ = ["train", "predict", "evaluate_model"]


def _augment(img: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, rng: np.random.Generator):
    """Random flips and 90-degree rotations, applied alike to image [3,H,W], boxes and masks [N,H,W]."""
    if rng.random() < 0.5:
        img, masks = img.flip(-1), masks.flip(-1)
        w = img.shape[-1]
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    if rng.random() < 0.5:
        img, masks = img.flip(-2), masks.flip(-2)
        h = img.shape[-2]
        boxes = torch.stack([boxes[:, 0], h - boxes[:, 3], boxes[:, 2], h - boxes[:, 1]], 1)
    if rng.random() < 0.5:  # transpose = rotate + flip
        img, masks = img.transpose(-1, -2), masks.transpose(-1, -2)
        boxes = boxes[:, [1, 0, 3, 2]]
    return img.contiguous(), boxes, masks.contiguous()


def _load_split(ds: Dataset, log: Callable[[str], None]):
    items = []
    for n, image_id in enumerate(ds.image_ids):
        bgr = ds.read_image(image_id)
        boxes, labels, masks = ds.targets(image_id)
        if len(boxes) == 0:
            continue
        img = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)  # uint8 RGB
        items.append((img, torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(masks)))
        if (n + 1) % 200 == 0:
            log(f"[train] loaded {n + 1}/{len(ds.image_ids)} images")
    if not items:
        raise UserError(f"no annotated images in {ds.root}")
    return items


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    preset: str = "demo",
    iterations: int = 3000,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    threads: int | None = None,
    val: str | os.PathLike | None = None,
    half: bool = True,
    save_every: int = 0,
    init: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict:
    """Train and write a project-format checkpoint at ``out``. Returns a summary dict."""
    if iterations < 1 or batch_size < 1 or lr <= 0:
        raise UserError("iterations and batch size must be >= 1 and the learning rate > 0")
    ds = load_dataset(data)
    cfg = preset_config(preset, ds.class_names)
    from mrcnn_edge.core.atomic import check_writable

    check_writable(out)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    items = _load_split(ds, log)
    model = build_model(cfg)
    if init is not None:  # continue from a checkpoint of the same recipe (a second, shorter schedule)
        from mrcnn_edge.model.checkpoint import load_checkpoint

        start, start_cfg = load_checkpoint(init)
        if start_cfg.to_dict() | {"class_names": None} != cfg.to_dict() | {"class_names": None}:
            raise UserError(f"--init {init} is not a {preset!r} model of this dataset's {cfg.num_classes - 1} classes")
        model.load_state_dict(start.state_dict())
    # Cheaper sampling than torchvision's defaults: a from-scratch CPU run lives on iterations.
    model.rpn._pre_nms_top_n["training"] = 1000
    model.rpn._post_nms_top_n["training"] = 500
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 64
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = min(300, iterations // 10 + 1) if init is None else min(50, iterations // 10 + 1)

    def lr_at(it: int) -> float:
        if it < warmup:
            return lr * (0.001 + 0.999 * it / warmup)
        t = (it - warmup) / max(1, iterations - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    log(f"[train] {len(items)} images, {cfg.num_classes - 1} classes, preset {preset} ({cfg.arch}), "
        f"{sum(p.numel() for p in params) / 1e6:.2f} M parameters, {iterations} iterations x {batch_size}")
    t0 = time.time()
    smooth: dict[str, float] = {}
    for it in range(iterations):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        idx = rng.integers(0, len(items), batch_size)
        images, targets = [], []
        for i in idx:
            img, boxes, labels, masks = items[i]
            img, boxes, masks = _augment(img.float() / 255.0, boxes, masks, rng)
            images.append(img)
            targets.append({"boxes": boxes, "labels": labels, "masks": masks})
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise UserError(f"training diverged at iteration {it} (loss {float(loss)}); lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        for k, v in {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}.items():
            smooth[k] = v if k not in smooth else 0.95 * smooth[k] + 0.05 * v
        if (it + 1) % 20 == 0 or it + 1 == iterations:
            el = time.time() - t0
            eta = el / (it + 1) * (iterations - it - 1)
            parts = " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in smooth.items())
            log(f"[train] it {it + 1}/{iterations} {parts} lr={lr_at(it):.2e} "
                f"{(it + 1) * batch_size / el:.1f} img/s eta {eta / 60:.1f} min")
        if save_every and (it + 1) % save_every == 0 and it + 1 < iterations:
            # a usable snapshot while training goes on (written atomically, replaced by the final one)
            save_checkpoint(model, cfg, out, half=half, extra={"train": {"iterations_done": it + 1, "partial": True}})
    minutes = (time.time() - t0) / 60
    model.eval()
    summary = {"preset": preset, "init": str(init) if init else None, "iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed,
               "train_images": len(items), "train_minutes": round(minutes, 1), "data": str(data)}
    if val is not None:
        stats = evaluate_model(model, load_dataset(val), log=log)
        summary.update({f"val_{k}": round(v, 4) for k, v in stats.items()})
        log(f"[train] validation: box AP {stats['box_AP']:.3f}, mask AP {stats['mask_AP']:.3f}")
    save_checkpoint(model, cfg, out, half=half, extra={"train": summary})
    log(f"[train] wrote {out} after {minutes:.1f} min")
    return summary


@torch.inference_mode()
def predict(model, images_bgr: Sequence[np.ndarray]) -> list[FrameRows]:
    """torchvision eager inference on BGR uint8 images (its own resize), each image's detections in
    its pixels: torchvision's ``forward`` up to its mask paste, which COCO evaluation does with the
    runtime's paste (the same semantics) for every model alike."""
    from torchvision.models.detection.transform import resize_boxes

    tensors = [torch.from_numpy(np.ascontiguousarray(im[:, :, ::-1])).permute(2, 0, 1).float() / 255.0 for im in images_bgr]
    images, _ = model.transform(tensors)
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    out = []
    for d, resized, t in zip(detections, images.image_sizes, tensors):
        boxes = resize_boxes(d["boxes"], resized, t.shape[-2:]).numpy().astype(np.float32)
        out.append(FrameRows(np.arange(len(boxes)), boxes, boxes.copy(), d["scores"].numpy().astype(np.float32),
                             d["labels"].numpy().astype(np.int32), d["masks"][:, 0].numpy().astype(np.float32)))
    return out


def evaluate_model(model, ds: Dataset, limit: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, float]:
    """COCO box and mask AP of a torchvision model on ``ds`` (torchvision eager, its own resize)."""
    model.eval()
    ids = ds.image_ids[:limit] if limit else ds.image_ids
    dets = []
    for n, image_id in enumerate(ids):
        dets.append((image_id, predict(model, [ds.read_image(image_id)])[0]))
        if log and ((n + 1) % 25 == 0 or n + 1 == len(ids)):
            log(f"[evaluate] {n + 1}/{len(ids)} images")
    return evaluate_detections(ds, dets)

