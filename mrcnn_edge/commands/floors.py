"""How fast a model could run here at best: its weighted ops' arithmetic over this CPU's GEMM speed.

``mrcnn-edge benchmark`` puts each engine's *floor* beside its time: the multiply-accumulates of
every weighted op of the ONNX graph (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``, counted from
the shapes after ONNX shape inference) divided by the best GEMM throughput of this CPU at the
precision that op runs in (an INT8 model's quantized ops at the INT8 rate, its float ops and every
op of a float model at the fp32 or bf16 rate). Everything else (ROIAlign, NMS, pre/post) counts
zero, so the floor is a lower bound, and ``floor / time`` is the share of the machine's arithmetic
speed an engine reaches on this model.

The mask head's row count of a ``mask_head: detections`` graph depends on the image (a symbolic
dimension after shape inference): its cost is per row, and a frame's floor uses the detections the
engine returned for that frame. GEMM throughput is measured with OpenVINO (the CPU engine the
floors are for; oneDNN underneath) per precision on the two kernels these graphs are made of, a
1024 x 1024 x 1024 ``MatMul`` and a 3x3, 256-channel convolution on a 128 x 128 map, keeping the
faster (the convolution ran at 188 against 127-175 GFLOP/s fp32 on the README's 2-core VM), each
the best of a few short windows so that a neighbour's load hurts it least; ``--gemm-limits`` gives
them instead. A share above 100% remains possible where an engine computes a convolution with
fewer multiplications than its direct form (Winograd) or the clock ran higher than during the
probe: the floor is the direct arithmetic at the probed speed, not a law.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.errors import UserError

__all__ = ["GraphCost", "graph_cost", "gemm_limits", "parse_gemm_limits", "floor_ms", "model_floor_ms",
           "LIMIT_PRECISIONS"]

LIMIT_PRECISIONS = ("fp32", "bf16", "int8")
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class GraphCost:
    """Multiply-accumulates of a graph's weighted ops: ``fixed`` (per image, whatever it shows) and
    ``per_row`` (per detection row of a mask head on the detections), each by ``"int8"`` (ops with a
    dequantized input) and ``"float"``."""

    fixed: dict[str, float] = field(default_factory=lambda: {"int8": 0.0, "float": 0.0})
    per_row: dict[str, float] = field(default_factory=lambda: {"int8": 0.0, "float": 0.0})

    def gflop(self, rows: float) -> float:
        """Billions of floating-point operations (2 per multiply-accumulate) for ``rows`` detections."""
        return 2e-9 * sum(self.fixed[k] + rows * self.per_row[k] for k in self.fixed)


def _dims(shapes: Mapping[str, Any], name: str) -> list[int | None] | None:
    vi = shapes.get(name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def graph_cost(model: str | Path | Any) -> GraphCost:
    """The :class:`GraphCost` of an ONNX model (a path or a ``ModelProto``); a dimension shape
    inference leaves symbolic is the mask head's row count (its one data-dependent size)."""
    import onnx

    from mrcnn_edge.export.checks import register_schema

    register_schema()
    proto = onnx.load(str(model)) if isinstance(model, (str, Path)) else model
    inferred = onnx.shape_inference.infer_shapes(proto)
    g = inferred.graph
    shapes = {v.name: v for v in (*g.value_info, *g.input, *g.output)}
    inits = {i.name: list(i.dims) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}

    def shape(name: str) -> list[int | None] | None:
        if name in inits:
            return inits[name]
        p = producers.get(name)
        if p is not None and p.op_type == "DequantizeLinear":  # a quantized weight: the INT8 tensor's dims
            return shape(p.input[0])
        return _dims(shapes, name)

    cost = GraphCost()
    for n in g.node:
        if n.op_type not in _WEIGHTED:
            continue
        x, w, y = shape(n.input[0]), shape(n.input[1]), _dims(shapes, n.output[0])
        if x is None or w is None or y is None:
            raise UserError(f"cannot count the arithmetic of {n.op_type} {n.name}: shape inference left its shape unknown")
        if n.op_type == "Conv":       # out [N,Co,H,W], weight [Co,Ci/g,kh,kw]: Co*H*W*(Ci/g)*kh*kw per image
            per_image, rows = float(np.prod(y[1:]) * np.prod(w[1:])), y[0]
        elif n.op_type == "ConvTranspose":  # in [N,Ci,H,W], weight [Ci,Co/g,kh,kw]
            per_image, rows = float(np.prod(x[1:]) * np.prod(w[1:])), x[0]
        else:                          # out [M,N] (MatMul: [..,M,N]), the weight holds K
            transposed = n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)
            k = w[-1] if transposed else w[-2]
            per_image, rows = float(np.prod(y[1:]) * k), y[0]
        kind = "int8" if producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear" \
            else "float"
        if rows is None:
            cost.per_row[kind] += per_image
        else:
            cost.fixed[kind] += per_image * rows
    return cost


def floor_ms(cost: GraphCost, rows: float, limits: Mapping[str, float], float_precision: str) -> float:
    """Milliseconds the weighted ops need at ``limits`` (GFLOP/s by precision): INT8 ops at the
    ``int8`` rate, float ops at ``float_precision``'s."""
    seconds = 0.0
    for kind, precision in (("int8", "int8"), ("float", float_precision)):
        ops = 2.0 * (cost.fixed[kind] + rows * cost.per_row[kind])
        if ops:
            seconds += ops / (limits[precision] * 1e9)
    return seconds * 1e3


def model_floor_ms(model: str | Path, float_precision: str, rows: float, limits: Mapping[str, float]) -> float | None:
    """The floor of an ONNX model (its :func:`graph_cost` at ``rows`` detections); None where
    ``limits`` lacks a precision it needs."""
    cost = graph_cost(model)
    needed = {float_precision, *(["int8"] if cost.fixed["int8"] or cost.per_row["int8"] else [])}
    return floor_ms(cost, rows, limits, float_precision) if needed <= set(limits) else None


def parse_gemm_limits(text: str) -> dict[str, float]:
    """``fp32=139,bf16=392,int8=548`` (GFLOP/s, GOP/s for int8) -> a dict; one-line UserError otherwise."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if key not in LIMIT_PRECISIONS or not number > 0:
            raise UserError(f"--gemm-limits {text!r}: expected PRECISION=GFLOPS pairs with precisions from "
                            f"{', '.join(LIMIT_PRECISIONS)}, e.g. fp32=139,bf16=392,int8=548")
        out[key] = number
    return out


def _quantized(ops: Any, x: Any, w: Any, int8: bool) -> tuple[Any, Any]:
    """Quantize-dequantize both operands (255 levels, symmetric) for int8: OpenVINO then runs the
    product in INT8."""
    if not int8:
        return x, w
    scale = float(np.abs(w.get_data()).max())
    return (ops.fake_quantize(x, -4.0, 4.0, -4.0, 4.0, 255),
            ops.fake_quantize(w, -scale, scale, -scale, scale, 255))


def _matmul_model(ov: Any, n: int, int8: bool) -> tuple[Any, tuple[int, ...], float]:
    """An ``n x n x n`` product: (model, input shape, FLOP per call)."""
    from openvino import opset13 as ops

    a = ops.parameter([n, n], np.float32, name="a")
    w = ops.constant(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    x, w = _quantized(ops, a, w, int8)
    return ov.Model([ops.matmul(x, w, False, False)], [a]), (n, n), 2.0 * n ** 3


def _conv_model(ov: Any, c: int, hw: int, int8: bool) -> tuple[Any, tuple[int, ...], float]:
    """A 3x3, ``c``-channel convolution on an ``hw x hw`` map: (model, input shape, FLOP per call)."""
    from openvino import opset13 as ops

    a = ops.parameter([1, c, hw, hw], np.float32, name="a")
    w = ops.constant((np.random.default_rng(0).standard_normal((c, c, 3, 3)) * 0.05).astype(np.float32))
    x, w = _quantized(ops, a, w, int8)
    return (ov.Model([ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])], [a]), (1, c, hw, hw),
            2.0 * c * c * 9 * hw * hw)


def gemm_limits(precisions: tuple[str, ...] = LIMIT_PRECISIONS, n: int = 1024, windows: int = 3,
                window_s: float = 0.3) -> dict[str, float]:
    """This CPU's GEMM throughput (GFLOP/s; GOP/s for int8) per precision, measured with OpenVINO
    on all cores: the faster of an ``n``-sized ``MatMul`` and a 3x3 convolution (module docstring);
    precisions the CPU does not compute natively (bf16 without BF16 instructions) are left out.
    Needs the ``openvino`` extra (UserError in one line otherwise)."""
    from mrcnn_edge.core.errors import require
    from mrcnn_edge.runtime.backends.openvino import OPENVINO_PRECISIONS, cpu_has_bf16

    ov = require("openvino", "openvino", "measuring this CPU's GEMM throughput (or give --gemm-limits)")
    core = ov.Core()
    rng = np.random.default_rng(1)
    out: dict[str, float] = {}
    for precision in precisions:
        if precision == "bf16" and not cpu_has_bf16(core):
            continue
        hint = OPENVINO_PRECISIONS[precision]  # int8: the float parts around the INT8 product in f32
        for model, shape, flop in (_matmul_model(ov, n, precision == "int8"), _conv_model(ov, 256, 128, precision == "int8")):
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            x = rng.standard_normal(shape).astype(np.float32)
            for _ in range(2):
                request.infer({0: x})
            best = float("inf")
            for _ in range(windows):
                t0, k = time.perf_counter(), 0
                while time.perf_counter() - t0 < window_s:
                    request.infer({0: x})
                    k += 1
                best = min(best, (time.perf_counter() - t0) / k)
            out[precision] = max(out.get(precision, 0.0), flop / best / 1e9)
    return out
