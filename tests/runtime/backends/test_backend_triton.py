"""The ``triton://`` backend against a KServe v2 gRPC server on 127.0.0.1 (tests/kserve_server.py).

The server speaks the real protocol (tritonclient's grpc_service.proto) and answers with ONNX
Runtime on a contract model; the repository it serves is the one ``serve triton`` writes, so the
metadata reaches the client only through the ModelConfig RPC.
"""
from __future__ import annotations

import argparse
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

from mrcnn_edge.commands.cli import main  # noqa: E402
from mrcnn_edge.core.errors import UserError  # noqa: E402
from mrcnn_edge.export.serve import triton as serve_triton  # noqa: E402
from mrcnn_edge.export.serve.cli import read_served_model  # noqa: E402
from mrcnn_edge.runtime.backends import backend_for  # noqa: E402
from mrcnn_edge.runtime.backends.triton import parse_triton_url  # noqa: E402
from mrcnn_edge.runtime.segmenter import Segmenter  # noqa: E402
from mrcnn_edge.runtime.testing import make_contract_model  # noqa: E402


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> tuple[Path, Path]:
    """(the ONNX model, its Triton model folder as serve triton writes it)."""
    d = tmp_path_factory.mktemp("triton")
    model = make_contract_model(d / "seg.onnx", batch=1, mask_size=8)
    serve_triton.write(read_served_model(model), argparse.Namespace(repo=str(d / "repo"), name=None, instances=1,
                                                                    grpc_port=8001))
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
    from mrcnn_edge.runtime.multi_source import run_sources

    _, folder = repo
    sources = []
    for i, frame in enumerate(_frames()):
        d = tmp_path / f"cam{i}"
        d.mkdir()
        for j in range(3):
            cv2.imwrite(str(d / f"f{j}.png"), frame)
        sources.append(str(d))
    outs = [str(tmp_path / "out0"), str(tmp_path / "out1")]
    with KServeServer(folder) as server:
        runs = run_sources(lambda: Segmenter.from_path(server.url), sources, outs)
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
