"""OpenVINO backend: a ``portable`` ONNX model (fp32, or the INT8 Q/DQ model) on an x86 CPU.

OpenVINO reads the ONNX file itself (Q/DQ nodes become its INT8 layers). ``precision`` sets the
CPU plugin's ``INFERENCE_PRECISION_HINT`` for the float parts: ``fp32`` (the model's arithmetic),
``bf16`` (faster where the CPU has BF16 instructions, AVX512_BF16 or AMX; detections may differ
slightly, measured by ``mrcnn-edge benchmark``), or ``auto`` = ``fp32``: OpenVINO itself would
pick bf16 on such CPUs, and a silent change of the model's numbers is not ours to make.

The ``tensorrt`` flavor's ``MultilevelRoIAlign`` node has no OpenVINO op: refused in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.errors import UserError, require
from mrcnn_edge.core.metadata import read_onnx_metadata

from mrcnn_edge.runtime.backends import Backend, check_feed
from mrcnn_edge.runtime.spec import TensorSpec

__all__ = ["OpenVinoBackend", "OPENVINO_PRECISIONS", "cpu_has_bf16", "openvino_available"]

OPENVINO_PRECISIONS = {"auto": "f32", "fp32": "f32", "bf16": "bf16"}
"""``precision`` -> OpenVINO's ``INFERENCE_PRECISION_HINT`` for the float parts of the model."""

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

    def __init__(self, path: str | Path, precision: str = "auto", device: str = "CPU", **ignored: Any) -> None:
        self.path = Path(path)
        if precision not in OPENVINO_PRECISIONS:
            raise UserError(f"OpenVINO precision {precision!r}: choose one of {', '.join(OPENVINO_PRECISIONS)}")
        info, self.metadata = read_onnx_metadata(self.path)
        custom = sorted(info.custom_ops())
        if custom or self.metadata.get("flavor") == "tensorrt":
            raise UserError(
                f"{self.path.name} is the 'tensorrt' flavor (custom node {custom[0][1] if custom else 'MultilevelRoIAlign'}),"
                " which OpenVINO cannot run: export it with '--flavor portable' for CPUs")
        ov = require("openvino", "openvino", "the OpenVINO backend")
        self._core = ov.Core()
        device = str(device).upper()
        if device not in self._core.available_devices:
            raise UserError(f"OpenVINO has no device {device} here (it has {', '.join(self._core.available_devices)})")
        if precision == "bf16" and not cpu_has_bf16(self._core, device):
            raise UserError(f"this {device} has no BF16 instructions (AVX512_BF16 or AMX): use --precision fp32")
        self.precision = "fp32" if precision == "auto" else precision
        self.device = device
        config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY"}
        try:
            self._compiled = self._core.compile_model(self._core.read_model(str(self.path)), device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses for everything
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"OpenVINO cannot load {self.path.name}: {first}") from exc
        self._request = self._compiled.create_infer_request()
        self.inputs = {s.name: s for s in map(_spec, self._compiled.inputs)}
        self.outputs = {s.name: s for s in map(_spec, self._compiled.outputs)}
        self._ports = {s.name: port for s, port in zip(self.outputs.values(), self._compiled.outputs)}

    @property
    def description(self) -> str:
        q = " int8" if self.metadata.get("precision") == "int8" else ""
        return f"openvino ({self.device},{q} {self.precision})"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, self.inputs)
        # share_inputs: no copy of the frame batch; the request's output tensors are its own
        # buffers, overwritten by the next infer (the Backend contract)
        self._request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()}, share_inputs=True)
        return {name: self._request.get_tensor(port).data for name, port in self._ports.items()}

    def close(self) -> None:
        self._request = None
        self._compiled = None
