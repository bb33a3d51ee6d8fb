"""CLI command ``quantize``: an fp32 export -> its INT8 Q/DQ model, calibrated on the user's images."""
from __future__ import annotations

import argparse

from mrcnn_edge.core.contract import CALIBRATION_LIMIT
from mrcnn_edge.core.errors import UserError

__all__ = ["DESCRIPTION_QUANTIZE", "add_quantize_arguments", "run_quantize"]

DESCRIPTION_QUANTIZE = (
    "Post-training INT8 quantization of an exported fp32 model (either flavor) to explicit Q/DQ placed as "
    "TensorRT wants it: all inputs of convolutions, transposed convolutions and fully connected layers "
    "(per-channel weights, symmetric) and the residual input of skip-connection adds, so that layers fuse and "
    "stay INT8; ROIAlign, NMS, box decoding and softmax stay float. Calibrated on your images, letterboxed as "
    "the runtime does. Build an engine from the result with 'mrcnn-edge build' (TensorRT 10/11, strongly "
    "typed) or run it on a CPU (OpenVINO where installed)."
)


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the fp32 ONNX model made by 'mrcnn-edge export'")
    p.add_argument("--calibration", required=True,
                   help="calibration images: a folder (or a dataset folder with images/) or a glob; "
                        "100-500 images like the ones the model will see")
    p.add_argument("-o", "--output", required=True, help="INT8 ONNX file to write (e.g. model.int8.onnx)")
    p.add_argument("--limit", type=int, default=CALIBRATION_LIMIT, help="use at most the first N calibration images")


def run_quantize(args) -> int:
    from mrcnn_edge.export.quantize import quantize_model

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be >= 1")
    rep = quantize_model(args.model, args.calibration, args.output, limit=args.limit)
    nodes = ", ".join(f"{v} {k}" for k, v in sorted(rep["quantized_nodes"].items()))
    print(f"{args.output}: int8 ({nodes}), calibrated on {rep['images']} images")
    return 0
