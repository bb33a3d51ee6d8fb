"""Does the exported model give the same answers as the PyTorch model? A comparator over runners.

Every runner (a :class:`mrcnn_edge.runtime.backends.Backend`) sees the same letterboxed input
(the runtime's reference pre-processing) and returns the engine I/O contract in canvas pixels:

* ``torchvision``: the user's modules run by torchvision's own RPN and ROI-heads code
  (:class:`mrcnn_edge.export.validate.runners.TorchvisionRunner`);
* ``edge``: ``EdgeMaskRCNN`` eager, the graph that was exported (:class:`~mrcnn_edge.export.validate.runners.EdgeRunner`);
* ``onnx``: the ONNX file in the runtime's ONNX Runtime backend (a tensorrt-flavor file with its
  plugin nodes run by the reference implementation, ``ort_custom.register``);
* ``tensorrt``: the engine in the runtime's TensorRT backend, where TensorRT and a GPU exist.

Pairs are compared in canvas pixels (:mod:`.compare`, tolerances by precision in one table); with
COCO annotations, box and mask AP per runner are computed on the original images after the
runtime's own canvas-to-frame step (``runtime.postprocess.rows_to_frame``, masks pasted with the
boxes the runtime pastes them with): the AP printed is the AP the runtime produces.
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

from mrcnn_edge.export.validate.compare import AP, TOLERANCES, Comparison, Dets, compare, format_ap, format_pairs, judge_ap, tolerance_for

__all__ = ["Dets", "TOLERANCES", "ValidationReport", "validate", "collect_images", "format_report", "open_runner"]

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


def open_runner(model_path: str | Path, device: str = "cpu") -> Any:
    """The runtime backend for an exported model: ``.onnx`` in ONNX Runtime (``device`` "cpu" by
    default: the CPU is the reference; tensorrt flavor through the plugin's reference
    implementation), an engine in TensorRT."""
    from mrcnn_edge.core.contract import ONNX_SUFFIXES
    from mrcnn_edge.runtime.backends import open_backend

    if Path(model_path).suffix.lower() in ONNX_SUFFIXES:  # ONNX Runtime even where another backend is the default
        from mrcnn_edge.export.ort_custom import register

        register()
        return open_backend(model_path, "onnxruntime", device=device)
    return open_backend(model_path)


def _feed(runner: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
    """The canvas batch in the runner's input dtype (float16 inputs of fp16 models)."""
    from mrcnn_edge.core.contract import INPUT_NAME

    return {INPUT_NAME: batch.astype(runner.inputs[INPUT_NAME].dtype, copy=False)}


def validate(
    checkpoint: str, model_path: str, images: str | None = None, annotations: str | None = None,
    limit: int | None = None, loaded: tuple[Any, Any] | None = None, progress: bool = True,
) -> ValidationReport:
    """Run every runner on the same images and compare them; ``report.ok`` overall.

    ``loaded``: ``(model, config)`` of ``checkpoint`` when the caller has it already (not reloaded).
    ``progress``: notes and an image counter on stderr.
    """
    from mrcnn_edge.model.checkpoint import load_checkpoint
    from mrcnn_edge.export.validate.runners import IMAGE_SIZES, EdgeRunner, TorchvisionRunner
    from mrcnn_edge.runtime.preprocess import letterbox

    from mrcnn_edge.core.metadata import MODEL_KEYS, read_metadata
    from mrcnn_edge.export.onnx_export import ExportOptions, build_edge

    meta = read_metadata(model_path, MODEL_KEYS)
    model, cfg = loaded if loaded is not None else load_checkpoint(checkpoint)
    if meta.get("num_classes") not in (None, cfg.num_classes):
        raise UserError(f"{model_path} has {meta['num_classes']} classes, the checkpoint {cfg.num_classes}: not the same model")
    H, W = meta["input_size"]
    B = int(meta["batch"])
    precision = meta.get("precision", "fp32")
    tolerance = tolerance_for(precision)
    # The reference is always the float32 graph: an fp16 or int8 model is judged against the model
    # as exported (and half convolutions on a CPU are very slow).
    opts = ExportOptions(input_size=(H, W), batch=B, precision="fp32", max_detections=meta.get("max_detections"),
                         score_threshold=meta.get("score_threshold"))
    in_graph = meta.get("input_normalization") == "in_graph"
    items, dataset = collect_images(images, annotations, limit)
    if progress:
        note(f"[validate] {len(items)} images, canvas {H}x{W}, batch {B}, {precision}")
    from mrcnn_edge.core.contract import ENGINE_SUFFIXES, feed_mean_std

    kind = "tensorrt" if Path(model_path).suffix.lower() in ENGINE_SUFFIXES else "onnx"
    results: dict[str, list[Dets]] = {"torchvision": [], "edge": [], kind: []}
    canvas_clipped: list[Dets] = []  # torchvision clipping at the canvas, as the graph does
    frame_dets: dict[str, list[Any]] = {name: [] for name in results}
    letterboxes = []
    bar = Progress("[validate]", len(items), "images", enabled=progress)
    with contextlib.ExitStack() as stack:
        tv = stack.enter_context(TorchvisionRunner(model, (H, W), B, path=checkpoint))
        graphs = {"edge": stack.enter_context(EdgeRunner(build_edge(model, cfg, opts), path=checkpoint)),
                  kind: stack.enter_context(open_runner(model_path))}
        for start in range(0, len(items), B):
            chunk = items[start: start + B]
            xs, raws, lbs = [], [], []
            for _, frame in chunk:
                x, lb = letterbox(frame, (H, W), cfg.image_mean, cfg.image_std)
                xs.append(x)
                lbs.append(lb)
                if in_graph:  # the model normalises itself: it takes the 0-255 RGB canvas
                    raws.append(letterbox(frame, (H, W), *feed_mean_std("in_graph", cfg.image_mean,
                                                                        cfg.image_std))[0])
            while len(xs) < B:  # pad a partial batch with a blank canvas
                xs.append(np.zeros_like(xs[0]))
                raws.append(np.zeros_like(xs[0]))
            batch = np.stack(xs)
            model_batch = np.stack(raws) if in_graph else batch
            n = len(chunk)
            canvas = np.array([[H, W]] * B, np.int64)
            regions = canvas.copy()
            regions[:n] = [[lb.resized_h, lb.resized_w] for lb in lbs]
            outputs = {"torchvision": tv.infer({"images": batch, IMAGE_SIZES: regions})}
            _collect(results, frame_dets, "torchvision", outputs["torchvision"], lbs, dataset is not None)
            if (regions[:n] == canvas[:n]).all():
                canvas_clipped += results["torchvision"][-n:]
            else:
                twin = tv.infer({"images": batch, IMAGE_SIZES: canvas})
                canvas_clipped += [Dets.from_outputs(twin, b) for b in range(n)]
            for name, runner in graphs.items():
                x = model_batch if name == kind else batch
                _collect(results, frame_dets, name, runner.infer(_feed(runner, x)), lbs, dataset is not None)
            letterboxes += lbs
            bar.update(min(start + B, len(items)))
    bar.close()

    regions_hw = [(lb.resized_h, lb.resized_w) for lb in letterboxes]
    # The K each side keeps, for ties at the cut: the edge graph was built with the exported
    # model's max_detections; torchvision keeps its own detections_per_img (a tie needs one K)
    k_edge = int(graphs["edge"].metadata["max_detections"])
    k_tv = k_edge if int(tv.metadata["max_detections"]) == k_edge else None
    comparisons = {"torchvision -> edge": compare(results["torchvision"], results["edge"], TOLERANCES["torchvision->edge"],
                                                  (H, W), regions_hw, canvas_clipped, max_detections=k_tv),
                   f"edge -> {kind}": compare(results["edge"], results[kind], tolerance, (H, W), regions_hw,
                                              max_detections=k_edge)}
    report = ValidationReport(str(model_path), str(checkpoint), len(items), [H, W], precision, meta.get("flavor"),
                              comparisons)
    if dataset is not None:
        report.ap = {name: _ap(dataset, [i for i, _ in items], dets) for name, dets in frame_dets.items()}
        judge_ap(comparisons[f"edge -> {kind}"], report.ap["edge"], report.ap[kind])
    return report


def _collect(results: dict[str, list[Dets]], frame_dets: dict[str, list[Any]], name: str,
             out: dict[str, np.ndarray], letterboxes: list, with_frames: bool) -> None:
    """Keep copies of a runner's outputs (its buffers are reused): canvas ``Dets`` for the
    comparisons and, for AP, the detections in frame pixels exactly as the runtime makes them."""
    from mrcnn_edge.runtime.postprocess import paste_masks, rows_to_frame

    for b, lb in enumerate(letterboxes):
        results[name].append(Dets.from_outputs(out, b))
        if with_frames:
            rows = rows_to_frame(out, b, lb, 0.0)  # every detection the graph returned
            masks = paste_masks(rows.masks, rows.paste_boxes, (lb.frame_h, lb.frame_w))
            frame_dets[name].append((rows, masks))


def _ap(dataset: Any, image_ids: list, dets: list) -> AP:
    from mrcnn_edge.data.coco import ImageDetections, evaluate_detections

    out = [ImageDetections(image_id, rows.boxes, rows.scores, rows.classes, masks)
           for image_id, (rows, masks) in zip(image_ids, dets)]
    stats = evaluate_detections(dataset, out)
    return AP(stats["box_AP"], stats["box_AP50"], stats["mask_AP"], stats["mask_AP50"])


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
