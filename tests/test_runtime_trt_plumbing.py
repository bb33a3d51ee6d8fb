"""TrtBackend's plumbing without a GPU: the stand-in TensorRT of tests/fakes (its plugin registry and
dlopen behave as documented) plus a ``cudart`` whose "device" memory is host memory and whose
engine runs the same contract model in ONNX Runtime. This checks plugin loading, buffers, copies,
tensor addresses, CUDA-graph capture and its refusal, and cleanup; that the real APIs are called
correctly is for the ``tensorrt``-marked test on a GPU machine."""
from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from fakes.fake_tensorrt import FakeProcess, Severity, write_plugin_library
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import write_sidecar
from mrcnn_edge.runtime import backend_trt, trt_platform
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
        self.invalidated = False
        self.graphs = 0

    def _alloc(self, n):
        # cudaMalloc: "The allocated memory is suitably aligned for any kind of variable" (256 bytes)
        buf = ctypes.create_string_buffer(n + 256)
        ptr = (ctypes.addressof(buf) + 255) // 256 * 256
        self.blocks[ptr] = buf
        return 0, ptr

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
        if self.capturing:
            # a synchronisation is illegal while capturing: it invalidates the capture sequence
            # ("cudaStreamCaptureStatusInvalidated: ... an error has invalidated the capture sequence")
            self.invalidated = True
            return (900,)  # cudaErrorStreamCaptureUnsupported
        return (0,)

    def cudaStreamDestroy(self, s):
        self.freed.append("stream")
        return (0,)

    def cudaStreamBeginCapture(self, s, mode):
        self.capturing = True
        return (0,)

    def cudaStreamEndCapture(self, s):
        self.capturing = False
        if self.invalidated:
            # "If capture was invalidated, due to a violation of the rules of stream capture, then
            # a NULL graph will be returned."
            self.invalidated = False
            return 901, None  # cudaErrorStreamCaptureInvalidated
        self.graphs += 1
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


def _fake_tensorrt(proc, onnx_path, cudart, capture_ok=True, data_dependent=False, context_ok=True,
                   version="10.3.0.26"):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    io = [(a.name, tuple(a.shape), np.float32 if a.type == "tensor(float)" else np.int32, i < 1)
          for i, a in enumerate(session.get_inputs() + session.get_outputs())]
    trt = proc.tensorrt(version)

    class Context:
        def __init__(self):
            self.addresses = {}

        def get_tensor_shape(self, name):
            return next(s for n, s, _, _ in io if n == name)

        def set_input_shape(self, name, shape):
            raise AssertionError("static engine: no shapes to set")

        def set_tensor_address(self, name, ptr):
            # setTensorAddress: "Return false if the provided name does not map to an input or output
            # tensor." and "The pointer must have at least 256-byte alignment."
            if all(n != name for n, _, _, _ in io) or ptr % 256:
                proc.log(Severity.ERROR, f"IExecutionContext::setTensorAddress: bad address for {name}")
                return False
            self.addresses[name] = ptr
            return True

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
                if data_dependent:
                    # data-dependent shapes (NMS): the enqueue waits for the sizes on the host,
                    # which stream capture forbids; TensorRT reports it and fails the enqueue
                    cudart.cudaStreamSynchronize(stream)
                    proc.log(Severity.ERROR, "[executionContext.cpp::enqueueV3] Error Code 1: Cuda Runtime "
                                             "(operation not permitted when stream is capturing)")
                    return False
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
            # the binding's None for a null IExecutionContext* (no device memory for activations)
            if not context_ok:
                proc.log(Severity.ERROR, "Requested amount of GPU memory could not be allocated")
                return None
            return Context()

    class Runtime:
        def __init__(self, logger):
            if proc.logger is None:
                proc.logger = logger

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"engine" else None

    trt.Runtime = Runtime
    return trt


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    onnx_path = make_contract_model(tmp_path / "model.onnx", mask_size=14)
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"engine")
    write_plugin_library(tmp_path / "libplugin.so", "10.3.0")
    meta = contract_metadata((128, 160), 1, ["__background__", "square", "disk"], 14, 5)
    meta.update({"tensorrt_version": "10.3.0.26", "plugin_library": "libplugin.so",
                 "plugin": {"name": "MultilevelRoIAlign", "version": "1", "namespace": "mrcnn_edge"}})
    write_sidecar(engine, meta)
    cudart = FakeCudart()
    monkeypatch.setattr(backend_trt, "cuda_modules", lambda: (None, cudart, None))
    proc = FakeProcess()  # one process for the whole test: its registry outlives each backend
    monkeypatch.setattr(trt_platform, "_dlopen", proc.dlopen)

    def install(**options):
        trt = _fake_tensorrt(proc, onnx_path, cudart, **options)
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
    # the sidecar's plugin library, next to the engine
    assert trt.process.load_library_calls == [str(engine.parent.resolve() / "libplugin.so")]
    assert seg.backend.description == ("tensorrt + CUDA graph" if cuda_graph else "tensorrt")
    got = seg.batch(frames)
    for g, w in zip(got, want):
        assert np.array_equal(g.boxes, w.boxes) and np.allclose(g.scores, w.scores)
        assert np.allclose(g.mask_probs, w.mask_probs, atol=1e-6)
    allocated = set(cudart.blocks)
    seg.close()
    assert allocated <= set(cudart.freed) and "stream" in cudart.freed
    assert (("graph" in cudart.freed) == cuda_graph)


def test_failed_graph_capture_falls_back_and_frees_the_graph(fake_gpu, caplog):
    onnx_path, engine, cudart, install = fake_gpu
    install(capture_ok=False)
    with Segmenter.from_path(engine, device="cpu", cuda_graph=True, score_threshold=0.0) as seg:
        assert seg.backend.description == "tensorrt" and "running without a graph" in caplog.text
        assert cudart.graphs == 1 and "graph" in cudart.freed  # destroyed now, not leaked
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3


def test_engine_with_data_dependent_shapes_is_not_captured(fake_gpu, caplog, capfd):
    """NMS makes the enqueue synchronise: CUDA invalidates the capture. One warning, no TensorRT ERROR."""
    _, engine, cudart, install = fake_gpu
    install(data_dependent=True)
    with Segmenter.from_path(engine, device="cpu", cuda_graph=True, score_threshold=0.0) as seg:
        assert seg.backend.description == "tensorrt"
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3
    warnings = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "data-dependent" in warnings[0].getMessage()
    assert "ERROR" not in capfd.readouterr().err and "[E]" not in capfd.readouterr().err


def test_two_engines_in_one_process(fake_gpu):
    """`demo` validates then runs: the second load finds the plugin registered and does not fail."""
    _, engine, _, install = fake_gpu
    trt = install()
    with Segmenter.from_path(engine, device="cpu"):
        pass
    with Segmenter.from_path(engine, device="cpu", score_threshold=0.0) as seg:
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3
    assert len(trt.process.load_library_calls) == 1


def test_plugin_library_given_by_bare_name_in_the_engine_folder(fake_gpu, monkeypatch):
    """`run model.engine --plugin-lib libplugin.so` from the engine's folder: dlopen must get a path."""
    _, engine, _, install = fake_gpu
    trt = install()
    monkeypatch.chdir(engine.parent)
    with Segmenter.from_path("model.engine", device="cpu", plugin_lib="libplugin.so"):
        pass
    assert trt.process.load_library_calls == [str(engine.parent.resolve() / "libplugin.so")]


def test_sidecar_library_next_to_an_engine_named_relatively(fake_gpu, monkeypatch):
    _, engine, _, install = fake_gpu
    install()
    monkeypatch.chdir(engine.parent)
    with Segmenter.from_path("model.engine", device="cpu", score_threshold=0.0) as seg:
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3


def test_runtime_refuses_a_plugin_of_another_tensorrt_major(fake_gpu, tmp_path):
    _, engine, cudart, install = fake_gpu
    trt = install(version="11.1.0")
    meta_path = engine.with_name("model.engine.json")
    meta_path.write_text(meta_path.read_text().replace("10.3.0.26", "11.1.0"))
    write_plugin_library(tmp_path / "libplugin.so", "10.3.0")
    with pytest.raises(UserError, match="built against TensorRT 10.3.0 but TensorRT 11.1.0 is installed"):
        Segmenter.from_path(engine, device="cpu")
    assert trt.process.load_library_calls == [] and set(cudart.blocks) <= set(cudart.freed)


def test_a_plugin_that_registers_itself_is_not_loaded_twice(fake_gpu, tmp_path):
    _, engine, _, install = fake_gpu
    trt = install()
    write_plugin_library(tmp_path / "libplugin.so", "10.3.0", self_registering=True)
    with Segmenter.from_path(engine, device="cpu", score_threshold=0.0) as seg:
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3
    assert trt.process.load_library_calls == []


def test_execution_context_that_cannot_be_created(fake_gpu):
    _, engine, cudart, install = fake_gpu
    install(context_ok=False)
    with pytest.raises(UserError, match="could not create an execution context.*GPU memory"):
        Segmenter.from_path(engine, device="cpu")
    assert set(cudart.blocks) <= set(cudart.freed)


def test_refused_tensor_address_is_an_error(fake_gpu, monkeypatch):
    _, engine, cudart, install = fake_gpu
    install()
    plain = cudart._alloc
    monkeypatch.setattr(cudart, "cudaMalloc", lambda n: (0, plain(n)[1] + 4))  # misaligned device memory
    with pytest.raises(UserError, match="refused the buffer of tensor images"):
        Segmenter.from_path(engine, device="cpu")


def test_engine_that_does_not_deserialize(fake_gpu):
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
    from mrcnn_edge.core.errors import UserError

    with pytest.raises(UserError, match="CUDA pre/post-processing is unavailable"):
        Segmenter.from_path(engine, device="cuda")
