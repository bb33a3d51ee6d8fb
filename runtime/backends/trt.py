"""TensorRT backend: a deserialised engine, cuda-python buffers, one stream, ``execute_async_v3``.

Buffers are allocated once per I/O tensor (device memory plus a pinned host mirror) and bound with
``set_tensor_address``; ``infer`` copies inputs host->device and calls ``execute``, which enqueues,
copies outputs back, records one event and polls it (``cuda_util.wait_stream``). It never waits
inside a cuda-python call: cuda-python before 12.9.1 holds the GIL for the whole of every call, so
a ``cudaStreamSynchronize`` per frame would stall every other thread of a pipeline.
``cuda_graph=True`` captures the enqueue in a CUDA graph after one warm-up run; an engine with
data-dependent shapes (TensorRT's NMS layer: every Mask R-CNN engine) cannot be captured, since its
enqueue synchronises with the host, so that case runs without a graph after one warning line and
TensorRT's errors from the attempt are kept off the console. The engine's sidecar
(``model.engine.json``) gives its metadata, the TensorRT version it was built with and its plugin
library; both are checked before TensorRT is asked to deserialise anything.
"""
from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import read_sidecar

from mrcnn_edge.runtime.gpu import trt_platform
from mrcnn_edge.runtime.backends import Backend, check_feed
from mrcnn_edge.runtime.gpu.cuda_util import check, check_versions, cuda_modules, wait_stream
from mrcnn_edge.runtime.spec import TensorSpec

__all__ = ["TrtBackend", "check_tensorrt_version"]

log = logging.getLogger(__name__)


def check_tensorrt_version(meta: Mapping[str, Any], installed: str, engine: str | Path) -> None:
    """An engine runs only on the TensorRT release (major.minor.patch) that built it."""
    built = meta.get("tensorrt_version")
    if not built:
        log.warning("%s: the sidecar does not say which TensorRT built it; trying anyway", Path(engine).name)
        return
    if trt_platform.tensorrt_release(built) != trt_platform.tensorrt_release(installed):
        raise UserError(
            f"{Path(engine).name} was built with TensorRT {built} but TensorRT {installed} is installed: "
            f"rebuild it on this machine with 'mrcnn-edge build model.onnx'"
        )


def _handle(obj: Any) -> int:
    """The address a cuda-python handle holds; 0 for None or a NULL handle.

    cuda-python's handle objects (``cudaGraph_t`` ...) define no truth value, so a NULL one is
    truthy: ``cudaStreamEndCapture`` returns such a NULL graph when "capture was invalidated".
    """
    return 0 if obj is None else int(obj)


class TrtBackend(Backend):
    """A TensorRT engine (``.engine`` + ``.engine.json`` sidecar) on one GPU."""

    name = "tensorrt"

    def __init__(self, path: str | Path, plugin_lib: str | Path | None = None, cuda_graph: bool = False,
                 device_id: int = 0) -> None:
        self.path = Path(path)
        self.device_id = int(device_id)  # Segmenter runs its CUDA pre/post on this GPU too
        self._buffers: list[tuple[int, int]] = []  # (device ptr, host ptr) to free
        self._graph_exec = None
        self._graph = None
        self._stream = None
        self._done = None  # the event execute() polls: created once, destroyed at close
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}
        self.inputs, self.outputs = {}, {}
        self.metadata = read_sidecar(self.path)
        trt = trt_platform.import_tensorrt()  # looked up here, so a test patches it in one place
        check_tensorrt_version(self.metadata, trt.__version__, self.path)
        library = trt_platform.resolve_plugin_library(self.path, self.metadata, plugin_lib)
        _, cudart, _ = cuda_modules()
        self.context = self.engine = None
        self._cudart = cudart
        try:
            self._open(trt, cudart, library, device_id, cuda_graph)
        except BaseException:
            self.close()
            raise

    def _open(self, trt: Any, cudart: Any, library: Path | None, device_id: int, cuda_graph: bool) -> None:
        check_versions()  # cuda-python vs driver vs NVRTC: one line saying what to install
        check(cudart.cudaSetDevice(device_id), f"cudaSetDevice({device_id})")
        self._logger = trt_platform.make_logger(trt)
        trt.init_libnvinfer_plugins(self._logger, "")
        if library is not None:
            # once per process, major checked, "creator already registered" counts as loaded
            log.info("%s", trt_platform.load_plugin_library(trt, library, errors=lambda: list(self._logger.errors)))
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"TensorRT could not load {self.path.name} (built for another GPU or TensorRT, corrupt, "
                "or a plugin is missing): rebuild it on this device with 'mrcnn-edge build'"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:  # the binding's None for a null IExecutionContext*
            why = self._logger.errors[-1] if self._logger.errors else "out of GPU memory?"
            raise UserError(f"TensorRT could not create an execution context for {self.path.name}: {why}")
        self._stream = check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        # "Events created with this flag [cudaEventDisableTiming] specified and the
        # cudaEventBlockingSync flag not specified will provide the best performance when used
        # with cudaStreamWaitEvent() and cudaEventQuery()"
        self._done = check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming),
                           "cudaEventCreateWithFlags")
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
            # "Return false if the provided name does not map to an input or output tensor"
            if not self.context.set_tensor_address(name, device):
                why = self._logger.errors[-1] if self._logger.errors else "refused"
                raise UserError(f"TensorRT refused the buffer of tensor {name} of {self.path.name}: {why}")
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
        """Capture one enqueue in a CUDA graph, or say once why not and run without one.

        Capture is refused by CUDA when the enqueue synchronises with the host, which TensorRT does
        for data-dependent shapes (NMS); CUDA then ends the capture with a NULL graph ("If capture
        was invalidated ... a NULL graph will be returned"). TensorRT's error lines from the
        attempt are held back: the one warning below says what happened.
        """
        cudart = self._cudart
        self._enqueue()  # warm-up outside the capture: TensorRT may allocate on its first run
        wait_stream(cudart, self._done, self._stream, "TensorRT warm-up before the CUDA graph capture")
        graph = None
        seen = len(self._logger.errors)
        self._logger.quiet = True
        try:
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            check(cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
            try:
                ok = self.context.execute_async_v3(int(self._stream))
            finally:  # the capture is always ended, whatever happened in between
                result = cudart.cudaStreamEndCapture(self._stream)
            err, graph = result[0], (result[1] if len(result) > 1 else None)
            if not ok or int(err) != 0 or not _handle(graph):
                held = self._logger.errors[seen:]
                raise RuntimeError(held[0] if held else f"cudaStreamEndCapture returned {err}")
            self._graph_exec = check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
            self._graph, graph = graph, None
        except RuntimeError as exc:
            cudart.cudaGetLastError()  # clear the capture error so later calls do not report it
            self._graph_exec = None
            log.warning("--cuda-graph: %s cannot be captured in a CUDA graph (TensorRT's NMS has "
                        "data-dependent shapes and synchronises; detail: %s); running without a graph",
                        self.path.name, exc)
        finally:
            self._logger.quiet = False
            if _handle(graph):  # captured but not kept: destroy it now rather than leak it
                cudart.cudaGraphDestroy(graph)

    def on_device(self) -> "TrtBackend":
        """Its tensors are GPU buffers: it is a ``DeviceBackend`` (``stream``, ``device_pointer``, ``execute``)."""
        return self

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

    def _make_current(self) -> None:
        """Make this backend's GPU current in the calling thread. cudaSetDevice is per host thread,
        and the engine's kernels are launched on this device's stream: "a kernel launch will fail
        if it is issued to a stream that is not associated to the current device" (CUDA
        Programming Guide, "Stream and Event Behavior"). A pipeline calls from worker threads."""
        check(self._cudart.cudaSetDevice(self.device_id), f"cudaSetDevice({self.device_id})")

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, self.inputs)
        self._make_current()
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for name, array in feed.items():
            np.copyto(self._host[name], array)
            host = self._host[name]
            check(self._cudart.cudaMemcpyAsync(self._device[name], host.ctypes.data, host.nbytes, kind, self._stream),
                  f"copy {name} to the GPU")
        return self._execute()

    def execute(self) -> dict[str, np.ndarray]:
        """Run on the inputs already in the device buffers (after what is enqueued on ``stream``).

        Returns the outputs by name, views of pinned host memory (shapes and dtypes of
        ``outputs``) that stay valid until the next call. Waits by polling an event, never inside
        a blocking cuda-python call. Callable from any thread (the device is made current here).
        """
        self._make_current()
        return self._execute()

    def _execute(self) -> dict[str, np.ndarray]:
        self._enqueue()
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.outputs:
            host = self._host[name]
            check(self._cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name], host.nbytes, kind, self._stream),
                  f"copy {name} from the GPU")
        # polling sleeps between cudaEventQuery calls: the GIL stays free while the GPU works
        wait_stream(self._cudart, self._done, self._stream, f"{self.path.name} on the GPU")
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
        if self._done is not None:
            cudart.cudaEventDestroy(self._done)
            self._done = None
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
