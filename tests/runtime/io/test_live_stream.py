"""A live network stream as users have it (issue 11): ffmpeg serves MPEG-TS over HTTP on 127.0.0.1,
``mrcnn-edge run`` reads it with a model slower than the stream, the server stops and comes back.

Checks: frames are dropped (and counted) rather than queued; ``run`` reconnects after the server
restarts and goes on; latency is reported. Loopback only; every process is killed at the end.
The model is slowed honestly: the contract model's ``Segmenter.infer`` sleeps before running it.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
FFMPEG = shutil.which("ffmpeg")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(FFMPEG is None, reason="needs ffmpeg (apt-get install -y ffmpeg)")]

MODEL_S = 0.15  # per frame: the stream runs at 25 fps, 0.04 s a frame


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``, read from /proc/net/tcp: a probe connection
    would be the one client that ``-listen 1`` serves."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in table.readlines()[1:]))


def _serve(port: int, seconds: float) -> subprocess.Popen:
    """ffmpeg serving one client a synthetic 25 fps stream in real time (-re) for ``seconds``,
    returned once it listens (a loaded machine can take seconds to start it)."""
    cmd = [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
           "-i", f"testsrc2=size=160x120:rate=25:duration={seconds}", "-c:v", "mpeg2video", "-q:v", "5",
           "-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        if _listening(port):
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail("ffmpeg did not listen on 127.0.0.1 within 15 s")


def test_run_on_a_live_stream_drops_frames_and_reconnects(tmp_path, monkeypatch, capsys):
    model = make_contract_model(tmp_path / "model.onnx", mask_size=14)
    infer = Segmenter.infer
    monkeypatch.setattr(Segmenter, "infer", lambda self, work: (time.sleep(MODEL_S), infer(self, work))[1])
    port = _free_port()
    servers: list[subprocess.Popen] = [_serve(port, 2.0)]
    stop = threading.Event()

    def restart() -> None:  # the first server ends on its own; a new one comes up a moment later
        servers[0].wait(timeout=20)
        if not stop.wait(0.3):
            servers.append(_serve(port, 6.0))

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
