"""Checkpoint -> ``EdgeMaskRCNN`` -> ``torch.export`` -> ONNX (dynamo exporter), with metadata and checks.

One table drives the variants: ``FLAVORS`` (how custom ops become ONNX) and ``PRECISIONS``.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mrcnn_edge.core.contract import INPUT_NAME, OUTPUT_NAMES, PLUGIN_DOMAIN, PLUGIN_NAME
from mrcnn_edge.core.errors import UserError

__all__ = ["FLAVORS", "PRECISIONS", "ExportOptions", "export_onnx", "check_model", "tensorrt_compatibility"]

FLAVORS = {
    "tensorrt": "multi-level ROIAlign as one MultilevelRoIAlign plugin node; for TensorRT engines",
    "portable": "standard ONNX ops only (RoiAlign per level); any ONNX Runtime, TensorRT without the plugin",
}
PRECISIONS = {"fp32": "float32 throughout", "fp16": "backbone and heads in float16; boxes, levels and NMS in float32"}

# ONNX ops that TensorRT 10's ONNX parser imports (TensorRT's operators.md), restricted to those
# an exported Mask R-CNN can contain; anything else fails the compatibility check.
TENSORRT_OPS = frozenset(
    """Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape
    Conv ConvTranspose Cos CumSum Div Equal Erf Exp Expand Flatten Floor Gather GatherElements GatherND Gemm
    GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual HardSigmoid HardSwish Identity If IsInf IsNaN
    LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod Mul Neg NonMaxSuppression NonZero
    Not Or Pad Pow Range Reciprocal ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize
    RoiAlign Round ScatterElements ScatterND Shape Sigmoid Sign Sin Size Slice Softmax Softplus Split Sqrt
    Squeeze Sub Sum Tanh Tile TopK Transpose Unsqueeze Where Xor
    QuantizeLinear DequantizeLinear""".split()
)


@dataclass
class ExportOptions:
    input_size: tuple[int, int] = (512, 512)
    batch: int = 1
    flavor: str = "tensorrt"
    precision: str = "fp32"
    max_detections: int | None = None
    score_threshold: float | None = None
    rpn_pre_nms_top_n: int | None = None
    rpn_post_nms_top_n: int | None = None
    opset: int = 18
    normalize_in_graph: bool = False   # 0-255 RGB input, mean/std folded into the graph (DeepStream)
    mask_head: str = "static"          # "detections": mask head on the real detections only (CPU)
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise UserError(f"input size {h}x{w}: both sides must be positive multiples of 32 (e.g. 512x512)")
        if self.batch < 1:
            raise UserError(f"batch {self.batch}: must be >= 1")
        if self.flavor not in FLAVORS:
            raise UserError(f"unknown flavor {self.flavor!r}; choose one of: {', '.join(FLAVORS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        from mrcnn_edge.model.edge import MASK_HEADS

        if self.mask_head not in MASK_HEADS:
            raise UserError(f"unknown mask head {self.mask_head!r}; choose one of: {', '.join(MASK_HEADS)}")
        if self.mask_head != "static" and self.flavor != "portable":
            raise UserError(f"--mask-head {self.mask_head} makes a data-dependent shape that TensorRT engines do not "
                            "take: use it with --flavor portable (CPU engines), or keep --mask-head static")
        if self.max_detections is not None and self.max_detections < 1:
            raise UserError("--max-detections must be >= 1")
        if self.score_threshold is not None and not (0.0 <= self.score_threshold < 1.0):
            raise UserError("--score-threshold must be in [0, 1)")
        for name in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")


def build_edge(model, cfg, opts: ExportOptions):
    """The ``EdgeMaskRCNN`` for these options (ValueError from the graph becomes a UserError)."""
    from mrcnn_edge.model.edge import EdgeMaskRCNN

    try:
        return EdgeMaskRCNN(
            model, opts.input_size, opts.batch, rpn_pre_nms_top_n=opts.rpn_pre_nms_top_n,
            rpn_post_nms_top_n=opts.rpn_post_nms_top_n, score_threshold=opts.score_threshold,
            max_detections=opts.max_detections, precision=opts.precision,
            normalize_in_graph=opts.normalize_in_graph, mask_head=opts.mask_head,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def metadata_for(edge, cfg, opts: ExportOptions) -> dict[str, Any]:
    from mrcnn_edge import __version__

    from mrcnn_edge.export.translations import PLUGIN

    return {
        "mrcnn_edge_version": __version__,
        "arch": cfg.arch,
        "num_classes": cfg.num_classes,
        "class_names": cfg.class_names,
        "input_size": [edge.H, edge.W],
        "batch": edge.B,
        "mean": list(cfg.image_mean),
        "std": list(cfg.image_std),
        "channel_order": "RGB",
        "max_detections": edge.max_detections,
        "score_threshold": edge.score_threshold,
        "mask_size": edge.mask_size,
        "flavor": opts.flavor,
        "precision": opts.precision,
        "plugin": dict(PLUGIN) if opts.flavor == "tensorrt" else None,
        "opset": opts.opset,
        # optional keys (contract.OPTIONAL_KEYS): written only where they differ from the default
        **({"input_normalization": "in_graph"} if opts.normalize_in_graph else {}),
        **({"mask_head": opts.mask_head} if opts.mask_head != "static" else {}),
        **opts.extra_metadata,
    }


def export_onnx(
    checkpoint: str | os.PathLike | None,
    out: str | os.PathLike,
    opts: ExportOptions,
    model_and_config: tuple[Any, Any] | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Export and check; the file appears at ``out`` only when every check passed. Returns a report."""
    import onnx
    import torch

    from mrcnn_edge.core.atomic import atomic_output, check_writable
    from mrcnn_edge.core.metadata import encode

    from mrcnn_edge.export.translations import register_schema, translation_table

    opts.validate()
    out = check_writable(out)
    if model_and_config is None:
        from mrcnn_edge.model.checkpoint import load_checkpoint

        model_and_config = load_checkpoint(checkpoint)
    model, cfg = model_and_config
    t0 = time.time()
    edge = build_edge(model, cfg, opts)
    x = torch.zeros(opts.batch, 3, *opts.input_size)
    log(f"[export] torch.export of the {opts.input_size[0]}x{opts.input_size[1]} batch-{opts.batch} graph ({opts.precision})")
    with torch.no_grad():
        exported = torch.export.export(edge, (x,), strict=False)
    register_schema()
    log(f"[export] ONNX translation ({opts.flavor} flavor, opset {opts.opset})")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        program = torch.onnx.export(
            exported, (x,), None, dynamo=True, custom_translation_table=translation_table(opts.flavor),
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=opts.opset, optimize=True, verify=False,
        )
        proto = program.model_proto  # serialising warns about the plugin node's untyped output
    meta = metadata_for(edge, cfg, opts)
    del proto.metadata_props[:]
    for k, v in encode(meta).items():
        proto.metadata_props.add(key=k, value=v)
    if opts.flavor == "tensorrt" and not any(o.domain == "mrcnn_edge" for o in proto.opset_import):
        proto.opset_import.add(domain="mrcnn_edge", version=1)
    log("[export] checking: onnx.checker, shape inference, TensorRT compatibility")
    report = check_model(proto, opts)
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))
    report.update({"path": str(out), "seconds": round(time.time() - t0, 1), "metadata": meta,
                   "bytes": Path(out).stat().st_size})
    log(f"[export] wrote {out} ({report['bytes'] / 1e6:.1f} MB, {report['nodes']} nodes) in {report['seconds']} s")
    return report


def check_model(proto, opts: ExportOptions) -> dict[str, Any]:
    """onnx.checker + full shape inference + I/O contract + TensorRT compatibility; UserError on failure."""
    import onnx


    from mrcnn_edge.export.translations import register_schema

    register_schema()
    try:
        onnx.checker.check_model(proto, full_check=False)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"exported ONNX failed onnx.checker: {str(exc).splitlines()[0]}") from exc
    B, (H, W) = opts.batch, opts.input_size
    outs = {o.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
            for o in inferred.graph.output}
    ins = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in inferred.graph.input}
    if ins.get("images") != [B, 3, H, W]:
        raise UserError(f"exported input 'images' has shape {ins.get('images')}, expected {[B, 3, H, W]}")
    if list(outs) != list(OUTPUT_NAMES):
        raise UserError(f"exported outputs {list(outs)} differ from the contract {OUTPUT_NAMES}")
    problems = tensorrt_compatibility(inferred, opts.flavor)
    if problems:
        raise UserError("the ONNX graph is not TensorRT-compatible: " + "; ".join(problems[:3]))
    return {"nodes": len(proto.graph.node), "outputs": outs, "tensorrt_compatible": True}


def tensorrt_compatibility(proto, flavor: str) -> list[str]:
    """Problems that would stop TensorRT's ONNX parser: unknown ops, dynamic I/O shapes, oversize NMS."""
    from mrcnn_edge.model.edge import TRT_NMS_MAX_BOXES

    problems = []
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node):
        from mrcnn_edge.export.quantize import qdq_problems  # explicit quantization: Q/DQ only where TensorRT fuses them

        problems += qdq_problems(proto)
    for node in proto.graph.node:
        if node.domain in ("", "ai.onnx"):
            if node.op_type not in TENSORRT_OPS:
                problems.append(f"op {node.op_type} ({node.name}) is not supported by TensorRT's ONNX parser")
        elif node.domain == PLUGIN_DOMAIN and node.op_type == PLUGIN_NAME:
            if flavor != "tensorrt":
                problems.append(f"a {PLUGIN_NAME} plugin node in a portable model")
        else:
            problems.append(f"op {node.domain}::{node.op_type} is neither standard ONNX nor our plugin")
    for v in list(proto.graph.input) + list(proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"{v.name} has a dynamic shape")
    shapes = {vi.name: vi for vi in list(proto.graph.value_info) + list(proto.graph.input)}
    for node in proto.graph.node:
        if node.op_type == "NonMaxSuppression":
            vi = shapes.get(node.input[0])
            dims = [d.dim_value for d in vi.type.tensor_type.shape.dim] if vi is not None else []
            if len(dims) != 3 or dims[1] <= 0:
                problems.append(f"NMS {node.name}: box count unknown")
            elif dims[1] > TRT_NMS_MAX_BOXES:
                problems.append(f"NMS {node.name} takes {dims[1]} boxes, TensorRT's limit is {TRT_NMS_MAX_BOXES}")
    return problems


def nms_box_counts(proto) -> list[int]:
    """Box count of every NonMaxSuppression node (after shape inference), for reports and tests."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    counts = []
    for node in inferred.graph.node:
        if node.op_type == "NonMaxSuppression":
            dims = shapes[node.input[0]].type.tensor_type.shape.dim
            counts.append(dims[1].dim_value)
    return counts

