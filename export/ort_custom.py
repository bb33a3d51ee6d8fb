"""Run the ``tensorrt``-flavor ONNX (with its ``MultilevelRoIAlign`` plugin node) in ONNX Runtime.

ONNX Runtime cannot run a TensorRT plugin node, so validation registers a reference
implementation of it through onnxruntime-extensions: the plugin's own host-compiled arithmetic
(``plugin_host``) when a C++ compiler is there, else the torch reference op. Python custom ops of
onnxruntime-extensions live in the domain ``ai.onnx.contrib`` and take no float-list attributes,
so the session runs an in-memory copy in which each plugin node is re-domained, named by its
level count and dtype, and carries its scales as a string. The file on disk is never changed.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from mrcnn_edge.errors import UserError, require

__all__ = ["has_plugin_nodes", "make_session", "reference_roi_align"]

_PLUGIN_OP = "MultilevelRoIAlign"
_CONTRIB = "ai.onnx.contrib"
_registered: set[str] = set()


def has_plugin_nodes(proto) -> bool:
    return any(n.op_type == _PLUGIN_OP for n in proto.graph.node)


def reference_roi_align(rois: np.ndarray, features: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """The plugin's semantics on the CPU: host build of the plugin header, or torch's reference op."""
    kw = dict(output_height=int(attrs.get("output_height", 7)), output_width=int(attrs.get("output_width", 7)),
              sampling_ratio=int(attrs.get("sampling_ratio", 2)), aligned=int(attrs.get("aligned", 0)),
              spatial_scales=[float(s) for s in attrs["spatial_scales"]],
              canonical_scale=float(attrs.get("canonical_scale", 224.0)),
              canonical_level=int(attrs.get("canonical_level", 4)))
    try:
        from .plugin_host import multilevel_roi_align_host

        return multilevel_roi_align_host(rois, features, **kw)
    except (RuntimeError, OSError, ImportError):  # no compiler: the torch reference has the same meaning
        import torch

        from mrcnn_edge import ops  # noqa: F401

        out = torch.ops.mrcnn_edge.multilevel_roi_align(
            torch.from_numpy(np.ascontiguousarray(rois)), [torch.from_numpy(np.ascontiguousarray(f)) for f in features],
            [kw["output_height"], kw["output_width"]], kw["sampling_ratio"], bool(kw["aligned"]), kw["spatial_scales"],
            kw["canonical_scale"], kw["canonical_level"])
        return out.numpy()


def _register(op_type: str, n_levels: int, half: bool) -> None:
    if op_type in _registered:
        return
    ext = require("onnxruntime_extensions", "export", "running the tensorrt flavor in ONNX Runtime")
    D = ext.PyCustomOpDef
    feat_t = D.dt_float16 if half else D.dt_float

    def compute(rois, *args, **attrs):
        feats = list(args[:n_levels])
        a = json.loads(attrs["params"])
        return reference_roi_align(np.asarray(rois, np.float32), [np.asarray(f) for f in feats], a)

    ext.onnx_op(op_type=op_type, inputs=[D.dt_float] + [feat_t] * n_levels, outputs=[feat_t],
                attrs={"params": D.dt_string})(compute)
    _registered.add(op_type)


def _rewrite(proto):
    """Copy of ``proto`` whose plugin nodes are onnxruntime-extensions Python ops."""
    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    inferred = onnx.shape_inference.infer_shapes(model)
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info})
    for node in model.graph.node:
        if node.op_type != _PLUGIN_OP:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        attrs["spatial_scales"] = list(attrs.get("spatial_scales", []))
        half = types.get(node.input[1]) == onnx.TensorProto.FLOAT16
        n_levels = len(node.input) - 1
        op_type = f"{_PLUGIN_OP}_L{n_levels}_{'f16' if half else 'f32'}"
        _register(op_type, n_levels, half)
        node.op_type, node.domain = op_type, _CONTRIB
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("params", json.dumps(attrs)))
    if not any(o.domain == _CONTRIB for o in model.opset_import):
        model.opset_import.add(domain=_CONTRIB, version=1)
    return model


def make_session(model: Any, providers: list[str] | None = None):
    """An ``onnxruntime.InferenceSession`` for a path or ModelProto, plugin nodes included."""
    import onnx

    ort = require("onnxruntime", "ort", "ONNX Runtime inference")
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if has_plugin_nodes(proto):
        ext = require("onnxruntime_extensions", "export", "running the tensorrt flavor in ONNX Runtime")
        proto = _rewrite(proto)
        so.register_custom_ops_library(ext.get_library_path())
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise UserError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from exc
