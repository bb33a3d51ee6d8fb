"""TrtBackend's plumbing without a GPU: the real ``TrtBackend`` on the stand-in TensorRT of
tests/fakes/fake_tensorrt.py (its plugin registry, dlopen and engine behave as documented; the engine
runs the contract model in ONNX Runtime on the bound device memory) over the stand-in cuda-python of
tests/fakes/fake_cuda.py (device memory is host memory, work runs in stream order, stream capture
and CUDA graphs as documented). This checks plugin loading, buffers, copies, tensor addresses, the
wait for each frame (an event polled, never a blocking call), CUDA-graph capture and its refusal,
and cleanup; that the real APIs are called correctly is for the ``tensorrt``-marked test on a GPU
machine."""
from __future__ import annotations

import numpy as np
import pytest

from fakes.fake_tensorrt import write_plugin_library
from fakes.gpu_stand_in import StandInGPU
from mrcnn_edge.core.contract import plugin_identity
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model, moving_squares

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def kernels_dir(tmp_path_factory):
    """One host build of the runtime's kernels for the module (the stand-in GPU runs them)."""
    return tmp_path_factory.mktemp("trt-plumbing-kernels")


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch, kernels_dir):
    """(onnx model, its engine needing the plugin library next to it, the stand-in cuda, install):
    ``install(**options)`` puts a ``tensorrt`` module of the test's one process in place (its
    registry outlives each backend) and rewrites the engine with ``engine_options``."""
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(kernels_dir / "cache"))
    onnx_path = make_contract_model(tmp_path / "model.onnx", mask_size=14)
    write_plugin_library(tmp_path / "libplugin.so", "10.3.0")
    gpu = StandInGPU.install(monkeypatch, kernels_dir)
    engine = tmp_path / "model.engine"

    def install(version="10.3.0.26", data_dependent=False, capture_refused=False, **options):
        trt = gpu.tensorrt(version, **options)
        gpu.engine_for(onnx_path, engine, plugin_library="libplugin.so", metadata={"plugin": plugin_identity()},
                       data_dependent=data_dependent, capture_refused=capture_refused)
        return trt

    install()
    return onnx_path, engine, gpu.cuda, install


def _nothing_left(fake):
    """Every buffer, stream and graph of the stand-in GPU freed (close ran, and ran once)."""
    return (fake.live_device_bytes() == 0 and fake.live_pinned_bytes() == 0 and not fake.streams
            and not fake.stats["live_graphs"] and not fake.stats["live_graph_execs"])


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_engine_path_gives_the_onnxruntime_results(fake_gpu, cuda_graph):
    onnx_path, engine, fake, install = fake_gpu
    trt = install()
    frames = list(moving_squares(3, hw=(120, 160)))
    with Segmenter.from_path(onnx_path, score_threshold=0.0, device="cpu") as ref:
        want = ref.batch(frames)
    seg = Segmenter.from_path(engine, score_threshold=0.0, device="cpu", cuda_graph=cuda_graph)
    # the sidecar's plugin library, next to the engine
    assert trt.process.load_library_calls == [str(engine.parent.resolve() / "libplugin.so")]
    assert seg.backend.description == ("tensorrt + CUDA graph" if cuda_graph else "tensorrt")
    got = seg.batch(frames)
    for g, w in zip(got, want):
        assert np.array_equal(g.boxes, w.boxes) and np.allclose(g.scores, w.scores)
        assert np.allclose(g.mask_probs, w.mask_probs, atol=1e-6)
    # the graph is kept and launched once per frame
    assert len(fake.stats["live_graph_execs"]) == fake.stats["graph_launches"] // len(frames) == int(cuda_graph)
    seg.close()
    seg.backend.close()  # a second close frees nothing twice
    assert _nothing_left(fake) and fake.errors == []


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_each_frame_waits_on_an_event_not_a_blocking_call(fake_gpu, monkeypatch, device):
    """Issue 11: cuda-python before 12.9.1 holds the GIL inside every call, cudaStreamSynchronize
    included, so TrtBackend.execute must not wait inside one: it records an event and polls it.
    With CPU and with GPU pre/post-processing; the results stay ONNX Runtime's."""
    onnx_path, engine, fake, install = fake_gpu
    install()
    rt = fake.runtime
    created, destroyed = [], []
    create, destroy = rt.cudaEventCreateWithFlags, rt.cudaEventDestroy
    monkeypatch.setattr(rt, "cudaEventCreateWithFlags", lambda f: created.append(create(f)) or created[-1])
    monkeypatch.setattr(rt, "cudaEventDestroy", lambda e: destroyed.append(e) or destroy(e))
    frames = list(moving_squares(4, hw=(120, 160)))
    with Segmenter.from_path(onnx_path, score_threshold=0.0, device="cpu") as ref:
        want = [ref(f) for f in frames]
    with Segmenter.from_path(engine, score_threshold=0.0, device=device) as seg:
        assert seg.ops.name == device
        polls = fake.stats["event_polls"]
        got = [seg(f) for f in frames]
        drawn = [g.draw(f) for g, f in zip(got, frames)]  # on the device with device="cuda"
        assert not fake.stats["stream_syncs"]  # not one blocking wait, at open or per frame
        assert fake.stats["event_polls"] - polls >= len(frames)
    for g, w, d, f in zip(got, want, drawn, frames):  # drawn frames stay valid after the close
        assert len(g) == len(w) == 3
        assert np.array_equal(g.boxes, w.boxes) and np.allclose(g.scores, w.scores)
        assert np.array_equal(g.masks, w.masks) and np.array_equal(d, w.draw(f))
    # every event created (the backend's and the GPU ops') destroyed at close, each once
    events = [e for _, e in created]
    assert len(destroyed) == len(events) and {id(e) for e in events} == {id(e) for e in destroyed}
    del d, drawn  # the pinned memory they were lent goes with them
    assert _nothing_left(fake) and fake.errors == []


def test_failed_graph_capture_falls_back_and_frees_the_graph(fake_gpu, caplog, monkeypatch):
    onnx_path, engine, fake, install = fake_gpu
    install(capture_refused=True)
    ended = []
    end_capture = fake.runtime.cudaStreamEndCapture
    monkeypatch.setattr(fake.runtime, "cudaStreamEndCapture", lambda s: ended.append(end_capture(s)) or ended[-1])
    with Segmenter.from_path(engine, device="cpu", cuda_graph=True, score_threshold=0.0) as seg:
        assert seg.backend.description == "tensorrt" and "running without a graph" in caplog.text
        (err, graph), = ended
        assert int(err) == 0 and int(graph) != 0  # a graph was captured ...
        assert not fake.stats["live_graphs"] and not fake.stats["live_graph_execs"]  # ... and destroyed now
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3
    assert _nothing_left(fake) and fake.errors == []


def test_engine_with_data_dependent_shapes_is_not_captured(fake_gpu, caplog, capfd):
    """NMS makes the enqueue synchronise: CUDA invalidates the capture. One warning, no TensorRT ERROR."""
    _, engine, fake, install = fake_gpu
    install(data_dependent=True)
    with Segmenter.from_path(engine, device="cpu", cuda_graph=True, score_threshold=0.0) as seg:
        assert seg.backend.description == "tensorrt"
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3
    warnings = [r for r in caplog.records if "CUDA graph" in r.getMessage()]
    assert len(warnings) == 1 and "data-dependent" in warnings[0].getMessage()
    assert "ERROR" not in capfd.readouterr().err and "[E]" not in capfd.readouterr().err
    # CUDA's answers to the attempt, and nothing else: TensorRT's synchronisation refused, the
    # capture ended with a NULL graph (which is not destroyed: that would be an error too), the
    # error cleared; the stream then works as before
    err = fake.runtime.cudaError_t
    assert fake.errors == [("cudaStreamSynchronize", err.cudaErrorStreamCaptureUnsupported),
                           ("cudaStreamEndCapture", err.cudaErrorStreamCaptureInvalidated),
                           ("cudaGetLastError", err.cudaErrorStreamCaptureInvalidated)]
    assert _nothing_left(fake)


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
    _, engine, fake, install = fake_gpu
    trt = install(version="11.1.0")  # the engine and its sidecar say 11.1.0 too
    write_plugin_library(tmp_path / "libplugin.so", "10.3.0")
    with pytest.raises(UserError, match="built against TensorRT 10.3.0 but TensorRT 11.1.0 is installed"):
        Segmenter.from_path(engine, device="cpu")
    assert trt.process.load_library_calls == [] and _nothing_left(fake)


def test_a_plugin_that_registers_itself_is_not_loaded_twice(fake_gpu, tmp_path):
    _, engine, _, install = fake_gpu
    trt = install()
    write_plugin_library(tmp_path / "libplugin.so", "10.3.0", self_registering=True)
    with Segmenter.from_path(engine, device="cpu", score_threshold=0.0) as seg:
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) == 3
    assert trt.process.load_library_calls == []


def test_execution_context_that_cannot_be_created(fake_gpu):
    _, engine, fake, install = fake_gpu
    install(context_fails=True)
    with pytest.raises(UserError, match="could not create an execution context.*GPU memory"):
        Segmenter.from_path(engine, device="cpu")
    assert _nothing_left(fake)


def test_refused_tensor_address_is_an_error(fake_gpu, monkeypatch):
    _, engine, fake, install = fake_gpu
    install()
    plain = fake.runtime.cudaMalloc
    bases = []

    def misaligned(nbytes):  # cudaMalloc's memory is 256-byte aligned; this is not
        err, ptr = plain(nbytes + 4)
        bases.append(ptr)
        return err, ptr + 4

    free = fake.runtime.cudaFree
    monkeypatch.setattr(fake.runtime, "cudaMalloc", misaligned)
    monkeypatch.setattr(fake.runtime, "cudaFree", lambda ptr: free(ptr - 4 if ptr - 4 in bases else ptr))
    with pytest.raises(UserError, match="refused the buffer of tensor images"):
        Segmenter.from_path(engine, device="cpu")
    assert _nothing_left(fake) and fake.errors == []


def test_engine_that_does_not_deserialize(fake_gpu):
    _, engine, fake, install = fake_gpu
    install()
    engine.write_bytes(b"corrupt")
    with pytest.raises(UserError, match="rebuild it on this device"):
        Segmenter.from_path(engine)
    assert _nothing_left(fake)  # nothing leaked on the way out


def test_auto_device_falls_back_to_cpu_pre_post_without_a_usable_gpu(fake_gpu, caplog, monkeypatch):
    from mrcnn_edge.runtime.gpu import cuda_ops

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


def test_stand_in_stream_capture_follows_the_cuda_documentation(fake_gpu):
    """The stand-in's graph API, which the tests above rely on: captured work is recorded, not run;
    a launch runs it on the launch stream; a synchronisation while capturing is refused and
    invalidates the capture (NULL graph); NULL or destroyed handles are refused."""
    _, _, fake, _ = fake_gpu
    rt, err = fake.runtime, fake.runtime.cudaError_t
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
    runs = []
    stream = rt.cudaStreamCreate()[1]
    event = rt.cudaEventCreateWithFlags(rt.cudaEventDisableTiming)[1]
    assert rt.cudaLaunchHostFunc(stream, runs.append, "before")[0] == 0
    assert rt.cudaStreamBeginCapture(stream, mode)[0] == 0
    assert rt.cudaStreamBeginCapture(stream, mode)[0] == err.cudaErrorInvalidValue  # already capturing
    assert rt.cudaStreamBeginCapture(0, mode)[0] == err.cudaErrorInvalidValue  # the legacy stream
    rt.cudaLaunchHostFunc(stream, runs.append, "captured")
    assert rt.cudaEventRecord(event, stream)[0] == 0
    assert rt.cudaEventQuery(event)[0] == err.cudaErrorCapturedEvent
    assert rt.cudaStreamIsCapturing(stream)[1] == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive
    e, graph = rt.cudaStreamEndCapture(stream)
    assert e == 0 and int(graph) != 0 and runs == []  # recorded, not run
    assert rt.cudaEventRecord(event, stream)[0] == 0 and rt.cudaEventQuery(event)[0] in (0, err.cudaErrorNotReady)
    e, graph_exec = rt.cudaGraphInstantiate(graph, 0)
    assert e == 0 and rt.cudaGraphDestroy(graph)[0] == 0 and rt.cudaGraphDestroy(graph)[0] == err.cudaErrorInvalidValue
    assert rt.cudaGraphLaunch(graph_exec, stream)[0] == 0 and rt.cudaGraphLaunch(graph_exec, stream)[0] == 0
    assert rt.cudaStreamSynchronize(stream)[0] == 0
    assert runs == ["before", "captured", "captured"]  # in stream order, once per launch
    assert rt.cudaGraphExecDestroy(graph_exec)[0] == 0
    assert rt.cudaGraphLaunch(graph_exec, stream)[0] == err.cudaErrorInvalidValue

    # a synchronisation while capturing: refused, and the capture ends with a NULL graph
    assert rt.cudaStreamBeginCapture(stream, mode)[0] == 0
    assert rt.cudaStreamSynchronize(stream)[0] == err.cudaErrorStreamCaptureUnsupported
    assert rt.cudaStreamIsCapturing(stream)[1] == rt.cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated
    e, graph = rt.cudaStreamEndCapture(stream)
    assert e == err.cudaErrorStreamCaptureInvalidated and int(graph) == 0
    assert rt.cudaGraphInstantiate(graph, 0)[0] == err.cudaErrorInvalidValue
    assert rt.cudaGraphDestroy(graph)[0] == err.cudaErrorInvalidValue
    assert rt.cudaGetLastError()[0] == err.cudaErrorInvalidValue and rt.cudaGetLastError()[0] == 0
    # the legacy stream while a blocking stream captures (cudaMemcpy is on it), and cudaMalloc
    # in a global-mode capture: refused, capture invalidated
    for call in (lambda: rt.cudaDeviceSynchronize(), lambda: rt.cudaMalloc(16),
                 lambda: rt.cudaStreamSynchronize(0)):
        assert rt.cudaStreamBeginCapture(stream, mode)[0] == 0
        assert call()[0] != 0
        assert rt.cudaStreamEndCapture(stream)[0] == err.cudaErrorStreamCaptureInvalidated
    assert rt.cudaStreamEndCapture(stream)[0] == err.cudaErrorInvalidValue  # not capturing
    rt.cudaEventDestroy(event)
    rt.cudaStreamDestroy(stream)
    assert _nothing_left(fake)


def test_backend_on_device_1_runs_from_any_thread(tmp_path, monkeypatch, kernels_dir):
    """Issue 18 item 10: TrtBackend made its device current only in the thread that opened it, so
    an infer from another thread (a pipeline worker, an API user's pool) enqueued the engine on
    device 1's stream with device 0 current, which CUDA refuses for kernel launches."""
    import threading

    from mrcnn_edge.runtime.backends.ort import OrtBackend
    from mrcnn_edge.runtime.backends.trt import TrtBackend

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(kernels_dir / "cache"))
    gpu = StandInGPU.install(monkeypatch, kernels_dir, devices=((8, 7), (8, 7)))
    onnx_path = make_contract_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).normal(size=(1, 3, 128, 160)).astype(np.float32)
    got = {}
    with TrtBackend(gpu.engine_for(onnx_path), device_id=1) as be, OrtBackend(onnx_path, device="cpu") as ref:
        def worker():
            try:
                got["out"] = {k: v.copy() for k, v in be.infer({"images": x}).items()}
            except Exception as exc:  # noqa: BLE001 - reported below
                got["error"] = exc

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert "error" not in got, got.get("error")
        want = ref.infer({"images": x})
        for name in want:
            assert np.array_equal(got["out"][name], want[name]), name
    assert gpu.cuda.live_device_bytes(0) == 0 and gpu.cuda.errors == []
