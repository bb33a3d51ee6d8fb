"""Does the exported model give the same answers as the PyTorch model? A comparator over runners.

Every runner (a :class:`mrcnn_edge.runtime.backends.Backend`, named in the table
:data:`~mrcnn_edge.export.validate.runners.RUNNERS`) sees the same letterboxed input (the
runtime's reference pre-processing) and returns the engine I/O contract in canvas pixels; the
comparator loop (:mod:`.loop`, shared with ``mrcnn-edge benchmark``) feeds them and rebuilds each
image's detections:

* ``torchvision``: the user's modules run by torchvision's own RPN and ROI-heads code
  (:class:`mrcnn_edge.export.validate.runners.TorchvisionRunner`);
* ``edge``: ``EdgeMaskRCNN`` eager, the graph that was exported (:class:`~mrcnn_edge.export.validate.runners.EdgeRunner`);
* ``onnx``: the ONNX file in the runtime's ONNX Runtime backend (a tensorrt-flavor file with its
  plugin nodes run by the reference implementation, ``ort_custom.register``);
* ``tensorrt``: the engine in the runtime's TensorRT backend, where TensorRT and a GPU exist.

Pairs are compared in canvas pixels (:mod:`.compare`, tolerances by precision in one table); with
COCO annotations, box and mask AP per runner are computed on the original images after the
runtime's own canvas-to-frame step (``runtime.postprocess.rows_to_frame``; ``data.coco`` pastes the
masks with the runtime's paste): the AP printed is the AP the runtime produces.
"""
from __future__ import annotations

import contextlib
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import Progress, note

from mrcnn_edge.export.validate.compare import AP, TOLERANCES, Comparison, compare, format_ap, format_pairs, judge_ap, tolerance_for

__all__ = ["TOLERANCES", "ValidationReport", "validate", "collect_images", "format_report"]

_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class ValidationReport:
    """What ``validate`` found: one :class:`~.compare.Comparison` per pair, AP per runner with annotations."""

    model: str
    checkpoint: str
    images: int
    canvas: list[int]
    precision: str
    flavor: str | None
    comparisons: dict[str, Comparison]
    ap: dict[str, AP] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons.values())


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


def validate(
    checkpoint: str, model_path: str, images: str | None = None, annotations: str | None = None,
    limit: int | None = None, loaded: tuple[Any, Any] | None = None, progress: bool = True,
) -> ValidationReport:
    """Run every runner on the same images and compare them; ``report.ok`` overall.

    ``loaded``: ``(model, config)`` of ``checkpoint`` when the caller has it already (not reloaded).
    ``progress``: notes and an image counter on stderr.
    """
    from mrcnn_edge.core.metadata import MODEL_KEYS, read_metadata
    from mrcnn_edge.export.onnx_export import ExportOptions
    from mrcnn_edge.export.validate.loop import Pass, run_passes
    from mrcnn_edge.export.validate.runners import TorchSource, open_runner, reference_runner
    from mrcnn_edge.model.checkpoint import load_checkpoint

    meta = read_metadata(model_path, MODEL_KEYS)
    reference, reference_options = reference_runner(model_path)
    model, cfg = loaded if loaded is not None else load_checkpoint(checkpoint)
    if meta.get("num_classes") not in (None, cfg.num_classes):
        raise UserError(f"{model_path} has {meta['num_classes']} classes, the checkpoint {cfg.num_classes}: not the same model")
    H, W = meta["input_size"]
    B = int(meta["batch"])
    precision = meta.get("precision", "fp32")
    tolerance = tolerance_for(precision)
    # The reference is always the float32 graph: an fp16 or int8 model is judged against the model
    # as exported (and half convolutions on a CPU are very slow).
    source = TorchSource(model, cfg, str(checkpoint), ExportOptions(
        input_size=(H, W), batch=B, precision="fp32", max_detections=meta.get("max_detections"),
        score_threshold=meta.get("score_threshold")))
    items, dataset = collect_images(images, annotations, limit)
    if progress:
        note(f"[validate] {len(items)} images, canvas {H}x{W}, batch {B}, {precision}")
    kind = reference.label  # "onnx" or "tensorrt"
    with_ap = dataset is not None
    bar = Progress("[validate]", len(items), "images", enabled=progress)
    with contextlib.ExitStack() as stack:
        tv = stack.enter_context(open_runner("torchvision", source))
        edge = stack.enter_context(open_runner("edge", source))
        exported = stack.enter_context(open_runner(reference.name, model_path, **reference_options))
        # torchvision clipping at the canvas, as the graph does, tells the clip difference apart
        passes = [Pass("torchvision", tv, frame=with_ap), Pass("canvas clip", tv, image_sizes="canvas"),
                  Pass("edge", edge, frame=with_ap), Pass(kind, exported, frame=with_ap)]
        results, letterboxes = run_passes(passes, [frame for _, frame in items], cfg.image_mean, cfg.image_std,
                                          on_batch=bar.update)
    bar.close()

    regions_hw = [(lb.resized_h, lb.resized_w) for lb in letterboxes]
    # The K each side keeps, for ties at the cut: the edge graph was built with the exported
    # model's max_detections; torchvision keeps its own detections_per_img (a tie needs one K)
    k_edge = int(edge.metadata["max_detections"])
    k_tv = k_edge if int(tv.metadata["max_detections"]) == k_edge else None
    comparisons = {"torchvision -> edge": compare(results["torchvision"].canvas, results["edge"].canvas,
                                                  TOLERANCES["torchvision->edge"], (H, W), regions_hw,
                                                  results["canvas clip"].canvas, max_detections=k_tv),
                   f"edge -> {kind}": compare(results["edge"].canvas, results[kind].canvas, tolerance, (H, W), regions_hw,
                                              max_detections=k_edge)}
    report = ValidationReport(str(model_path), str(checkpoint), len(items), [H, W], precision, meta.get("flavor"),
                              comparisons)
    if with_ap:
        from mrcnn_edge.data.coco import evaluate_detections

        image_ids = [image_id for image_id, _ in items]
        for name in ("torchvision", "edge", kind):
            stats = evaluate_detections(dataset, list(zip(image_ids, results[name].frame)))
            report.ap[name] = AP(stats["box_AP"], stats["box_AP50"], stats["mask_AP"], stats["mask_AP50"])
        judge_ap(comparisons[f"edge -> {kind}"], report.ap["edge"], report.ap[kind])
    return report


def format_report(report: ValidationReport) -> str:
    """Markdown: one table of pair statistics, one of AP per runner."""
    lines = [f"# Validation of `{report.model}`", "",
             f"{report.images} images, canvas {report.canvas[0]}x{report.canvas[1]}, {report.precision}, "
             f"flavor {report.flavor}", ""]
    lines += format_pairs(report.comparisons)
    if report.ap:
        lines += ["", *format_ap(report.ap)]
    lines += ["", f"**{'PASS' if report.ok else 'FAIL'}**"]
    return "\n".join(lines) + "\n"
