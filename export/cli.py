"""CLI commands ``export`` and ``validate`` (torch and onnx are imported inside the commands)."""
from __future__ import annotations

import argparse
import json

from mrcnn_edge.core.cliutil import parse_canvas, positive_int, probability
from mrcnn_edge.core.contract import CANVAS_MULTIPLE, DEFAULT_MASK_HEAD, FLAVORS, MASK_HEADS, PRECISIONS
from mrcnn_edge.core.progress import note

DESCRIPTION_EXPORT = (
    "Export a Mask R-CNN checkpoint to a static-shape ONNX model: input 'images' [B,3,H,W], outputs "
    "num_detections, boxes, scores, classes, masks, with metadata. Flavor 'tensorrt' carries the "
    "MultilevelRoIAlign plugin node (build an engine with 'mrcnn-edge build'); 'portable' uses standard ops only."
)
DESCRIPTION_VALIDATE = (
    "Run torchvision eager, EdgeMaskRCNN eager and the exported model (ONNX Runtime, or a TensorRT engine) on the "
    "same images; match detections, print per-output differences, mask IoU and (with COCO annotations) AP per "
    "backend. Exit 0 within the printed tolerances, 1 outside."
)


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint (.pth): torchvision state dict, training-reference or mrcnn-edge format")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p.add_argument("--arch", default=None, help="architecture, checked against the tensors")
    p.add_argument("--num-classes", type=positive_int, default=None, help="class count incl. background, checked")
    p.add_argument("--class-names", default=None, help="text file, one class name a line")
    p.add_argument("--input-size", default="512x512", help=f"canvas HxW, multiples of {CANVAS_MULTIPLE}")
    p.add_argument("--batch", type=positive_int, default=1, help="images per inference")
    p.add_argument("--flavor", choices=tuple(FLAVORS), default="tensorrt", help=_choices_help(FLAVORS))
    p.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32", help=_choices_help(PRECISIONS))
    p.add_argument("--max-detections", type=positive_int, default=None, help="rows per image (model default: 100)")
    p.add_argument("--score-threshold", type=probability, default=None, help="minimum detection score (model default: 0.05)")
    p.add_argument("--rpn-pre-nms-top-n", type=positive_int, default=None, help="proposals per level before NMS (default 1000)")
    p.add_argument("--rpn-post-nms-top-n", type=positive_int, default=None, help="proposals kept after NMS (default 1000)")
    p.add_argument("--mask-head", choices=tuple(MASK_HEADS), default=None,
                   help=_choices_help(MASK_HEADS) + " (detections: portable flavor only; outputs still padded "
                        "to --max-detections rows). Default: "
                        + ", ".join(f"{v} for --flavor {k}" for k, v in DEFAULT_MASK_HEAD.items()))
    p.add_argument("--normalize-in-graph", action="store_true",
                   help="the graph takes 0-255 RGB and applies mean/std itself (DeepStream's nvinfer needs it "
                        "when std differs per channel)")


def _choices_help(table: dict[str, str]) -> str:
    """``name: meaning; ...`` of a contract table, for --help (argparse's ``%`` formatting escaped)."""
    return "; ".join(f"{name}: {meaning}" for name, meaning in table.items()).replace("%", "%%")


def run_export(args) -> int:
    from mrcnn_edge.core.atomic import check_writable
    from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx

    opts = ExportOptions(input_size=parse_canvas(args.input_size), batch=args.batch, flavor=args.flavor,
                         precision=args.precision, max_detections=args.max_detections,
                         score_threshold=args.score_threshold, rpn_pre_nms_top_n=args.rpn_pre_nms_top_n,
                         rpn_post_nms_top_n=args.rpn_post_nms_top_n, mask_head=args.mask_head,
                         normalize_in_graph=args.normalize_in_graph)
    opts.validate()  # before the (slow) checkpoint load, as is the output's folder
    check_writable(args.output)
    from mrcnn_edge.model.checkpoint import load_checkpoint

    model, cfg = load_checkpoint(args.checkpoint, arch=args.arch, num_classes=args.num_classes,
                                 class_names=args.class_names)
    rep = export_onnx(model, cfg, args.output, opts)
    m = rep["metadata"]
    print(f"{args.output}: {m['arch']}, {m['num_classes'] - 1} classes, canvas {m['input_size'][0]}x{m['input_size'][1]}, "
          f"batch {m['batch']}, {m['flavor']} flavor, {m['precision']}, {rep['nodes']} nodes, {rep['seconds']} s")
    return 0


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the PyTorch checkpoint the model was exported from")
    p.add_argument("--model", required=True, help="exported model: .onnx or .engine")
    p.add_argument("--images", default=None,
                   help="images to run: a folder of images, a dataset folder (its images/ subfolder, as "
                        "'mrcnn-edge synth' writes), an image file or a glob (default: 8 synthetic images); "
                        "with --annotations, where the annotated images are if not next to the annotations")
    p.add_argument("--annotations", default=None,
                   help="COCO annotations, a dataset folder (annotations.json + images/) or the .json file: "
                        "runs the annotated images and adds box and mask AP per backend")
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N images")
    p.add_argument("--report", default=None, help="write the markdown report here")
    p.add_argument("--json", default=None, help="write the full report as JSON here")
    p.add_argument("--no-bf16-check", action="store_true",
                   help="with --annotations, a portable ONNX (fp32 or INT8) and a CPU with BF16 instructions, "
                        "validate also runs OpenVINO with the float parts in fp32 and in bf16 on the annotated images "
                        "and records bf16 in the model's metadata when its mask AP is within 0.01 of the fp32 float "
                        "parts' (run's automatic precision reads it); this flag skips that")


def run_validate(args) -> int:
    from mrcnn_edge.core.atomic import atomic_output, check_writable

    from mrcnn_edge.export.validate.compare import as_json
    from mrcnn_edge.export.validate import format_report, validate

    for out in (args.report, args.json):
        if out:
            check_writable(out)
    report = validate(args.checkpoint, args.model, images=args.images, annotations=args.annotations, limit=args.limit)
    text = format_report(report)
    print(text)
    if args.report:
        with atomic_output(args.report) as tmp:
            tmp.write_text(text)
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(as_json(report), indent=2) + "\n")
    if not report.ok:
        note("validation FAILED: outside the tolerances above")
    elif args.annotations and not args.no_bf16_check and str(args.model).lower().endswith(".onnx"):
        from mrcnn_edge.export.validated_precisions import check_annotated

        check_annotated(args.model, args.images, args.annotations, args.limit)
    return 0 if report.ok else 1
