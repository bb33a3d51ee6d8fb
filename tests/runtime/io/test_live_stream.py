"""A live network stream as users have it (issue 11): ffmpeg serves MPEG-TS over HTTP on 127.0.0.1,
``mrcnn-edge run`` reads it with a model slower than the stream, the server stops and comes back.

Checks: frames are dropped (and counted) rather than queued; ``run`` reconnects after the server
restarts and goes on; latency is reported. Loopback only; every process is killed at the end.
The model is slowed honestly: the contract model's ``Segmenter.infer`` sleeps before running it.
"""
from __future__ import annotations

import threading
import time

import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

from media_tools import free_port, needs_ffmpeg, serve, serve_or_fail

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.slow, needs_ffmpeg]

MODEL_S = 0.15  # per frame: the stream runs at 25 fps, 0.04 s a frame


def test_run_on_a_live_stream_drops_frames_and_reconnects(tmp_path, monkeypatch, capsys):
    model = make_contract_model(tmp_path / "model.onnx", mask_size=14)
    infer = Segmenter.infer
    monkeypatch.setattr(Segmenter, "infer", lambda self, work: (time.sleep(MODEL_S), infer(self, work))[1])
    port = free_port()
    servers = [serve_or_fail(port, 2.0)]
    stop = threading.Event()

    def restart() -> None:  # the first server ends on its own; a new one comes up a moment later
        servers[0].wait(timeout=20)
        if not stop.wait(0.3):
            second = serve(port, 6.0)  # None if it never listened: the run then fails to reconnect
            if second is not None:
                servers.append(second)

    helper = threading.Thread(target=restart, daemon=True)
    helper.start()
    try:
        rc = main(["run", str(model), "--source", f"http://127.0.0.1:{port}", "--no-display",
                   "--output", str(tmp_path / "out"), "--max-frames", "24", "--reconnect", "4", "--quiet"])
    finally:
        stop.set()
        helper.join(timeout=25)
        for proc in servers:
            proc.kill()
            proc.wait(timeout=10)
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "reconnected" in err  # the second server's frames were read after the first one ended
    assert "24 frames in" in out and "dropped" in out and "latency p50" in out
    assert len(list((tmp_path / "out").iterdir())) == 24
