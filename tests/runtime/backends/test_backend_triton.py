"""The ``triton://`` backend against two servers on 127.0.0.1.

- a KServe v2 gRPC server of our own (tests/kserve_server.py): the real protocol (tritonclient's
  grpc_service.proto), ONNX Runtime on a contract model, quick and fully controlled;
- a real ``tritonserver`` (tests/triton_server.py: the nvidia-pytriton wheel's Triton 2.51, Python
  backend only, so the ONNX Runtime repository ``serve triton`` writes is served by a Python-backend
  model with the same tensors): ``run triton://`` for 20 frames, the server restarted in the middle
  of a run, and a server answering an empty or short output.

Either way the repository is the one ``serve triton`` writes, so the metadata reaches the client
only through the ModelConfig RPC.
"""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (dev extra)")
pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

from kserve_server import KServeServer  # noqa: E402
from triton_server import TritonServer, serve_onnx_with_python_backend, server_venv  # noqa: E402

from mrcnn_edge.commands.cli import main  # noqa: E402
from mrcnn_edge.core.errors import UserError  # noqa: E402
from mrcnn_edge.runtime.backends import backend_for  # noqa: E402
from mrcnn_edge.runtime.backends.triton import parse_triton_url  # noqa: E402
from mrcnn_edge.runtime.segmenter import Segmenter  # noqa: E402
from mrcnn_edge.runtime.testing import make_contract_model, moving_squares, write_video  # noqa: E402


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, Path]:
    """(the ONNX model, its Triton model folder as serve triton writes it)."""
    d = tmp_path_factory.mktemp("triton")
    model = make_contract_model(d / "seg.onnx", batch=1, mask_size=8)
    assert main(["serve", "triton", str(model), "--repo", str(d / "repo")]) == 0
    return model, d / "repo" / "seg"


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (90, 140, 3), dtype=np.uint8), np.full((200, 120, 3), 230, np.uint8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_url_dispatch_and_parsing():
    assert backend_for("triton://10.0.0.5:8001/seg").name == "triton"
    assert backend_for("model.onnx").name == "onnxruntime"
    u = parse_triton_url("triton://gpu-box/seg/3")
    assert (u.address, u.model, u.version) == ("gpu-box:8001", "seg", "3")
    with pytest.raises(UserError, match="names no model"):
        parse_triton_url("triton://gpu-box:8001")
    with pytest.raises(UserError, match="runs model files"):
        backend_for("triton://h:1/m", "onnxruntime")


def test_same_detections_as_onnxruntime_locally(repo):
    model, folder = repo
    with KServeServer(folder) as server:
        with Segmenter.from_path(server.url) as remote, Segmenter.from_path(model, backend="onnxruntime", device="cpu") as local:
            assert remote.spec.input_hw == local.spec.input_hw == (128, 160)
            assert remote.spec.class_names == local.spec.class_names
            for frame in _frames():
                a, b = remote(frame), local(frame)
                assert len(a) == len(b) > 0
                np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)
                np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
                assert list(a.class_names) == list(b.class_names)
                np.testing.assert_array_equal(a.masks, b.masks)
        assert server.servicer.requests == 2


def test_two_sources_share_the_server(repo, tmp_path):
    import contextlib

    from mrcnn_edge.runtime.run import run_sources

    _, folder = repo
    sources = []
    for i, frame in enumerate(_frames()):
        d = tmp_path / f"cam{i}"
        d.mkdir()
        for j in range(3):
            cv2.imwrite(str(d / f"f{j}.png"), frame)
        sources.append(str(d))
    outs = [str(tmp_path / "out0"), str(tmp_path / "out1")]
    with KServeServer(folder) as server, contextlib.ExitStack() as stack:
        segmenter = stack.enter_context(Segmenter.from_path(server.url))  # one channel, the sources in turn
        runs = run_sources(segmenter, sources, outs)
        assert server.servicer.requests == 6
    assert [r.stats.frames for r in runs] == [3, 3]
    assert all(r.stats.fps > 0 and "fps" in r.summary() for r in runs)
    assert all(len(list(Path(o).iterdir())) == 3 for o in outs)


def test_unreachable_server_is_one_line(tmp_path, capsys):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _frames()[0])
    url = f"triton://127.0.0.1:{_free_port()}/seg"
    assert main(["run", url, "--source", str(image), "--no-display"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not answer" in err[0] and "Traceback" not in err[0]


def test_model_the_server_does_not_have(repo):
    _, folder = repo
    with KServeServer(folder) as server:
        with pytest.raises(UserError, match="no ready model 'other'"):
            Segmenter.from_path(server.url.replace("/seg", "/other"))


def test_server_that_goes_away_is_retried_with_backoff(repo, caplog):
    _, folder = repo
    server = KServeServer(folder).start()
    port = server.port
    try:
        with Segmenter.from_path(server.url) as seg:
            seg.backend.backoff, seg.backend.reconnect_tries = 0.1, 8
            frame = _frames()[0]
            first = seg(frame)
            server.stop()
            back = KServeServer(folder, port=port)
            threading.Timer(0.3, back.start).start()
            try:
                again = seg(frame)  # fails while the server is away, then succeeds
            finally:
                time.sleep(0.05)
                back.stop()
            np.testing.assert_allclose(again.scores, first.scores)
            assert any("unavailable" in r.getMessage() for r in caplog.records)
            # and gives up with one line once the server stays away
            seg.backend.reconnect_tries = 1
            with pytest.raises(UserError, match="stopped answering"):
                seg(frame)
    finally:
        server.stop()


def test_model_unloaded_is_retried_within_run_reconnect(repo, tmp_path, capsys):
    _, folder = repo
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _frames()[0])
    with KServeServer(folder) as server:
        server.servicer.unloaded = True
        assert main(["run", server.url, "--source", str(image), "--no-display", "--reconnect", "0"]) != 0
        err = capsys.readouterr().err
        assert "retry" not in err and "model 'seg' is unavailable" in err and "gave up after 0 retries" in err
        assert main(["run", server.url, "--source", str(image), "--no-display", "--reconnect", "2"]) != 0
        err = capsys.readouterr().err
        assert "retry 2/2" in err and "gave up after 2 retries" in err and "Traceback" not in err


def test_output_shorter_than_its_announced_shape_is_one_line(repo):
    _, folder = repo
    with KServeServer(folder) as server:
        server.servicer.truncate = "masks"
        with Segmenter.from_path(server.url) as seg:
            with pytest.raises(UserError, match="'masks' does not hold the shape it announces"):
                seg(_frames()[0])


# ---- a real tritonserver --------------------------------------------------------------------------
FRAMES = 20
DELAY_S = 0.1  # per request on the "slow" model: a run long enough to restart the server under


def _real_server(d: Path, models: dict[str, dict[str, str]]):
    """A tritonserver serving, under each name, the contract model ([B,1] num_detections) as ``serve triton`` writes
    it, with the test-only parameters given (tests/triton_onnx_model.py); always stopped."""
    pytest.importorskip("onnx")
    venv = server_venv()
    model = make_contract_model(d / "edge.onnx", batch=1, mask_size=8)
    repo = d / "repo"
    for name, params in models.items():
        assert main(["serve", "triton", str(model), "--repo", str(repo), "--name", name]) == 0
        serve_onnx_with_python_backend(repo / name, **params)
    server = TritonServer(repo, venv, d / "tritonserver.log")
    server.start()
    try:
        yield server, model
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tritonserver(tmp_path_factory):
    """``edge`` answering as ONNX Runtime does; ``empty``/``short`` answering a broken ``masks``."""
    yield from _real_server(tmp_path_factory.mktemp("tritonserver"), {
        "edge": {}, "empty": {"broken_output": "masks:empty"}, "short": {"broken_output": "masks:short"}})


@pytest.fixture
def slow_tritonserver(tmp_path):
    """``slow``, answering after DELAY_S, alone on its server: a restart is quicker with one model."""
    yield from _real_server(tmp_path, {"slow": {"delay_s": str(DELAY_S)}})


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "squares.avi", moving_squares(FRAMES, (120, 160), side=40))


@pytest.mark.slow
def test_run_twenty_frames_on_a_real_triton_server(tritonserver, video, tmp_path, capsys):
    server, model = tritonserver
    out = tmp_path / "out"
    assert main(["run", server.url("edge"), "--source", str(video), "--no-display", "--output", str(out), "-q"]) == 0
    assert len(list(out.iterdir())) == FRAMES
    # Triton counts a request once its response is out: the last one may land a moment later
    deadline = time.monotonic() + 5
    while server.inference_count("edge") < FRAMES and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.inference_count("edge") >= FRAMES
    # through the server, the same detections as ONNX Runtime here
    with Segmenter.from_path(server.url("edge")) as remote, \
            Segmenter.from_path(model, backend="onnxruntime", device="cpu") as local:
        assert remote.backend.outputs["num_detections"].shape == (1, 1)
        for frame in _frames():
            a, b = remote(frame), local(frame)
            assert len(a) == len(b) > 0
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-5)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
            np.testing.assert_array_equal(a.masks, b.masks)


@pytest.mark.slow
def test_real_server_restarted_mid_run_and_the_run_finishes(slow_tritonserver, video, tmp_path, capsys):
    server, _ = slow_tritonserver
    out = tmp_path / "out"
    result: dict[str, int] = {}
    run = threading.Thread(target=lambda: result.setdefault("rc", main([
        "run", server.url("slow"), "--source", str(video), "--no-display", "--output", str(out), "-q",
        "--reconnect", "8"])))
    run.start()
    try:
        deadline = time.monotonic() + 60
        while server.inference_count("slow") < 5 and run.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.is_alive(), "the run ended before the server could be restarted"
        server.restart()  # SIGTERM: Triton unloads the model ("no available versions"), exits; then starts again
    finally:
        run.join(120)
    assert not run.is_alive() and result.get("rc") == 0, capsys.readouterr().err
    assert len(list(out.iterdir())) == FRAMES
    assert server.inference_count("slow") >= 1  # the restarted server answered the rest
    err = capsys.readouterr().err
    assert "unavailable" in err and "retry" in err


@pytest.mark.slow
@pytest.mark.parametrize("model, shape", [("empty", "[0]"), ("short", "[160]")])
def test_real_server_with_a_broken_output_is_one_line(tritonserver, tmp_path, capsys, model, shape):
    server, _ = tritonserver
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _frames()[0])
    assert main(["run", server.url(model), "--source", str(image), "--no-display"]) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mrcnn-edge: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"'masks' with shape {shape}" in errors[0] and "[1, 5, 8, 8]" in errors[0]
