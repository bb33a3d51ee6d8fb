"""TensorRT backend: a deserialised engine, cuda-python buffers, one stream, ``execute_async_v3``.

Buffers are allocated once per I/O tensor (device memory plus a pinned host mirror) and bound with
``set_tensor_address``; ``infer`` copies inputs host->device, enqueues, copies outputs back and
synchronises once. ``cuda_graph=True`` captures the enqueue in a CUDA graph after one warm-up run
(falls back, with a warning, when the engine cannot be captured). The engine's sidecar
(``model.engine.json``) gives its metadata, the TensorRT version it was built with and its plugin
library; both are checked before TensorRT is asked to deserialise anything.
"""
from __future__ import annotations

import ctypes
import importlib
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.errors import UserError
from mrcnn_edge.metadata import read_sidecar

from .backends import Backend, check_feed
from .cuda_util import check, cuda_modules
from .spec import TensorSpec

__all__ = ["TrtBackend", "import_tensorrt", "check_tensorrt_version", "resolve_plugin_library"]

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise UserError(
            "TensorRT's Python package is not installed: on Jetson it comes with JetPack "
            "(python3-libnvinfer), on a desktop pip install tensorrt; or run the .onnx with ONNX Runtime"
        ) from exc


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_tensorrt_version(meta: Mapping[str, Any], installed: str, engine: str | Path) -> None:
    """An engine runs only on the TensorRT release (major.minor.patch) that built it."""
    built = meta.get("tensorrt_version")
    if not built:
        log.warning("%s: the sidecar does not say which TensorRT built it; trying anyway", Path(engine).name)
        return
    if _release(built) != _release(installed):
        raise UserError(
            f"{Path(engine).name} was built with TensorRT {built} but TensorRT {installed} is installed: "
            f"rebuild it on this machine with 'mrcnn-edge build model.onnx'"
        )


def resolve_plugin_library(meta: Mapping[str, Any], engine: str | Path, given: str | Path | None) -> Path | None:
    """The plugin library to load: ``given``, else the sidecar's ``plugin_library`` (as recorded,
    relative to the engine's folder, or found by name next to the engine), else where
    ``mrcnn-edge build-plugin`` puts it. None when the engine needs no plugin."""
    engine = Path(engine)
    plugin = meta.get("plugin")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise UserError(f"plugin library {path} not found (from --plugin-lib)")
        return path
    recorded = meta.get("plugin_library")
    if not plugin and not recorded:
        return None
    candidates: list[Path] = []
    if recorded:
        rec = Path(str(recorded)).expanduser()
        candidates += [rec if rec.is_absolute() else engine.parent / rec, engine.parent / rec.name]
    try:
        from mrcnn_edge.export.plugin_build import default_plugin_path

        candidates.append(default_plugin_path())
    except ImportError:  # a runtime-only install
        pass
    for path in candidates:
        if path.is_file():
            return path
    what = (f"the TensorRT plugin {plugin.get('name')} v{plugin.get('version')} ({plugin.get('namespace')})"
            if isinstance(plugin, dict) else "a TensorRT plugin")
    where = f" (looked for {', '.join(str(c) for c in dict.fromkeys(candidates))})" if candidates else ""
    raise UserError(
        f"{engine.name} needs {what} but its library was not found{where}: "
        "build it with 'mrcnn-edge build-plugin' or pass --plugin-lib PATH"
    )


class TrtBackend(Backend):
    """A TensorRT engine (``.engine`` + ``.engine.json`` sidecar) on one GPU."""

    name = "tensorrt"

    def __init__(self, path: str | Path, plugin_lib: str | Path | None = None, cuda_graph: bool = False,
                 device_id: int = 0) -> None:
        self.path = Path(path)
        self._buffers: list[tuple[int, int]] = []  # (device ptr, host ptr) to free
        self._graph_exec = None
        self._graph = None
        self._stream = None
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        self.inputs, self.outputs = {}, {}
        self.metadata = read_sidecar(self.path)
        trt = import_tensorrt()
        check_tensorrt_version(self.metadata, trt.__version__, self.path)
        library = resolve_plugin_library(self.metadata, self.path, plugin_lib)
        _, cudart, _ = cuda_modules()
        self.context = self.engine = None
        self._cudart = cudart
        try:
            self._open(trt, cudart, library, device_id, cuda_graph)
        except BaseException:
            self.close()
            raise

    def _open(self, trt: Any, cudart: Any, library: Path | None, device_id: int, cuda_graph: bool) -> None:
        check(cudart.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        if library is not None:
            try:
                handle = trt.get_plugin_registry().load_library(str(library))
            except Exception as exc:  # noqa: BLE001 - TensorRT's binding raises generic errors
                handle, why = None, str(exc)
            else:
                why = "no plugin creators registered"
            if handle is None:
                raise UserError(f"TensorRT could not load plugin library {library}: {why}")
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"TensorRT could not load {self.path.name} (built for another GPU or TensorRT, corrupt, "
                "or a plugin is missing): rebuild it on this device with 'mrcnn-edge build'"
            )
        self.context = self.engine.create_execution_context()
        self._stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._bind(trt)
        if cuda_graph:
            self._capture()

    def _bind(self, trt: Any) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:  # dynamic inputs get the static shape the metadata promises
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                shape = tuple(self.engine.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    h, w = self.metadata.get("input_size", (shape[2], shape[3]))
                    self.context.set_input_shape(name, (int(self.metadata.get("batch", 1)), 3, int(h), int(w)))
        for name in names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UserError(f"{self.path.name}: tensor {name} has no static shape {shape}; rebuild with static shapes")
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = max(int(np.prod(shape)) * dtype.itemsize, 1)
            device = check(self._cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes}) for {name}")
            host_ptr = check(self._cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes}) for {name}")
            self._buffers.append((device, host_ptr))
            raw = (ctypes.c_uint8 * nbytes).from_address(host_ptr)
            self._host[name] = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
            self._device[name] = device
            self.context.set_tensor_address(name, device)
            spec = TensorSpec(name, shape, dtype)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = spec
            else:
                self.outputs[name] = spec

    def _enqueue(self) -> None:
        if self._graph_exec is not None:
            check(self._cudart.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")
        elif not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT failed to enqueue {self.path.name}")

    def _capture(self) -> None:
        cudart = self._cudart
        self._enqueue()  # warm-up outside the capture: TensorRT may allocate on its first run
        check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            check(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
            ok = self.context.execute_async_v3(int(self._stream))
            graph = check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            if not ok:
                raise RuntimeError("execute_async_v3 failed during capture")
            self._graph = graph
            self._graph_exec = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except RuntimeError as exc:
            cudart.cudaStreamEndCapture(self._stream)  # no-op when the capture already ended
            cudart.cudaGetLastError()
            self._graph_exec = None
            log.warning("CUDA graph capture of %s failed (%s); running without a graph", self.path.name, exc)

    @property
    def stream(self) -> Any:
        """The cuda-python stream everything of this backend is ordered on."""
        return self._stream

    def device_pointer(self, name: str) -> int:
        """Device address of a tensor's buffer (the GPU pre-processing writes ``images`` there)."""
        return self._device[name]

    @property
    def description(self) -> str:
        return f"tensorrt{' + CUDA graph' if self._graph_exec is not None else ''}"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, self.inputs)
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in feed.items():
            np.copyto(self._host[name], array)
            host = self._host[name]
            check(self._cudart.cudaMemcpyAsync(self._device[name], host.ctypes.data, host.nbytes, kind, self._stream),
                  f"copy {name} to the GPU")
        return self.execute()

    def execute(self) -> dict[str, np.ndarray]:
        """Run on the inputs already in the device buffers; outputs copied to pinned host memory."""
        self._enqueue()
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.outputs:
            host = self._host[name]
            check(self._cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes, kind, self._stream),
                  f"copy {name} from the GPU")
        check(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return {name: self._host[name] for name in self.outputs}

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        if self._graph_exec is not None:
            cudart.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None
        if self._graph is not None:
            cudart.cudaGraphDestroy(self._graph)
            self._graph = None
        self.context = None
        self.engine = None
        for device, host in self._buffers:
            cudart.cudaFree(device)
            cudart.cudaFreeHost(host)
        self._buffers.clear()
        self._host.clear()
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
