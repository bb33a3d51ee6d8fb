"""OpenVINO backend: a ``portable`` ONNX model (fp32, or the INT8 Q/DQ model) on an x86 CPU.

OpenVINO reads the ONNX file itself (Q/DQ nodes become its INT8 layers). ``precision`` sets the
CPU plugin's ``INFERENCE_PRECISION_HINT`` for the float parts (:func:`choose_precision`):

* ``fp32``: the model's own arithmetic, exactly (refused for an INT8 model, whose layers are INT8
  whatever the hint: run the fp32 export it was made from);
* ``int8``: an INT8 model as quantized, its float parts (the layers Q/DQ leaves float, ROIAlign,
  NMS) in fp32 (refused for a float model: ``mrcnn-edge quantize`` makes one);
* ``bf16``: where the CPU computes BF16 natively (AVX512_BF16 or AMX); refused elsewhere. The
  boxes every ``ROIAlign`` pools (its inputs after the feature map, followed back to the weighted
  layers: proposal decoding, NMS glue, level mapping, the detections' boxes for the mask head) stay
  in f32 (:func:`roi_box_nodes`, marked with OpenVINO's ``precise`` run-time attribute,
  ``ov::DisableFP16Compression``: "inferred precisely in the original precision"); the
  convolutions, fully connected layers and ROIAlign itself run in bf16. bf16 keeps 8 significant
  bits, 2 px steps at 256-512 px: on the demo model the boxes in bf16 cost 0.011 mask AP, with
  the boxes in f32 bf16 is within 0.001 of fp32 at the same speed. Where the marks cannot be
  made (the IR copy goes through a temporary folder: a full disk) or the compiled graph shows they
  were not kept (:func:`roi_box_precisions`: another OpenVINO release), bf16 runs without them,
  with a warning, and the description says so;
* ``auto`` (the default): ``bf16`` where the CPU computes it natively *and* the model's metadata
  says bf16 was validated for it (``validated_precisions``: mask AP within
  ``contract.VALIDATED_PRECISION_BOUNDS`` of the model's own float parts in fp32 on annotated
  images, recorded by ``mrcnn-edge validate``), else ``fp32`` (``int8`` for an INT8 model).
  OpenVINO alone would pick bf16 on such CPUs for any model; a change of the model's numbers nobody
  measured is not ours to make.

:attr:`OpenVinoBackend.description` says what was chosen and why, in one line (``run`` prints it).
Inference requests (``requests``): 1, the default, is ``PERFORMANCE_HINT: LATENCY`` (every core on one
frame: the lowest latency, what a live camera wants); N > 1 is ``THROUGHPUT`` with N requests, each
frame on a share of the cores, and up to N ``infer`` calls from different threads run at once
(``Backend.requests``): more frames per second where frames queue up (files: ``run`` picks 2 there,
the pipeline's inference stage then has two workers and puts the results back in order). Each call
then returns copies of its request's outputs, since another thread's call reuses the request next.

The ``tensorrt`` flavor's ``MultilevelRoIAlign`` node has no OpenVINO op: refused in one line.
"""
from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.contract import VALIDATED_PRECISION_BOUNDS, validated_drop
from mrcnn_edge.core.errors import UserError, first_line, require
from mrcnn_edge.core.metadata import read_onnx_metadata

from mrcnn_edge.runtime.backends import Backend, check_feed
from mrcnn_edge.runtime.spec import TensorSpec

log = logging.getLogger(__name__)

__all__ = ["OpenVinoBackend", "OPENVINO_PRECISIONS", "FLOAT_PARTS", "PrecisionChoice", "choose_precision",
           "full_precision", "cpu_has_bf16", "openvino_available", "roi_box_nodes", "keep_precise",
           "roi_box_precisions"]

OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""What the backend computes in -> OpenVINO's ``INFERENCE_PRECISION_HINT`` for the float parts:
``fp32`` and ``bf16`` for any portable model, ``int8`` (float parts in f32) for an INT8 model only;
``auto`` chooses one of them (:func:`choose_precision`)."""

FLOAT_PARTS = {p: "bf16" if hint == "bf16" else "fp32" for p, hint in OPENVINO_PRECISIONS.items()}
"""The precision of the float parts (what the floors count them at) of each of ``OPENVINO_PRECISIONS``."""

_OV_TYPES = {"f32": np.float32, "f16": np.float16, "i32": np.int32, "i64": np.int64, "u8": np.uint8,
             "i8": np.int8, "boolean": np.bool_, "f64": np.float64}


def openvino_available() -> bool:
    """Whether ``import openvino`` would work here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def cpu_has_bf16(core: Any, device: str = "CPU") -> bool:
    """What OpenVINO says the device can do (``OPTIMIZATION_CAPABILITIES`` lists ``BF16``)."""
    try:
        return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - a device without the property cannot do it
        return False


@dataclass(frozen=True)
class PrecisionChoice:
    """What the float parts of a model run in (a key of ``OPENVINO_PRECISIONS``) and why, in words."""

    precision: str
    why: str


def full_precision(metadata: Mapping[str, Any]) -> str:
    """The precision that keeps a model's float parts in fp32: ``fp32``, or ``int8`` for an INT8 model."""
    return "int8" if metadata.get("precision") == "int8" else "fp32"


def choose_precision(requested: str, metadata: Mapping[str, Any], cpu_bf16: bool, device: str = "CPU",
                     name: str = "the model") -> PrecisionChoice:
    """The precision for ``requested`` (``auto`` or one of ``OPENVINO_PRECISIONS``) on a device that
    does (``cpu_bf16``) or does not compute BF16 natively; one-line ``UserError`` where it cannot be had."""
    if requested not in ("auto", *OPENVINO_PRECISIONS):
        raise UserError(f"OpenVINO precision {requested!r}: choose one of auto, {', '.join(OPENVINO_PRECISIONS)}")
    int8 = metadata.get("precision") == "int8"
    full = full_precision(metadata)
    if requested == "bf16" and not cpu_bf16:
        raise UserError(f"this {device} has no BF16 instructions (AVX512_BF16 or AMX): use --precision {full} or auto")
    if requested == "fp32" and int8:
        raise UserError(f"{name} is an INT8 model: its layers run in INT8 whatever the precision, so exact fp32 "
                        "is impossible; run the fp32 export it was quantized from, or --precision int8 (its float "
                        "parts in fp32) or auto")
    if requested == "int8" and not int8:
        raise UserError(f"--precision int8 runs an INT8 model ('mrcnn-edge quantize' makes one); {name} is "
                        f"{metadata.get('precision', 'fp32')}: use --precision fp32, bf16 or auto")
    if requested != "auto":
        return PrecisionChoice(requested, "as asked")
    drop = validated_drop(metadata, "bf16")
    what = "bf16 float parts were validated for this INT8 model" if int8 else "bf16 was validated for this model"
    against = "its float parts in fp32" if int8 else "fp32"
    back = "--precision int8 for its float parts in fp32" if int8 else "--precision fp32 for exact fp32"
    if not cpu_bf16:
        return PrecisionChoice(full, f"auto: this {device} has no BF16 instructions")
    if drop is None:
        return PrecisionChoice(full, f"auto: {'bf16 float parts are' if int8 else 'bf16 is'} not validated for "
                                     "this model ('mrcnn-edge validate --annotations' measures and records it); "
                                     f"{'float parts in fp32' if int8 else 'fp32'}")
    return PrecisionChoice("bf16", f"auto: this {device} computes BF16 and {what} (mask AP {0.0 - drop:+.4f} vs "
                                   f"{against}, bound {VALIDATED_PRECISION_BOUNDS['bf16']}); {back}")


_STOP = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                   "MatMul", "ROIAlign", "Parameter", "Constant"})


def roi_box_nodes(model: Any) -> set[str]:
    """Friendly names of the operations of an OpenVINO ``model`` that compute the boxes an
    ``ROIAlign`` pools (and their batch indices): every input of every ``ROIAlign`` after its feature
    map, followed back to the weighted layers, parameters and constants (not included, nor ROIAlign)."""
    names: set[str] = set()
    todo = [op.input_value(i).get_node() for op in model.get_ordered_ops() if op.get_type_name() == "ROIAlign"
            for i in range(1, op.get_input_size())]
    while todo:
        node = todo.pop()
        name = node.get_friendly_name()
        if node.get_type_name() in _STOP or name in names:
            continue
        names.add(name)
        todo.extend(node.input_value(i).get_node() for i in range(node.get_input_size()))
    return names


def keep_precise(core: Any, model: Any, names: set[str]) -> Any:
    """A copy of ``model`` whose operations ``names`` carry the ``precise`` run-time attribute (kept in
    their own precision under a lower ``INFERENCE_PRECISION_HINT``). The attribute has no Python
    setter, so the copy goes through OpenVINO's IR, where it is an ``<attribute name="precise">`` of
    the layer's ``rt_info``; the weights stay in memory (nothing is left on disk)."""
    import tempfile
    import xml.etree.ElementTree as ET

    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="mrcnn-edge-ov-") as tmp:
        xml = Path(tmp) / "model.xml"
        try:
            ov.save_model(model, str(xml), compress_to_fp16=False)
        except Exception as exc:  # noqa: BLE001 - OpenVINO's reason for a full disk: 'basic_ios::clear: iostream error'
            first = first_line(exc)
            raise OSError(f"writing a copy of the model into {tmp} failed: {first}; a full disk? "
                          f"TMPDIR names another folder") from exc
        tree = ET.parse(xml)
        for layer in tree.getroot().iter("layer"):
            if layer.get("name") in names:
                rt = layer.find("rt_info")
                if rt is None:
                    rt = ET.Element("rt_info")
                    layer.insert(0, rt)
                ET.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
        weights = ov.Tensor(np.fromfile(xml.with_suffix(".bin"), dtype=np.uint8))
        return core.read_model(ET.tostring(tree.getroot(), encoding="unicode"), weights)


def roi_box_precisions(compiled: Any) -> list[str]:
    """The runtime precision (``f32``, ``bf16``, ...) of the operation that computes each ROIAlign's
    boxes in a compiled CPU graph, past the Reorders (precision conversions) OpenVINO puts in between:
    what the ``precise`` marks did, as the plugin compiled it. Empty where the graph does not say."""
    out = []
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            if op.get_rt_info()["layerType"].astype(str) != "ROIAlign":
                continue
            node = op.input_value(1).get_node()
            while node.get_rt_info()["layerType"].astype(str) == "Reorder":
                node = node.input_value(0).get_node()
            out.append(node.get_rt_info()["runtimePrecision"].astype(str))
    except (KeyError, RuntimeError, IndexError):  # another plugin's runtime graph: nothing to tell
        return []
    return out


def _spec(port: Any) -> TensorSpec:
    name = port.get_any_name()
    type_name = port.get_element_type().get_type_name()
    dtype = _OV_TYPES.get(type_name)
    if dtype is None:
        raise UserError(f"tensor {name!r} has type {type_name}, which the runtime does not handle")
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(name, shape, np.dtype(dtype))


class OpenVinoBackend(Backend):
    """An ONNX model compiled by OpenVINO for ``device`` (``"CPU"``); see the module docstring."""

    name = "openvino"

    def __init__(self, path: str | Path, precision: str = "auto", device: str = "CPU", requests: int = 1,
                 **ignored: Any) -> None:
        self.path = Path(path)
        if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
            raise UserError(f"OpenVINO requests {requests!r}: a whole number of at least 1")
        self.requests = requests
        if precision not in ("auto", *OPENVINO_PRECISIONS):
            raise UserError(f"OpenVINO precision {precision!r}: choose one of auto, {', '.join(OPENVINO_PRECISIONS)}")
        info, self.metadata = read_onnx_metadata(self.path)
        custom = sorted(info.custom_ops())
        if custom or self.metadata.get("flavor") == "tensorrt":
            raise UserError(
                f"{self.path.name} is the 'tensorrt' flavor (custom node {custom[0][1] if custom else 'MultilevelRoIAlign'}),"
                " which OpenVINO cannot run: export it with '--flavor portable', the fast one on CPUs")
        ov = require("openvino", "openvino", "the OpenVINO backend")
        self._core = ov.Core()
        device = str(device).upper()
        if device not in self._core.available_devices:
            raise UserError(f"OpenVINO has no device {device} here (it has {', '.join(self._core.available_devices)})")
        self.choice = choose_precision(precision, self.metadata, cpu_has_bf16(self._core, device), device,
                                       self.path.name)
        self.precision = self.choice.precision
        self.float_precision = FLOAT_PARTS[self.precision]  # what the floors count the float parts at
        self.device = device
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[self.precision],
                                  "PERFORMANCE_HINT": "LATENCY" if requests == 1 else "THROUGHPUT"}
        if requests > 1:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = requests
        try:
            model = self._core.read_model(str(self.path))
            self.roi_boxes = self.precision
            if self.precision == "bf16":  # the boxes ROIAlign pools stay f32 (module docstring)
                try:
                    model = keep_precise(self._core, model, roi_box_nodes(model))
                    self.roi_boxes = "fp32"
                except Exception as exc:  # noqa: BLE001 - a full temp folder, an OpenVINO that refuses the IR copy
                    log.warning("OpenVINO bf16 with the ROI boxes in bf16 too (less accurate): could not mark them "
                                "f32 (%s)", first_line(exc))
            self._compiled = self._core.compile_model(model, device, config)
            if self.roi_boxes == "fp32" and any(p != "f32" for p in roi_box_precisions(self._compiled)):
                self.roi_boxes = "bf16"  # an OpenVINO that reads the marks but does not keep them
                log.warning("OpenVINO bf16 with the ROI boxes in bf16 too (less accurate): this OpenVINO did not "
                            "keep the operations marked precise in f32")
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for everything
            first = first_line(exc)
            raise UserError(f"OpenVINO cannot load {self.path.name}: {first}") from exc
        self._request = self._compiled.create_infer_request()
        self._free: queue.SimpleQueue = queue.SimpleQueue()  # requests > 1: the idle requests
        for _ in range(requests - 1):
            self._free.put(self._compiled.create_infer_request())
        if requests > 1:
            self._free.put(self._request)
        self.inputs = {s.name: s for s in map(_spec, self._compiled.inputs)}
        self.outputs = {s.name: s for s in map(_spec, self._compiled.outputs)}
        self._ports = {s.name: port for s, port in zip(self.outputs.values(), self._compiled.outputs)}

    @property
    def description(self) -> str:
        q = " int8," if self.metadata.get("precision") == "int8" and self.precision != "int8" else ""
        why = "" if self.choice.why == "as asked" else f"; {self.choice.why}"
        many = f", {self.requests} requests in flight" if self.requests > 1 else ""
        boxes = "" if self.precision != "bf16" else \
            " (ROI boxes in f32)" if self.roi_boxes == "fp32" else " (ROI boxes in bf16 too)"
        return f"openvino ({self.device},{q} {self.precision}{boxes}{many}{why})"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, self.inputs)
        feed = {k: np.ascontiguousarray(v) for k, v in feed.items()}
        if self.requests == 1:
            # share_inputs: no copy of the frame batch; the request's output tensors are its own
            # buffers, overwritten by the next infer (the Backend contract)
            self._request.infer(feed, share_inputs=True)
            return {name: self._request.get_tensor(port).data for name, port in self._ports.items()}
        request = self._free.get()  # blocks while every request is busy in another thread
        try:
            request.infer(feed, share_inputs=True)
            # copies: this request serves another thread's call as soon as it is given back
            return {name: np.array(request.get_tensor(port).data, copy=True) for name, port in self._ports.items()}
        finally:
            self._free.put(request)

    def close(self) -> None:
        self._request = None
        self._free = queue.SimpleQueue()
        self._compiled = None
