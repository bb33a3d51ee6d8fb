"""A stand-in ``tensorrt`` module: the parts mrcnn-edge calls, behaving as TensorRT's documentation says.

(Over 450 lines on purpose: one module is one ``tensorrt`` as a process sees it, plugin registry,
builder and runtime together, as the real module is.)

It models one process: a plugin registry that outlives any module object, dlopen with its path
rules, libraries that stay loaded, and a global logger. Each behaviour the code relies on carries
the documentation line it follows. A "plugin library" here is a small text file written by
``write_plugin_library``; ``dlopen`` (also installed as ``trt_platform._dlopen``) reads it the way
the dynamic linker would load a real one.

The engine side (``Runtime``, ``ICudaEngine``, ``IExecutionContext``) runs a serialised engine
written by ``write_engine``: a small text naming an ONNX model, which the "engine" runs with ONNX
Runtime on the device memory bound to its tensors, enqueued on the caller's stream through the
process's CUDA runtime (``FakeProcess(cuda=...)``: cuda-python's runtime namespace, here the stand-in
of ``fake_cuda.py``, handed over as an object: the two stand-ins do not import each other).

Use::

    proc = FakeProcess(cuda=runtime)             # one per test: a fresh process
    trt = proc.tensorrt("10.3.0")                # the module; monkeypatch it into sys.modules
    monkeypatch.setattr(trt_platform, "_dlopen", proc.dlopen)
"""
from __future__ import annotations

import enum
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAGIC = "FAKE-TENSORRT-PLUGIN-LIBRARY"
ENGINE_MAGIC = "FAKE-TENSORRT-ENGINE"
OUR_CREATOR = ("MultilevelRoIAlign", "1", "mrcnn_edge")


def write_plugin_library(path: str | os.PathLike, built_for: str = "10.3.0",
                         creators: tuple[tuple[str, str, str], ...] = (OUR_CREATOR,),
                         self_registering: bool = False) -> Path:
    """A fake ``libmrcnn_edge_plugins.so``: the TensorRT it was built for, its creators, and whether a
    static registrar registers them at dlopen (as the real library will)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [MAGIC, f"built_for={built_for}", f"self_registering={int(self_registering)}"]
    lines += [f"creator={n}/{v}@{ns}" for n, v, ns in creators]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_engine(path: str | os.PathLike, onnx_model: str | os.PathLike, built_for: str = "10.3.0",
                 data_dependent: bool = False, capture_refused: bool = False) -> Path:
    """A stand-in serialised engine (``model.engine``): the ONNX model it runs and its properties.

    ``data_dependent``: its enqueue synchronises with the host, as TensorRT's NMS layer makes every
    Mask R-CNN engine do (so it cannot be captured in a CUDA graph); ``capture_refused``: its
    enqueue reports failure while the stream is captured (a TensorRT that refuses capture).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([ENGINE_MAGIC, f"onnx={Path(onnx_model).resolve()}", f"built_for={built_for}",
                               f"data_dependent={int(data_dependent)}", f"capture_refused={int(capture_refused)}"]) + "\n")
    return path


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _LoadedLibrary:
    """What ctypes.CDLL returns for one of our libraries: its exported version function."""

    def __init__(self, built_for: str) -> None:
        major, minor, patch = (int(x) for x in built_for.split(".")[:3])
        value = major * 10000 + minor * 100 + patch
        fn: Any = lambda: value  # noqa: E731 - stands for an exported C function
        fn.restype = None
        self.mrcnnEdgePluginTensorRTVersion = fn


class FakeProcess:
    """The process-wide state TensorRT and the dynamic linker keep."""

    def __init__(self, library_path: list[str] | None = None, cuda: Any = None) -> None:
        self.search_dirs = list(library_path or [])  # what LD_LIBRARY_PATH would hold
        self.cuda = cuda  # the CUDA runtime the process links (cuda-python's namespace); engines run on it
        self.loaded: dict[str, dict[str, Any]] = {}   # real path -> parsed library
        self.creators: dict[tuple[str, str, str], str] = {}  # creator -> library that registered it
        self.logger: Any = None
        self.load_library_calls: list[str] = []
        self.log_lines: list[tuple[int, str]] = []

    # ---- the dynamic linker ----------------------------------------------------------------------

    def dlopen(self, name: str) -> _LoadedLibrary:
        # dlopen(3): "If filename contains a slash ("/"), then it is interpreted as a (relative or
        # absolute) pathname. Otherwise, the dynamic linker searches for the shared object" in
        # LD_LIBRARY_PATH, the cache and the default folders -- never the current folder.
        if "/" in name:
            candidates = [Path(name)]
        else:
            candidates = [Path(d) / name for d in self.search_dirs]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise OSError(f"{name}: cannot open shared object file: No such file or directory")
        real = str(path.resolve())
        # dlopen(3): "If the same shared object is opened again with dlopen(), the same object
        # handle is returned" -- its constructors (a static registrar) ran only the first time.
        if real not in self.loaded:
            text = path.read_text(errors="replace").splitlines() if path.stat().st_size < 4096 else []
            if not text or text[0] != MAGIC:
                raise OSError(f"{real}: invalid ELF header")
            fields = [line.split("=", 1) for line in text[1:] if "=" in line]
            lib = {"built_for": dict(fields)["built_for"],
                   "self_registering": dict(fields)["self_registering"] == "1",
                   "creators": [tuple(v.replace("@", "/").split("/")) for k, v in fields if k == "creator"]}
            self.loaded[real] = lib
            if lib["self_registering"] and self.logger is not None:
                # a static registrar calls getPluginRegistry()->registerCreator(...) from the
                # library's constructor; registerCreator "Returns false if a plugin creator with
                # the same type is already registered" -- it then simply does not register.
                for creator in lib["creators"]:
                    self.creators.setdefault(creator, real)
        return _LoadedLibrary(self.loaded[real]["built_for"])

    def log(self, severity: Severity, msg: str) -> None:
        self.log_lines.append((int(severity), msg))
        if self.logger is not None:
            self.logger.log(severity, msg)

    # ---- the module --------------------------------------------------------------------------------

    def tensorrt(self, version: str = "10.3.0", **builder_options: Any) -> types.ModuleType:
        """A ``tensorrt`` module of ``version`` living in this process."""
        return _make_module(self, version, builder_options)


class _Registry:
    def __init__(self, proc: FakeProcess) -> None:
        self.proc = proc

    def get_creator(self, type: str, version: str, plugin_namespace: str = "") -> Any:  # noqa: A002
        # IPluginRegistry::getCreator: "Return a registered plugin creator based on plugin name,
        # version, and namespace"; the binding returns None when there is none.
        key = (type, version, plugin_namespace)
        return types.SimpleNamespace(name=type, plugin_version=version, plugin_namespace=plugin_namespace) \
            if key in self.proc.creators else None

    def load_library(self, plugin_path: str) -> Any:
        proc = self.proc
        proc.load_library_calls.append(plugin_path)
        try:
            lib = proc.dlopen(plugin_path)  # loadLibrary dlopens the path as given
        except OSError as exc:
            proc.log(Severity.ERROR, f"Failed to load library: {exc}")
            return None
        real = str(Path(plugin_path).resolve()) if "/" in plugin_path else next(
            r for r in proc.loaded if Path(r).name == plugin_path)
        creators = proc.loaded[real]["creators"]
        # NvInferRuntimeCommon.h (10.3, 11.1), loadLibrary: "The call will fail and return nullptr
        # if any of the plugins are already registered."
        if any(c in proc.creators for c in creators):
            proc.log(Severity.ERROR, f"Plugin creator already registered - {'/'.join(creators[0])}")
            return None
        for c in creators:
            proc.creators[c] = real
        return types.SimpleNamespace(library=real, built_for=lib)


def _make_module(proc: FakeProcess, version: str, opts: dict[str, Any]) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.process = proc
    trt.calls = calls = {}
    registry = _Registry(proc)
    trt.get_plugin_registry = lambda: registry

    class ILogger:
        Severity = Severity

        def __init__(self) -> None:
            pass

    class Logger(ILogger):
        """TensorRT's own logger: prints messages at or above its level to stderr."""

        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (Severity.INTERNAL_ERROR, Severity.ERROR,
                                                         Severity.WARNING, Severity.INFO, Severity.VERBOSE)

        def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
            super().__init__()
            self.min_severity = min_severity

        def log(self, severity: Severity, msg: str) -> None:
            if int(severity) <= int(self.min_severity):
                print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)

    def _adopt(logger: Any) -> None:
        # the first logger handed to TensorRT becomes the one its registry and plugins log to
        if proc.logger is None:
            proc.logger = logger

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        _adopt(logger)
        return True

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    trt.ILogger, trt.Logger, trt.IProgressMonitor = ILogger, Logger, IProgressMonitor
    trt.init_libnvinfer_plugins = init_libnvinfer_plugins
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.DataType = DataType
    # tensorrt.nptype: "Returns the numpy-equivalent of a TensorRT DataType"
    trt.nptype = lambda dtype: {DataType.FLOAT: np.float32, DataType.HALF: np.float16,
                                DataType.INT32: np.int32, DataType.INT64: np.int64}[dtype]
    _add_builder(trt, proc, calls, _adopt, opts)
    _add_runtime(trt, proc, _adopt, opts)
    return trt


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 10


_ONNX_TYPES = {"tensor(float)": DataType.FLOAT, "tensor(float16)": DataType.HALF,
               "tensor(int32)": DataType.INT32, "tensor(int64)": DataType.INT64}


def _add_runtime(trt: types.ModuleType, proc: FakeProcess, adopt: Callable[[Any], None], opts: dict[str, Any]) -> None:
    """Runtime, engine and execution context for engines written by :func:`write_engine`.

    Module options: ``context_fails`` (no device memory for an execution context).
    """

    class Context:
        def __init__(self, engine: "Engine") -> None:
            self.engine = engine
            self.addresses: dict[str, int] = {}

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.engine.get_tensor_shape(name)

        def set_input_shape(self, name: str, shape: Any) -> bool:
            # setInputShape: "Return True if the shape was set successfully"; a static input keeps
            # the one shape it was built with
            if tuple(shape) != self.engine.get_tensor_shape(name):
                proc.log(Severity.ERROR, f"IExecutionContext::setInputShape: {name} is static {self.engine.get_tensor_shape(name)}")
                return False
            return True

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            # setTensorAddress: "Return false if the provided name does not map to an input or output
            # tensor." and "The pointer must have at least 256-byte alignment."
            if name not in self.engine.tensors or int(ptr) % 256:
                proc.log(Severity.ERROR, f"IExecutionContext::setTensorAddress: bad address for {name}")
                return False
            self.addresses[name] = int(ptr)
            return True

        def _run(self, _user_data: Any = None) -> None:
            """The engine's kernels: read the inputs where they are bound, write the outputs there."""
            import ctypes

            feed = {}
            for name in self.engine.inputs:
                shape, dtype = self.engine.tensors[name][:2]
                n = int(np.prod(shape))
                raw = (ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(self.addresses[name])
                feed[name] = np.frombuffer(raw, dtype=dtype, count=n).reshape(shape).copy()
            for name, value in zip(self.engine.outputs, self.engine.session.run(self.engine.outputs, feed)):
                value = np.ascontiguousarray(value, dtype=self.engine.tensors[name][1])
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)

        def execute_async_v3(self, stream_handle: int) -> bool:
            # the binding takes the cudaStream_t as an integer
            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3(): incompatible function arguments (stream_handle: int)")
            missing = [n for n in self.engine.tensors if n not in self.addresses]
            if missing:
                # enqueueV3 needs every I/O tensor's address set first
                proc.log(Severity.ERROR, f"IExecutionContext::enqueueV3: no address set for {', '.join(missing)}")
                return False
            cuda = proc.cuda
            err, status = cuda.cudaStreamIsCapturing(stream_handle)
            if int(err) != 0:
                proc.log(Severity.ERROR, f"IExecutionContext::enqueueV3: invalid stream ({err})")
                return False
            # the engine's kernels are launched on the stream, and "a kernel launch will fail if it
            # is issued to a stream that is not associated to the current device" (CUDA Programming
            # Guide, "Stream and Event Behavior"): the caller's thread must have the device current
            current, stream_device = cuda.cudaGetDevice()[1], cuda.cudaStreamGetDevice(stream_handle)[1]
            if current != stream_device:
                proc.log(Severity.ERROR, f"IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (invalid "
                                         f"resource handle: stream of device {stream_device}, device {current} current)")
                return False
            capturing = status != cuda.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone
            if capturing and self.engine.data_dependent:
                # data-dependent shapes (NMS): the enqueue waits for the sizes on the host, which
                # stream capture forbids; CUDA refuses (and invalidates the capture), TensorRT
                # reports it and fails the enqueue
                cuda.cudaStreamSynchronize(stream_handle)
                proc.log(Severity.ERROR, "[executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime "
                                         "(operation not permitted when stream is capturing)")
                return False
            # the engine's kernels, in stream order (recorded into the graph while capturing)
            if int(cuda.cudaLaunchHostFunc(stream_handle, self._run, None)[0]) != 0:
                return False
            return not (capturing and self.engine.capture_refused)

    class Engine:
        def __init__(self, fields: dict[str, str]) -> None:
            import onnxruntime

            self.session = onnxruntime.InferenceSession(fields["onnx"], providers=["CPUExecutionProvider"])
            self.data_dependent = fields.get("data_dependent") == "1"
            self.capture_refused = fields.get("capture_refused") == "1"
            self.tensors: dict[str, tuple[tuple[int, ...], Any, str]] = {}
            for mode, args in (("in", self.session.get_inputs()), ("out", self.session.get_outputs())):
                for a in args:
                    kind = _ONNX_TYPES[a.type]
                    self.tensors[a.name] = (tuple(int(d) for d in a.shape), trt.nptype(kind), mode, kind)
            self.inputs = [n for n, t in self.tensors.items() if t[2] == "in"]
            self.outputs = [n for n, t in self.tensors.items() if t[2] == "out"]
            self.num_io_tensors = len(self.tensors)

        def get_tensor_name(self, i: int) -> str:
            return list(self.tensors)[i]

        def get_tensor_mode(self, name: str) -> str:
            return trt.TensorIOMode.INPUT if self.tensors[name][2] == "in" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return self.tensors[name][0]

        def get_tensor_dtype(self, name: str) -> DataType:
            return self.tensors[name][3]

        def create_execution_context(self) -> Any:
            # the binding's None for a null IExecutionContext* (no device memory for activations)
            if opts.get("context_fails"):
                proc.log(Severity.ERROR, "Requested amount of GPU memory could not be allocated")
                return None
            return Context(self)

    class Runtime:
        def __init__(self, logger: Any) -> None:
            adopt(logger)

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            # deserializeCudaEngine: "Returns the engine, or nullptr if it could not be deserialized"
            lines = bytes(data).decode(errors="replace").splitlines()
            if not lines or lines[0] != ENGINE_MAGIC:
                proc.log(Severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                         "(Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
                return None
            fields = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
            built, mine = fields.get("built_for", ""), trt.__version__
            if built.split(".")[:3] != mine.split(".")[:3]:
                proc.log(Severity.ERROR, f"IRuntime::deserializeCudaEngine: The engine plan file is not compatible "
                                         f"with this version of TensorRT, expecting library version {mine} got {built}")
                return None
            return Engine(fields)

    trt.Runtime = Runtime


def _add_builder(trt: types.ModuleType, proc: FakeProcess, calls: dict, adopt: Callable[[Any], None],
                 opts: dict[str, Any]) -> None:
    """Builder, network, parser, config: enough for ``build_engine``, recording what it is asked."""

    class Cache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob)

        def serialize(self) -> bytes:
            return b"CACHE"

    class Config:
        progress_monitor = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls["workspace"] = (pool, size)

        def create_timing_cache(self, blob: bytes) -> Cache:
            calls.setdefault("timing_blobs", []).append(bytes(blob))
            return Cache(blob)

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> Cache:
            return self.cache

    class Network:
        num_inputs = 1

        def get_input(self, i: int) -> Any:
            return types.SimpleNamespace(name="rois", shape=(1, 64, 4))

    class OnnxParser:
        def __init__(self, network: Any, logger: Any) -> None:
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            calls["parsed"] = path
            # the parser finds plugin nodes by op name in the registry (getCreator)
            if opts.get("needs_plugin", True) and OUR_CREATOR not in proc.creators:
                proc.log(Severity.ERROR, "Plugin not found, are the plugin name, version, and namespace correct?")
                self.num_errors = 1
                return False
            if opts.get("parse_error"):
                proc.log(Severity.ERROR, opts["parse_error"])
                self.num_errors = 1
                return False
            return True

        def get_error(self, i: int) -> Any:
            return types.SimpleNamespace(desc=lambda: "Could not create the plugin.", node_name=lambda: "roi_pool",
                                         node_operator=lambda: "MultilevelRoIAlign")

    class Builder:
        def __init__(self, logger: Any) -> None:
            adopt(logger)

        def create_network(self, flags: int) -> Network:
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network: Any, config: Config) -> Any:
            monitor = config.progress_monitor
            if monitor is not None:
                monitor.phase_start("Building engine", None, 2)
                monitor.step_complete("Building engine", 0)
                monitor.phase_finish("Building engine")
            for severity, line in opts.get("build_errors", ()):
                proc.log(severity, line)
            if opts.get("build_errors"):
                return None  # the binding's None for the nullptr buildSerializedNetwork returns when it fails
            return b"SERIALIZED-ENGINE"

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
