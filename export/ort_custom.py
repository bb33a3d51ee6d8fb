"""Run the ``tensorrt``-flavor ONNX (with its ``MultilevelRoIAlign`` plugin node) in ONNX Runtime.

ONNX Runtime cannot run a TensorRT plugin node, so validation registers a reference
implementation of it through onnxruntime-extensions: the plugin's own host-compiled arithmetic
(``plugin_host``) when a C++ compiler is there, else the torch reference op (same contract).
The session runs an in-memory copy of the model; the file on disk is never changed. In the copy:

* each plugin node is re-domained to ``ai.onnx.contrib`` (where onnxruntime-extensions looks for
  Python ops), named by its level count, and carries its checked attributes as one JSON string
  (Python ops take no float-list attributes);
* a float16 plugin node (fp16 models) is wrapped in Casts: onnxruntime-extensions' Python ops take
  no float16 (it throws ``Type float16 not supported by python customops api`` from C++, which
  aborts the process), so the half features travel to the op as float32 (exact: every half is a
  float32), the op turns them back into half (exact), runs the plugin's **fp16 path** (half in,
  float32 accumulation, half out), and returns float32 (exact), which a Cast makes half again.
  What runs is therefore the plugin's half arithmetic, bit for bit.

Anything the op cannot take becomes one ``UserError`` line, at session creation where it can be
seen there (dtypes, attributes), else when the session runs (:func:`run_session`).

:func:`register` hands all this to the runtime's ONNX Runtime backend (its custom-op domain hook),
so that validation and the benchmark run a tensorrt-flavor file as the runtime runs any ONNX file.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from mrcnn_edge.core.contract import (INPUT_NAME, PLUGIN_DOMAIN, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION,
                                      check_plugin_attributes)
from mrcnn_edge.core.errors import UserError, require

__all__ = ["has_plugin_nodes", "make_session", "run_session", "reference_roi_align", "reference_implementation",
           "register"]

_CONTRIB = "ai.onnx.contrib"
_registered: set[str] = set()
_failures: list[BaseException] = []  # raised inside a plugin op during the current run_session
_implementation: str | None = None


def has_plugin_nodes(proto) -> bool:
    return any(n.op_type == PLUGIN_NAME for n in proto.graph.node)


def reference_implementation() -> str:
    """Which CPU implementation runs plugin nodes: ``"plugin host library"`` or the torch fallback.

    Decided once per process: the plugin's own arithmetic whenever the host library builds; the
    torch reference op (same contract, torchvision's arithmetic) only where no C++ compiler is."""
    global _implementation
    if _implementation is None:
        try:
            from mrcnn_edge.export.plugin_host import host_library_path

            host_library_path()
            _implementation = "plugin host library"
        except (UserError, OSError) as exc:
            _implementation = f"torch reference ({exc})"
    return _implementation


def reference_roi_align(rois: np.ndarray, features: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """The plugin's semantics on the CPU.

    rois ``[B,R,4]`` float32 canvas pixels; features ``[B,C,H_l,W_l]`` finest first, all float32 or
    all float16; returns ``[B,R,C,out_h,out_w]`` of the features' dtype (float32 accumulation)."""
    kw = dict(output_height=int(attrs.get("output_height", 7)), output_width=int(attrs.get("output_width", 7)),
              sampling_ratio=int(attrs.get("sampling_ratio", 2)), aligned=int(attrs.get("aligned", 0)),
              spatial_scales=[float(s) for s in attrs["spatial_scales"]],
              canonical_scale=float(attrs.get("canonical_scale", 224.0)),
              canonical_level=int(attrs.get("canonical_level", 4)))
    if reference_implementation() == "plugin host library":
        from mrcnn_edge.export.plugin_host import multilevel_roi_align_host

        return multilevel_roi_align_host(rois, features, **kw)
    import torch

    from mrcnn_edge.model import ops  # noqa: F401

    out = torch.ops.mrcnn_edge.multilevel_roi_align(
        torch.from_numpy(np.ascontiguousarray(rois)), [torch.from_numpy(np.ascontiguousarray(f)) for f in features],
        [kw["output_height"], kw["output_width"]], kw["sampling_ratio"], bool(kw["aligned"]), kw["spatial_scales"],
        kw["canonical_scale"], kw["canonical_level"])
    return out.numpy()


def _register(op_type: str, n_levels: int) -> None:
    if op_type in _registered:
        return
    ext = require("onnxruntime_extensions", "export", "running the tensorrt flavor in ONNX Runtime")
    D = ext.PyCustomOpDef

    def compute(rois, *args, **attrs):
        # An exception leaving this function aborts the process (onnxruntime-extensions rethrows it
        # in C++ where nothing catches it): keep it, return zeros, and let run_session raise it.
        try:
            a = json.loads(attrs["params"])
            # float16 nodes reach here as float32 (see the module docstring): back to half, exactly
            dtype = np.float16 if a.pop("half") else np.float32
            feats = [np.asarray(f).astype(dtype, copy=False) for f in args[:n_levels]]
            out = reference_roi_align(np.asarray(rois, np.float32), feats, a)
            return out.astype(np.float32, copy=False)
        except BaseException as exc:  # noqa: BLE001 - see above; KeyboardInterrupt included
            _failures.append(exc)
            try:
                shape = (*np.shape(rois)[:2], np.shape(args[0])[1], a["output_height"], a["output_width"])
            except Exception:  # noqa: BLE001 - no shape to give: ORT then fails on its own, catchably
                shape = (0,)
            return np.zeros(shape, np.float32)

    # float32 only: onnxruntime-extensions' Python ops refuse float16 by aborting
    ext.onnx_op(op_type=op_type, inputs=[D.dt_float] * (n_levels + 1), outputs=[D.dt_float],
                attrs={"params": D.dt_string})(compute)
    _registered.add(op_type)


def _node_attributes(node) -> dict[str, Any]:
    """The node's plugin attributes, checked against the plugin's table (UserError otherwise)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    # the TensorRT parser looks the plugin up by name, version and namespace: a mismatch would not build
    version, namespace = attrs.pop("plugin_version", PLUGIN_VERSION), attrs.pop("plugin_namespace", PLUGIN_NAMESPACE)
    if (str(version), str(namespace)) != (PLUGIN_VERSION, PLUGIN_NAMESPACE):
        raise UserError(f"{PLUGIN_NAME} node {node.name!r} asks for plugin version {version!r} in namespace "
                        f"{namespace!r}; this mrcnn-edge has version {PLUGIN_VERSION!r} in {PLUGIN_NAMESPACE!r}")
    try:
        return check_plugin_attributes({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in attrs.items()})
    except ValueError as exc:
        raise UserError(f"{PLUGIN_NAME} node {node.name!r}: {exc}") from exc


def _rewrite(proto):
    """Copy of ``proto`` whose plugin nodes are onnxruntime-extensions Python ops (float32 I/O)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise UserError(f"ONNX shape inference fails on the model: {str(exc).splitlines()[0]}") from exc
    types.update({vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info})
    names = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}
    nodes = []
    for node in model.graph.node:
        if node.op_type != PLUGIN_NAME:
            nodes.append(node)
            continue
        if len(node.input) < 2 or len(node.output) != 1:
            raise UserError(f"{PLUGIN_NAME} node {node.name!r} needs inputs (rois, feature_0, ...) and one output")
        attrs = _node_attributes(node)
        n_levels = len(node.input) - 1
        if len(attrs["spatial_scales"]) != n_levels:
            raise UserError(f"{PLUGIN_NAME} node {node.name!r} has {n_levels} feature maps but "
                            f"{len(attrs['spatial_scales'])} spatial_scales")
        if types.get(node.input[0]) != TensorProto.FLOAT:
            raise UserError(f"{PLUGIN_NAME} node {node.name!r}: rois must be float32")
        feat_types = {types.get(i) for i in node.input[1:]}
        if len(feat_types) != 1 or next(iter(feat_types)) not in names.values():
            raise UserError(f"{PLUGIN_NAME} node {node.name!r}: feature maps must be all float32 or all float16")
        half = feat_types == {TensorProto.FLOAT16}
        op_type = f"{PLUGIN_NAME}_L{n_levels}"
        _register(op_type, n_levels)
        params = helper.make_attribute("params", json.dumps({**attrs, "half": half}))
        if not half:
            nodes.append(helper.make_node(op_type, list(node.input), list(node.output), name=node.name,
                                          domain=_CONTRIB))
            nodes[-1].attribute.append(params)
            continue
        # half: Cast features up (exact), run the op in float32 I/O, Cast the result down (exact)
        feats32 = []
        for i, name in enumerate(node.input[1:]):
            feats32.append(f"{node.name}__feature_{i}_f32")
            nodes.append(helper.make_node("Cast", [name], [feats32[-1]], name=f"{node.name}__cast_in_{i}",
                                          to=TensorProto.FLOAT))
        out32 = f"{node.name}__pooled_f32"
        nodes.append(helper.make_node(op_type, [node.input[0], *feats32], [out32], name=node.name, domain=_CONTRIB))
        nodes[-1].attribute.append(params)
        nodes.append(helper.make_node("Cast", [out32], [node.output[0]], name=f"{node.name}__cast_out",
                                      to=TensorProto.FLOAT16))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if not any(o.domain == _CONTRIB for o in model.opset_import):
        model.opset_import.add(domain=_CONTRIB, version=1)
    return model


def _load_proto(model: Any):
    import onnx

    try:
        return onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and OSError alike
        raise UserError(f"cannot read ONNX model {model}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def _session_options(so) -> None:
    ext = require("onnxruntime_extensions", "export", "running the tensorrt flavor in ONNX Runtime")
    so.register_custom_ops_library(ext.get_library_path())


def register() -> None:
    """Let the runtime's ``OrtBackend`` run tensorrt-flavor models: their plugin nodes become the
    reference implementation in an in-memory copy of the model (the file is not changed)."""
    from mrcnn_edge.runtime.backends.ort import register_custom_op_domain

    def rewrite(path) -> bytes:
        return _rewrite(_load_proto(path)).SerializeToString()

    def check() -> None:
        _raise_plugin_failure()

    def options(so) -> None:
        del _failures[:]  # failures of an earlier session are not this one's
        _session_options(so)

    register_custom_op_domain(PLUGIN_DOMAIN, options, rewrite=rewrite, check=check)


def make_session(model: Any, providers: list[str] | None = None):
    """An ``onnxruntime.InferenceSession`` for a path or ModelProto, plugin nodes included."""
    ort = require("onnxruntime", "ort", "ONNX Runtime inference")
    proto = _load_proto(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if has_plugin_nodes(proto):
        proto = _rewrite(proto)
        _session_options(so)
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise UserError(f"ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from exc


def run_session(sess, images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs by name for ``images [B,3,H,W]`` (cast to the model's input dtype); UserError on failure."""
    x = np.asarray(images).astype(np.float16 if "float16" in sess.get_inputs()[0].type else np.float32, copy=False)
    del _failures[:]
    try:
        outs = sess.run(None, {INPUT_NAME: x})
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        _raise_plugin_failure()
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise UserError(f"ONNX Runtime failed to run the model: {lines[-1] if lines else type(exc).__name__}") from exc
    _raise_plugin_failure()
    return dict(zip([o.name for o in sess.get_outputs()], outs))


def _raise_plugin_failure() -> None:
    if not _failures:
        return
    exc = _failures[0]
    del _failures[:]
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: not ours to reword
        raise exc
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    raise UserError(f"the {PLUGIN_NAME} reference implementation failed: {text}") from exc
