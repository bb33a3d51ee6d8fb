"""TrtBackend's plumbing without a GPU: fake ``tensorrt`` and ``cudart`` modules whose "device"
memory is host memory and whose engine runs the same contract model in ONNX Runtime. This checks
buffers, copies, tensor addresses, CUDA-graph fallback and cleanup; that the real APIs are called
correctly is for the ``tensorrt``-marked test on a GPU machine."""
from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from mrcnn_edge.metadata import write_sidecar
from mrcnn_edge.runtime import backend_trt
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import contract_metadata, make_contract_model, moving_squares

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class FakeCudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeGlobal = 0

    def __init__(self):
        self.blocks, self.freed, self.capturing, self.captured, self.copies = {}, [], False, [], []

    def _alloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.blocks[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, ptr):
        self.freed.append(ptr)
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        ctypes.memmove(dst, src, n)
        self.copies.append(kind)
        return (0,)

    def cudaSetDevice(self, i):
        return (0,)

    def cudaStreamCreate(self):
        return 0, 0xABC

    def cudaStreamSynchronize(self, s):
        return (0,)

    def cudaStreamDestroy(self, s):
        self.freed.append("stream")
        return (0,)

    def cudaStreamBeginCapture(self, s, mode):
        self.capturing = True
        return (0,)

    def cudaStreamEndCapture(self, s):
        self.capturing = False
        return 0, "graph"

    def cudaGraphInstantiate(self, graph, flags):
        return 0, "exec"

    def cudaGraphLaunch(self, gexec, s):
        for run in self.captured:
            run()
        return (0,)

    def cudaGraphExecDestroy(self, g):
        self.freed.append("exec")

    def cudaGraphDestroy(self, g):
        self.freed.append("graph")

    def cudaGetLastError(self):
        return (0,)


def _fake_tensorrt(onnx_path, cudart, capture_ok=True):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    io = [(a.name, tuple(a.shape), np.float32 if a.type == "tensor(float)" else np.int32, i < 1)
          for i, a in enumerate(session.get_inputs() + session.get_outputs())]
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.26"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=2: None})
    trt.init_libnvinfer_plugins = lambda logger, ns: True
    trt.nptype = lambda dtype: dtype
    trt.loaded = []
    trt.get_plugin_registry = lambda: types.SimpleNamespace(load_library=lambda p: trt.loaded.append(p) or "handle")

    class Context:
        def __init__(self):
            self.addresses = {}

        def get_tensor_shape(self, name):
            return next(s for n, s, _, _ in io if n == name)

        def set_input_shape(self, name, shape):
            raise AssertionError("static engine: no shapes to set")

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def _run(self):
            n, shape, dtype, _ = io[0]
            x = np.frombuffer((ctypes.c_char * (int(np.prod(shape)) * 4)).from_address(self.addresses[n]),
                              dtype=dtype).reshape(shape)
            for (name, oshape, odtype, _), value in zip(io[1:], session.run(None, {n: x.copy()})):
                value = np.ascontiguousarray(value, dtype=odtype)
                ctypes.memmove(self.addresses[name], value.ctypes.data, value.nbytes)

        def execute_async_v3(self, stream):
            assert isinstance(stream, int)
            if cudart.capturing:
                cudart.captured.append(self._run)
                return capture_ok
            self._run()
            return True

    class Engine:
        num_io_tensors = len(io)

        def get_tensor_name(self, i):
            return io[i][0]

        def get_tensor_mode(self, name):
            return "in" if next(inp for n, _, _, inp in io if n == name) else "out"

        def get_tensor_shape(self, name):
            return next(s for n, s, _, _ in io if n == name)

        def get_tensor_dtype(self, name):
            return next(d for n, _, d, _ in io if n == name)

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"engine" else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    onnx_path = make_contract_model(tmp_path / "model.onnx", mask_size=14)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    (tmp_path / "libplugin.so").write_bytes(b"")
    meta = contract_metadata((128, 160), 1, ["__background__", "square", "disk"], 14, 5)
    meta.update({"tensorrt_version": "10.3.0.26", "plugin_library": "libplugin.so"})
    write_sidecar(engine, meta)
    cudart = FakeCudart()
    monkeypatch.setattr(backend_trt, "cuda_modules", lambda: (None, cudart, None))

    def install(capture_ok=True):
        trt = _fake_tensorrt(onnx_path, cudart, capture_ok)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    return onnx_path, engine, cudart, install


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_path_gives_the_onnxruntime_results(fake_gpu, cuda_graph):
    onnx_path, engine, cudart, install = fake_gpu
    trt = install()
    frames = list(moving_squares(3, hw=(120, 160)))
    with Segmenter.from_path(onnx_path, score_threshold=0.0) as ref:
        want = ref.batch(frames)
    seg = Segmenter.from_path(engine, score_threshold=0.0, device="cpu", cuda_graph=cuda_graph)
    assert trt.loaded and trt.loaded[0].endswith("libplugin.so")  # the sidecar's plugin library
    assert seg.backend.description == ("tensorrt + CUDA graph" if cuda_graph else "tensorrt")
    got = seg.batch(frames)
    for g, w in zip(got, want):
        assert np.array_equal(g.boxes, w.boxes) and np.allclose(g.scores, w.scores)
        assert np.allclose(g.mask_probs, w.mask_probs, atol=1e-6)
    allocated = set(cudart.blocks)
    seg.close()
    assert allocated <= set(cudart.freed) and "stream" in cudart.freed
    assert (("graph" in cudart.freed) == cuda_graph)


def test_failed_graph_capture_falls_back(fake_gpu, caplog):
    onnx_path, engine, cudart, install = fake_gpu
    install(capture_ok=False)
    with Segmenter.from_path(engine, device="cpu", cuda_graph=True, score_threshold=0.0) as seg:
        assert seg.backend.description == "tensorrt" and "running without a graph" in caplog.text
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3


def test_engine_that_does_not_deserialize(fake_gpu):
    from mrcnn_edge.errors import UserError

    _, engine, cudart, install = fake_gpu
    install()
    engine.write_bytes(b"corrupt")
    with pytest.raises(UserError, match="rebuild it on this device"):
        Segmenter.from_path(engine)
    assert set(cudart.blocks) <= set(cudart.freed)  # nothing leaked on the way out


def test_auto_device_falls_back_to_cpu_pre_post_without_a_usable_gpu(fake_gpu, caplog, monkeypatch):
    from mrcnn_edge.runtime import cuda_ops

    _, engine, _, install = fake_gpu
    install()

    def no_gpu(*args, **kwargs):
        raise RuntimeError("cudaSetDevice failed: no CUDA-capable device is detected")

    monkeypatch.setattr(cuda_ops.CudaOps, "__init__", no_gpu)
    with Segmenter.from_path(engine) as seg:
        assert seg.ops.name == "cpu" and "using the CPU reference" in caplog.text
    from mrcnn_edge.errors import UserError

    with pytest.raises(UserError, match="CUDA pre/post-processing is unavailable"):
        Segmenter.from_path(engine, device="cuda")
