"""Does the exported model give the same answers as the PyTorch model? Matched detections, printed statistics.

Every backend sees the same letterboxed input (the runtime's reference pre-processing) and
returns detections in canvas pixels with 28x28 mask probabilities:

* ``torchvision``: the user's modules run by torchvision's own RPN and ROI-heads code;
* ``edge``: ``EdgeMaskRCNN`` eager (the graph that was exported);
* ``onnx``: the ONNX model in ONNX Runtime (plugin nodes through the reference implementation);
* ``tensorrt``: the engine, where TensorRT and a GPU exist.

Pairs are compared with stated tolerances (``TOLERANCES``); with COCO annotations, box and mask AP
per backend are computed on the original images.
"""
from __future__ import annotations

import glob
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mrcnn_edge.core.errors import UserError

__all__ = ["Dets", "match", "compare", "TOLERANCES", "validate", "collect_images"]

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

# (reference, candidate) -> what must hold. "exact" pairs: every detection matched one to one.
TOLERANCES: dict[str, dict[str, float]] = {
    # edge_clip_exempt: unmatched detections at the image region's border are the documented
    # clip-to-canvas difference (edge.py); reported, not failed
    "torchvision->edge": {"min_score": 0.3, "iou": 0.98, "matched_frac": 0.99, "mask_iou": 0.98, "edge_clip_exempt": 1},
    # Masks: two correct float32 evaluations differ by rounding that grows with depth and activation
    # size (torch vs ONNX Runtime on ResNet-50-FPN at 800x1344: max 5e-3 in one pixel, p99 of the
    # per-mask max 1.2e-3, mean 2e-4, mask IoU mean 0.9996). Judged on the p99 of the per-mask max,
    # a loose max that still stops a wrong level or weight (which move whole masks: > 0.05), and
    # mask IoU (a pasted mask only flips where a probability sits within rounding of 0.5).
    "exact-fp32": {"min_score": 0.0, "iou": 0.9, "box": 0.01, "score": 1e-4, "mask": 1e-2, "mask_p99": 2e-3,
                   "mask_iou": 0.99, "matched_frac": 1.0},
    # fp16: a few boxes move by a pixel or two and drag their 28x28 grid along: judged on p99 and mask IoU
    "exact-fp16": {"min_score": 0.3, "iou": 0.9, "box_p99": 0.5, "score": 2e-2, "mask_iou": 0.98, "matched_frac": 0.95},
}


@dataclass
class Dets:
    """Detections of one image in canvas pixels."""

    boxes: np.ndarray  # [N,4] float32 x1,y1,x2,y2
    scores: np.ndarray  # [N]
    classes: np.ndarray  # [N] int
    masks: np.ndarray  # [N,M,M] probabilities

    @classmethod
    def from_outputs(cls, out: dict[str, np.ndarray], b: int) -> "Dets":
        n = int(out["num_detections"][b])
        return cls(out["boxes"][b, :n].astype(np.float32), out["scores"][b, :n].astype(np.float32),
                   out["classes"][b, :n].astype(np.int64), out["masks"][b, :n].astype(np.float32))


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float64)
    a, b = a.astype(np.float64), b.astype(np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), (np.abs(a[:, None] - b[None]).max(2) == 0).astype(float))


def match(ref: Dets, cand: Dets, iou_thr: float, min_score: float = 0.0) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by reference score: same class, box IoU >= ``iou_thr``.

    Only reference detections scoring ``>= min_score`` are matched; candidates of any score may match.
    Returns ``(ref_index, cand_index, iou)`` triples.
    """
    iou = _iou_matrix(ref.boxes, cand.boxes)
    used = np.zeros(len(cand.boxes), bool)
    pairs = []
    for i in np.argsort(-ref.scores, kind="stable"):
        if ref.scores[i] < min_score:
            continue
        ok = (cand.classes == ref.classes[i]) & ~used & (iou[i] >= iou_thr)
        if not ok.any():
            continue
        j = int(np.argmax(np.where(ok, iou[i], -1)))
        used[j] = True
        pairs.append((int(i), j, float(iou[i, j])))
    return pairs


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.logical_and(a, b).sum()
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(inter) / float(union)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"max": 0.0, "mean": 0.0, "p99": 0.0}
    v = np.asarray(values, np.float64)
    return {"max": float(v.max()), "mean": float(v.mean()), "p99": float(np.percentile(v, 99))}


EDGE_CLIP = "edge clip (canvas vs image)"


def compare(ref: Sequence[Dets], cand: Sequence[Dets], tol: dict[str, float], canvas_hw: tuple[int, int],
            regions: Sequence[tuple[int, int]] | None = None, clip_twin: Sequence[Dets] | None = None) -> dict[str, Any]:
    """Statistics of ``cand`` against ``ref`` over images, and whether they are within ``tol``.

    ``clip_twin``: per image, the reference computed clipping boxes at the canvas instead of the
    image (torchvision given the canvas size). An unmatched reference detection that the twin
    lacks too, and an unmatched candidate detection that the twin has, differ only because of
    where boxes are clipped (edge.py's clip-to-canvas difference, whose boxes reach into the
    padding and change NMS around them): they are listed apart as ``EDGE_CLIP`` and, where
    ``tol["edge_clip_exempt"]`` is set, do not count against the matched fraction.
    ``regions``: per image, ``(resized_h, resized_w)`` of the letterboxed image, for the report.
    """
    from mrcnn_edge.runtime.postprocess import paste_masks

    n_ref = n_cand = n_matched = n_cand_matched = 0
    box_d, score_d, mask_d, ious, mask_ious = [], [], [], [], []
    clipped: list[dict[str, Any]] = []
    for k, (r, c) in enumerate(zip(ref, cand)):
        pairs = match(r, c, tol["iou"], tol["min_score"])
        n_ref += int((r.scores >= tol["min_score"]).sum())
        n_cand += int((c.scores >= tol["min_score"]).sum())
        n_matched += len(pairs)
        n_cand_matched += sum(1 for _, j, _ in pairs if c.scores[j] >= tol["min_score"])
        if clip_twin is not None:
            twin = clip_twin[k]
            in_twin = {p[0] for p in match(r, twin, tol["iou"], tol["min_score"])}
            from_twin = {p[1] for p in match(twin, c, tol["iou"], 0.0)}
            taken_r, taken_c = {p[0] for p in pairs}, {p[1] for p in pairs}
            region = list(regions[k]) if regions is not None else None
            for side, d, taken, explained in (("reference", r, taken_r, lambda i: i not in in_twin),
                                              ("candidate", c, taken_c, lambda j: j in from_twin)):
                for i in range(len(d.scores)):
                    if i not in taken and d.scores[i] >= tol["min_score"] and explained(i):
                        clipped.append({"image": k, "side": side, "class": int(d.classes[i]),
                                        "score": float(d.scores[i]), "box": [round(float(v), 2) for v in d.boxes[i]],
                                        "region_hw": region})
        if not pairs:
            continue
        ri = np.array([p[0] for p in pairs])
        ci = np.array([p[1] for p in pairs])
        ious += [p[2] for p in pairs]
        box_d += np.abs(r.boxes[ri] - c.boxes[ci]).max(1).tolist()
        score_d += np.abs(r.scores[ri] - c.scores[ci]).tolist()
        mask_d += np.abs(r.masks[ri] - c.masks[ci]).reshape(len(ri), -1).max(1).tolist()
        pr = paste_masks(r.masks[ri], r.boxes[ri], canvas_hw)
        pc = paste_masks(c.masks[ci], c.boxes[ci], canvas_hw)
        mask_ious += [_mask_iou(a, b) for a, b in zip(pr, pc)]
    clip_ref = sum(1 for d in clipped if d["side"] == "reference")
    clip_cand = len(clipped) - clip_ref
    frac = n_matched / n_ref if n_ref else 1.0
    exempt = bool(tol.get("edge_clip_exempt"))
    judged = n_ref - (clip_ref if exempt else 0)
    judged_frac = min(1.0, n_matched / judged) if judged > 0 else 1.0
    res = {
        "reference_detections": n_ref, "candidate_detections": n_cand, "matched": n_matched,
        "unmatched_reference": n_ref - n_matched, "unmatched_candidate": n_cand - n_cand_matched,
        "edge_clip_reference": clip_ref, "edge_clip_candidate": clip_cand, "edge_clip": clipped,
        "matched_fraction": frac, "judged_matched_fraction": judged_frac, "box_iou_min": min(ious) if ious else 1.0,
        "box_abs_diff": _stats(box_d), "score_abs_diff": _stats(score_d), "mask_prob_abs_diff": _stats(mask_d),
        "mask_iou_mean": float(np.mean(mask_ious)) if mask_ious else 1.0,
        "mask_iou_min": float(np.min(mask_ious)) if mask_ious else 1.0,
    }
    fails = []
    if judged_frac < tol["matched_frac"]:
        what = f" (without {clip_ref} {EDGE_CLIP})" if exempt and clip_ref else ""
        fails.append(f"matched {judged_frac:.3f}{what} < {tol['matched_frac']}")
    if "mask_iou" in tol and res["mask_iou_mean"] < tol["mask_iou"]:
        fails.append(f"mean mask IoU {res['mask_iou_mean']:.4f} < {tol['mask_iou']}")
    for key, stat in (("box", "box_abs_diff"), ("score", "score_abs_diff"), ("mask", "mask_prob_abs_diff")):
        if key in tol and res[stat]["max"] > tol[key]:
            fails.append(f"{key} max diff {res[stat]['max']:.3g} > {tol[key]}")
        if f"{key}_p99" in tol and res[stat]["p99"] > tol[f"{key}_p99"]:
            fails.append(f"{key} p99 diff {res[stat]['p99']:.3g} > {tol[key + '_p99']}")
    if tol.get("matched_frac", 0) >= 1.0 and (n_cand != n_ref or n_cand_matched != n_matched):
        fails.append(f"{n_cand} candidate vs {n_ref} reference detections")
    res["tolerance"] = tol
    res["failures"] = fails
    res["ok"] = not fails
    return res


def collect_images(spec: str | None, annotations: str | None, limit: int | None) -> tuple[list[tuple[Any, np.ndarray]], Any]:
    """``[(image_id_or_name, BGR frame)]`` and the COCO dataset (or None)."""
    import cv2

    dataset = None
    items: list[tuple[Any, np.ndarray]] = []
    if annotations:
        from mrcnn_edge.data.coco import load_dataset

        dataset = load_dataset(annotations)
        if spec:  # images elsewhere than next to the annotations
            dataset.root = Path(spec) if Path(spec).is_dir() else dataset.root
        for image_id in dataset.image_ids[:limit]:
            items.append((image_id, dataset.read_image(image_id)))
        return items, dataset
    if spec is None:
        from mrcnn_edge.data.shapes import image_rng, render_sample

        for i in range(limit or 8):
            items.append((f"synthetic-{i}", render_sample(image_rng(12345, i), (320, 320))[0]))
        return items, None
    p = Path(spec)
    if p.is_dir():
        paths = sorted(q for q in p.iterdir() if q.suffix.lower() in _IMAGE_EXT)
        if not paths and (p / "images").is_dir():  # a dataset folder (mrcnn-edge synth, COCO layout)
            paths = sorted(q for q in (p / "images").iterdir() if q.suffix.lower() in _IMAGE_EXT)
    elif p.is_file():
        paths = [p]
    else:
        paths = sorted(Path(q) for q in glob.glob(spec) if Path(q).suffix.lower() in _IMAGE_EXT)
    if not paths:
        raise UserError(f"no images found at {spec} (a folder of images, a dataset folder with images/, "
                        "an image file or a glob like 'dir/*.jpg')")
    for q in paths[:limit]:
        img = cv2.imread(str(q), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read image {q}")
        items.append((q.name, img))
    return items, None


# ---------------------------------------------------------------------------------------- backends


def _torchvision_runner(model, twins: list) -> Callable[[np.ndarray, list], list[Dets]]:
    """torchvision eager given each image's own size (what the user's model does). Appends to
    ``twins`` the same run given the canvas size instead, i.e. clipping where the graph clips: the
    detections that differ between the two are the clip-to-canvas difference, and nothing else."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    def heads(feats, t, hw) -> Dets:
        il = ImageList(t, [hw])
        props, _ = model.rpn(il, feats)
        det = model.roi_heads(feats, props, il.image_sizes)[0][0]
        return Dets(det["boxes"].numpy(), det["scores"].numpy(), det["labels"].numpy(), det["masks"][:, 0].numpy())

    def run(batch: np.ndarray, boxes_info: list) -> list[Dets]:
        out = []
        with torch.inference_mode():
            for x, lb in zip(batch, boxes_info):
                t = torch.from_numpy(x).float()[None]
                feats = model.backbone(t)
                out.append(heads(feats, t, (lb.resized_h, lb.resized_w)))
                same = (lb.resized_h, lb.resized_w) == tuple(t.shape[-2:])
                twins.append(out[-1] if same else heads(feats, t, tuple(t.shape[-2:])))
        return out

    return run


def _graph_runner(infer: Callable[[np.ndarray], dict[str, np.ndarray]]) -> Callable[[np.ndarray, list], list[Dets]]:
    def run(batch: np.ndarray, boxes_info: list) -> list[Dets]:
        out = infer(batch)
        return [Dets.from_outputs(out, b) for b in range(len(boxes_info))]

    return run


def _edge_infer(edge):
    import torch

    from mrcnn_edge.model.edge import OUTPUT_NAMES

    def infer(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            res = edge(torch.from_numpy(batch))
        return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in zip(OUTPUT_NAMES, res)}

    return infer


def _ort_infer(path: str):
    from .ort_custom import make_session, run_session

    sess = make_session(path)
    return lambda batch: run_session(sess, batch)


def validate(
    checkpoint: str, model_path: str, images: str | None = None, annotations: str | None = None,
    limit: int | None = None, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run every backend on the same images; returns the report (``report["ok"]`` overall)."""
    from mrcnn_edge.model.checkpoint import load_checkpoint
    from mrcnn_edge.runtime.preprocess import letterbox

    from .model_info import read_model_metadata

    meta = read_model_metadata(model_path)
    model, cfg = load_checkpoint(checkpoint)
    if meta.get("num_classes") not in (None, cfg.num_classes):
        raise UserError(f"{model_path} has {meta['num_classes']} classes, the checkpoint {cfg.num_classes}: not the same model")
    H, W = meta["input_size"]
    B = int(meta["batch"])
    precision = meta.get("precision", "fp32")
    from .onnx_export import ExportOptions, build_edge

    # The reference is always the float32 graph: an fp16 model is judged against the model as trained
    # (and half convolutions on a CPU are very slow).
    opts = ExportOptions(input_size=(H, W), batch=B, precision="fp32", max_detections=meta.get("max_detections"),
                         score_threshold=meta.get("score_threshold"))
    items, dataset = collect_images(images, annotations, limit)
    log(f"[validate] {len(items)} images, canvas {H}x{W}, batch {B}, {precision}")

    canvas_clipped: list[Dets] = []  # torchvision clipping at the canvas, as the graph does
    runners: dict[str, Callable] = {"torchvision": _torchvision_runner(model, canvas_clipped)}
    import copy

    runners["edge"] = _graph_runner(_edge_infer(build_edge(copy.deepcopy(model), cfg, opts)))
    suffix = Path(model_path).suffix.lower()
    kind = "tensorrt" if suffix in (".engine", ".plan", ".trt") else "onnx"
    if kind == "onnx":
        runners["onnx"] = _graph_runner(_ort_infer(model_path))
    else:
        from mrcnn_edge.runtime.backend_trt import TrtBackend  # GPU only

        trt = TrtBackend(model_path)
        runners["tensorrt"] = _graph_runner(lambda x: trt.infer({"images": x}))

    results: dict[str, list[Dets]] = {k: [] for k in runners}
    letterboxes = []
    for start in range(0, len(items), B):
        chunk = items[start: start + B]
        xs, lbs = [], []
        for _, frame in chunk:
            x, lb = letterbox(frame, (H, W), cfg.image_mean, cfg.image_std)
            xs.append(x)
            lbs.append(lb)
        while len(xs) < B:  # pad a partial batch with a blank canvas
            xs.append(np.zeros_like(xs[0]))
        batch = np.stack(xs)
        for name, run in runners.items():
            results[name] += run(batch, lbs)[: len(chunk)]
        del canvas_clipped[len(results["torchvision"]):]  # padding rows of a partial batch
        letterboxes += lbs
        log(f"[validate] {min(start + B, len(items))}/{len(items)} images")

    exact = "exact-fp16" if precision == "fp16" else "exact-fp32"
    regions = [(lb.resized_h, lb.resized_w) for lb in letterboxes]
    comparisons = {"torchvision -> edge": compare(results["torchvision"], results["edge"], TOLERANCES["torchvision->edge"],
                                                  (H, W), regions, canvas_clipped)}
    comparisons[f"edge -> {kind}"] = compare(results["edge"], results[kind], TOLERANCES[exact], (H, W), regions)
    report: dict[str, Any] = {"model": str(model_path), "checkpoint": str(checkpoint), "images": len(items),
                              "canvas": [H, W], "precision": precision, "flavor": meta.get("flavor"),
                              "comparisons": comparisons}
    if dataset is not None:
        report["ap"] = {name: _ap(dataset, [i for i, _ in items], dets, letterboxes) for name, dets in results.items()}
    report["ok"] = all(c["ok"] for c in comparisons.values())
    return report


def _ap(dataset, image_ids, dets: list[Dets], letterboxes) -> dict[str, float]:
    from mrcnn_edge.data.coco import ImageDetections, evaluate_detections
    from mrcnn_edge.runtime.postprocess import paste_masks

    out = []
    for image_id, d, lb in zip(image_ids, dets, letterboxes):
        boxes = lb.boxes_to_frame(d.boxes)
        masks = paste_masks(d.masks, boxes, (lb.frame_h, lb.frame_w)) if len(boxes) else np.zeros((0, lb.frame_h, lb.frame_w), bool)
        out.append(ImageDetections(image_id, boxes, d.scores, d.classes, masks))
    stats = evaluate_detections(dataset, out)
    return {k: stats[k] for k in ("box_AP", "box_AP50", "mask_AP", "mask_AP50")}


def format_report(report: dict[str, Any]) -> str:
    """Markdown: one table of pair statistics, one of AP per backend."""
    lines = [f"# Validation of `{report['model']}`", "",
             f"{report['images']} images, canvas {report['canvas'][0]}x{report['canvas'][1]}, {report['precision']}, "
             f"flavor {report.get('flavor')}", "",
             "| pair | ref dets | matched | unmatched ref/cand (of which edge clip) | box diff max / mean / p99 (px) | score diff max | "
             "mask prob diff max | mask IoU mean / min | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, c in report["comparisons"].items():
        b = c["box_abs_diff"]
        lines.append(
            f"| {name} | {c['reference_detections']} | {c['matched']} ({100 * c['matched_fraction']:.1f}%) | "
            f"{c['unmatched_reference']}/{c['unmatched_candidate']} ({c['edge_clip_reference']}/{c['edge_clip_candidate']}) | {b['max']:.4f} / {b['mean']:.4f} / {b['p99']:.4f} | "
            f"{c['score_abs_diff']['max']:.2e} | {c['mask_prob_abs_diff']['max']:.2e} | "
            f"{c['mask_iou_mean']:.4f} / {c['mask_iou_min']:.4f} | {'ok' if c['ok'] else 'FAIL: ' + '; '.join(c['failures'])} |")
    for name, c in report["comparisons"].items():
        if c["edge_clip"]:
            counted = "not counted as failures" if c["tolerance"].get("edge_clip_exempt") else "counted"
            lines += ["", f"{name}: {len(c['edge_clip'])} unmatched detections are {EDGE_CLIP}: torchvision clipping "
                      f"at the canvas, as the graph does, gives the same difference ({counted}):"]
            lines += [f"- image {d['image']} {d['side']}: class {d['class']}, score {d['score']:.3f}, box {d['box']}, "
                      f"image region {d['region_hw']}" for d in c["edge_clip"][:20]]
            if len(c["edge_clip"]) > 20:
                lines.append(f"- ... {len(c['edge_clip']) - 20} more in the JSON report")
    lines += ["", "Tolerances: " + "; ".join(
        f"{n}: " + ", ".join(f"{k}={v}" for k, v in c["tolerance"].items()) for n, c in report["comparisons"].items())]
    if "ap" in report:
        lines += ["", "| backend | box AP | box AP50 | mask AP | mask AP50 |", "|---|---|---|---|---|"]
        for name, ap in report["ap"].items():
            lines.append(f"| {name} | {ap['box_AP']:.4f} | {ap['box_AP50']:.4f} | {ap['mask_AP']:.4f} | {ap['mask_AP50']:.4f} |")
    lines += ["", f"**{'PASS' if report['ok'] else 'FAIL'}**"]
    return "\n".join(lines) + "\n"

