"""What the engine I/O contract and TensorRT's ONNX parser demand of an ONNX model, checked on plain values.

The export and the quantizer both run these checks before they write a file: ``onnx.checker`` with
shape inference, the I/O contract (names, shapes and dtypes from ``contract.OUTPUTS``), TensorRT
compatibility (ops its parser imports, static I/O shapes, NMS inputs within its box limit) and
explicit quantization (Q/DQ only where TensorRT fuses them into INT8 kernels). Everything here takes
an ONNX ``ModelProto`` and the model's own metadata, never the exporter's or the quantizer's
objects, so both import this module and neither imports the other. onnx is imported on use.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.contract import (
    INPUT_NAME, OUTPUT_NAMES, OUTPUTS, PLUGIN_ATTRIBUTES, PLUGIN_DOMAIN, PLUGIN_NAME, TRT_NMS_MAX_BOXES,
)
from mrcnn_edge.core.errors import UserError

__all__ = ["TENSORRT_OPS", "QUANTIZED_OPS", "QDQ_OPS", "INT8_PASSTHROUGH", "register_schema", "check_model",
           "tensorrt_compatibility", "qdq_problems", "skip_connection_adds", "quantized_nodes", "nms_box_counts"]

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
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""The weighted ops: Q/DQ on all their inputs makes TensorRT (and OpenVINO) run them as INT8 kernels.
Transposed convolutions included (TensorRT's explicit-quantization guide quantizes deconvolutions
like convolutions, weights per output channel, axis 1)."""
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
INT8_PASSTHROUGH = frozenset(
    """Relu Clip LeakyRelu HardSwish HardSigmoid Sigmoid MaxPool AveragePool GlobalAveragePool ReduceMean Resize
    Reshape Flatten Transpose Squeeze Unsqueeze Identity Concat Slice Pad Add Mul""".split()
)
"""Ops between two weighted layers that do not end an INT8 region: TensorRT fuses the activations and
element-wise ops into the layer before, and moves Q/DQ across the data-movement ops and pooling.
A weighted layer left in float with INT8 layers on both sides across only these is a float island."""


def register_schema() -> None:
    """Register the ``MultilevelRoIAlign`` schema so that ``onnx.checker`` and shape inference know it.

    Its attributes are the contract's ``PLUGIN_ATTRIBUTES`` plus the two identity strings that
    TensorRT's parser reads (``plugin_version``, ``plugin_namespace``)."""
    from onnx import defs

    if defs.has(PLUGIN_NAME, PLUGIN_DOMAIN):
        return
    A = defs.OpSchema.AttrType
    types = {"int": A.INT, "float": A.FLOAT, "floats": A.FLOATS}
    attributes = [defs.OpSchema.Attribute(a.name, types[a.onnx_type], a.meaning, required=False)
                  for a in PLUGIN_ATTRIBUTES]
    attributes += [defs.OpSchema.Attribute("plugin_version", A.STRING, "TensorRT plugin version", required=False),
                   defs.OpSchema.Attribute("plugin_namespace", A.STRING, "TensorRT plugin namespace", required=False)]
    defs.register_schema(defs.OpSchema(
        PLUGIN_NAME, PLUGIN_DOMAIN, 1,
        doc="Multi-level ROIAlign (FPN level per ROI); TensorRT plugin of mrcnn-edge.",
        # One heterogeneous variadic input (rois [B,R,4] float32, then features [B,C,H_l,W_l] finest
        # first): onnxscript binds a single-then-variadic signature wrongly (it repeats the first input).
        inputs=[defs.OpSchema.FormalParameter("inputs", "T", "rois, then one feature map per level",
                                              param_option=defs.OpSchema.FormalParameterOption.Variadic,
                                              is_homogeneous=False)],
        outputs=[defs.OpSchema.FormalParameter("pooled", "T", "[B,R,C,out_h,out_w], dtype of the features")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float32 rois; float32 or float16 features")],
        attributes=attributes,
    ))


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def _dtype(value_info: Any) -> str:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type)).name


def check_model(proto: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """onnx.checker + full shape inference + the I/O contract + TensorRT compatibility; UserError on failure.

    ``meta`` is the model's own metadata (``batch``, ``input_size``, ``max_detections``,
    ``mask_size``, ``flavor``, ``precision``): the file must be what it says it is. Returns
    ``{"nodes", "outputs" (name -> dims), "tensorrt_compatible"}``."""
    import onnx

    register_schema()
    try:
        onnx.checker.check_model(proto, full_check=False)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=False)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise UserError(f"exported ONNX failed onnx.checker: {str(exc).splitlines()[0]}") from exc
    B, (H, W) = int(meta["batch"]), (int(v) for v in meta["input_size"])
    K, M, precision = int(meta["max_detections"]), int(meta["mask_size"]), str(meta["precision"])
    ins = {i.name: i for i in inferred.graph.input}
    outs = {o.name: o for o in inferred.graph.output}
    images = _dims(ins[INPUT_NAME]) if INPUT_NAME in ins else None
    if images != [B, 3, H, W]:
        raise UserError(f"exported input '{INPUT_NAME}' has shape {images}, expected {[B, 3, H, W]}")
    # float32, or float16 in an fp16 model (the contract's INPUT_NAME)
    allowed = ("float32", "float16") if precision == "fp16" else ("float32",)
    if _dtype(ins[INPUT_NAME]) not in allowed:
        raise UserError(f"exported input '{INPUT_NAME}' is {_dtype(ins[INPUT_NAME])}, expected {' or '.join(allowed)}")
    if list(outs) != list(OUTPUT_NAMES):
        raise UserError(f"exported outputs {list(outs)} differ from the contract {OUTPUT_NAMES}")
    for spec in OUTPUTS:
        want_dims, want_type = list(spec.shape(B, K, M)), spec.dtype_for(precision)
        got_dims, got_type = _dims(outs[spec.name]), _dtype(outs[spec.name])
        if (got_dims, got_type) != (want_dims, want_type):
            raise UserError(f"exported output '{spec.name}' is {got_type} {got_dims}, the contract says "
                            f"{want_type} {want_dims}")
    problems = tensorrt_compatibility(inferred, str(meta["flavor"]))
    if problems:
        raise UserError("the ONNX graph is not TensorRT-compatible: " + "; ".join(problems[:3]))
    return {"nodes": len(proto.graph.node), "outputs": {n: _dims(o) for n, o in outs.items()},
            "tensorrt_compatible": True}


def tensorrt_compatibility(proto: Any, flavor: str) -> list[str]:
    """Problems that would stop TensorRT's ONNX parser: unknown ops, dynamic I/O shapes, oversize NMS,
    Q/DQ it cannot fuse. ``proto`` after shape inference (NMS box counts come from it)."""
    problems = []
    if any(n.op_type in QDQ_OPS for n in proto.graph.node):
        problems += qdq_problems(proto)  # explicit quantization: Q/DQ only where TensorRT fuses them
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


class _Graph:
    """Producers and consumers of every tensor of a graph, and the constants (initializers, Constant)."""

    def __init__(self, proto: Any) -> None:
        self.nodes = list(proto.graph.node)
        self.inits = {i.name: i for i in proto.graph.initializer}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.nodes:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def constant(self, name: str) -> bool:
        p = self.producer.get(name)
        return name in self.inits or (p is not None and p.op_type == "Constant")

    def dequantized(self, name: str) -> bool:
        """Whether ``name`` is the output of a ``DequantizeLinear`` (an INT8 value for the reader)."""
        p = self.producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    def int8_layer(self, n: Any) -> bool:
        """A weighted op whose activation input is dequantized: TensorRT runs it in INT8."""
        return n.op_type in QUANTIZED_OPS and bool(n.input) and self.dequantized(n.input[0])


def quantized_nodes(proto: Any) -> dict[str, int]:
    """Op type -> how many weighted ops take INT8 inputs (a Q/DQ model's summary)."""
    g = _Graph(proto)
    counts: dict[str, int] = {}
    for n in g.nodes:
        if g.int8_layer(n):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def skip_connection_adds(proto: Any) -> dict[str, tuple[str, str]]:
    """``Add`` nodes that join a weighted layer's output with a skip connection: name -> (the layer's
    output, the residual input).

    TensorRT fuses such an ``Add`` into the weighted layer before it (residual blocks of ResNet and
    MobileNet, the FPN's top-down sums), in INT8 when the *residual* input carries Q/DQ. Of two
    weighted-layer inputs, the residual is the one read elsewhere too (a block's input, read by the
    next block), else the one made earlier in the graph."""
    g = _Graph(proto)
    order = {id(n): k for k, n in enumerate(g.nodes)}

    def source(name: str) -> Any:
        """The node that computed ``name``, looking through a Q/DQ pair already placed on it."""
        p = g.producer.get(name)
        while p is not None and p.op_type in QDQ_OPS:
            p = g.producer.get(p.input[0])
        return p

    adds = {}
    for n in g.nodes:
        if n.op_type != "Add" or len(n.input) != 2 or any(g.constant(i) for i in n.input):
            continue
        src = [source(i) for i in n.input]
        weighted = [k for k in (0, 1) if src[k] is not None and src[k].op_type in QUANTIZED_OPS]
        if not weighted:
            continue  # box arithmetic and the like: no layer to fuse into
        if len(weighted) == 2:
            readers = [len(g.consumers.get(n.input[k], [])) for k in (0, 1)]
            if readers[0] != readers[1]:
                branch = 0 if readers[0] < readers[1] else 1
            else:
                branch = 0 if order[id(src[0])] > order[id(src[1])] else 1
        else:
            branch = weighted[0]
        adds[n.name] = (n.input[branch], n.input[1 - branch])
    return adds


def _reaches_int8(g: _Graph, start: Any, forward: bool) -> bool:
    """Whether an INT8 layer is reached from node ``start`` across ``INT8_PASSTHROUGH`` ops only,
    downstream (its readers) or upstream (what made its activation input)."""
    seen: set[int] = set()
    todo = [start]
    while todo:
        n = todo.pop()
        if forward:
            nxt = [c for o in n.output for c in g.consumers.get(o, [])]
        else:
            nxt = [g.producer[i] for i in (n.input[:1] if n is start else n.input) if i in g.producer]
        for m in nxt:
            if id(m) in seen:
                continue
            seen.add(id(m))
            if (forward and m.op_type in QDQ_OPS) or (not forward and g.int8_layer(m)):
                return True
            if m.op_type in INT8_PASSTHROUGH or (not forward and m.op_type in QDQ_OPS):
                todo.append(m)
    return False


def qdq_problems(proto: Any) -> list[str]:
    """Q/DQ placement that TensorRT would not run as one INT8 region (empty: placed as it wants).

    TensorRT's explicit-quantization rules: INT8 symmetric (zero point 0); activations go through a
    ``QuantizeLinear`` -> ``DequantizeLinear`` pair; a ``DequantizeLinear`` feeds weighted ops
    (``QUANTIZED_OPS``: all their inputs) or the residual input of a skip-connection ``Add``
    (:func:`skip_connection_adds`), nothing else (ROIAlign, NMS, box decoding and softmax stay
    float); a skip-connection ``Add`` after an INT8 layer has its residual input quantized; and no
    weighted op stays float between INT8 layers (a float island)."""
    from onnx import TensorProto, numpy_helper

    g = _Graph(proto)
    skips = skip_connection_adds(proto)
    residuals = {(name, r) for name, (_, r) in skips.items()}
    problems = []
    for n in g.nodes:
        if n.op_type not in QDQ_OPS:
            continue
        zp = g.inits.get(n.input[2]) if len(n.input) > 2 else None
        if zp is None or zp.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.op_type} {n.name}: TensorRT needs INT8 with zero point 0 (symmetric)")
        if n.op_type == "QuantizeLinear":
            bad = [c for c in g.consumers.get(n.output[0], []) if c.op_type != "DequantizeLinear"]
            if bad:
                problems.append(f"QuantizeLinear {n.name} feeds {bad[0].op_type}, not a DequantizeLinear")
            continue
        for c in g.consumers.get(n.output[0], []):
            if c.op_type not in QUANTIZED_OPS and (c.name, n.output[0]) not in residuals:
                problems.append(f"DequantizeLinear {n.name} feeds {c.op_type} {c.name}, which TensorRT does not run "
                                "in INT8")
    for name, (branch, residual) in skips.items():
        layer = g.producer.get(branch)
        if layer is not None and g.int8_layer(layer) and not g.dequantized(residual):
            problems.append(f"Add {name} after INT8 {layer.op_type} {layer.name} has a float residual input "
                            f"{residual}: without Q/DQ there TensorRT cannot fuse it into the INT8 layer")
    for n in g.nodes:
        if (n.op_type in QUANTIZED_OPS and not g.int8_layer(n) and _reaches_int8(g, n, forward=False)
                and _reaches_int8(g, n, forward=True)):
            problems.append(f"{n.op_type} {n.name} stays float between INT8 layers (a float island: quantize its "
                            "inputs too)")
    return problems


def nms_box_counts(proto: Any) -> list[int]:
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
