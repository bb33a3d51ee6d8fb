"""Four live streams, one model (issue 21): ffmpeg serves four MPEG-TS streams over HTTP on
127.0.0.1, ``mrcnn-edge run`` reads them with one batch-4 model; one server is frozen (SIGSTOP:
the connection stays open and no byte comes, as a hung camera does) and one is killed (a camera
that dies). The others must keep running; the frozen one comes back; the dead one ends its own
recording, kept. Loopback only; every process is killed at the end.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

from media_tools import free_port, needs_ffmpeg, serve_or_fail

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.slow, needs_ffmpeg]

MODEL_S = 0.05   # per batch of 4: a little slower than the 25 fps streams
STALL_S = 3.0
SIZES = ["160x120", "128x96", "96x128", "200x100"]


def _written(folder) -> list[float]:
    """Write times of the frames of an image-folder output, in order."""
    return sorted(p.stat().st_mtime for p in folder.iterdir())


def _recording(tmp_path) -> list:
    """The hidden folders of the outputs being written (PendingOutput's ``.name.*.part``)."""
    return [p for p in tmp_path.iterdir() if p.name.startswith(".") and ".part" in p.name]


def test_one_stalled_and_one_dead_stream_do_not_stop_the_others(tmp_path, monkeypatch, capsys):
    model = make_contract_model(tmp_path / "model.onnx", batch=4, mask_size=14)
    infer = Segmenter.infer
    monkeypatch.setattr(Segmenter, "infer", lambda self, work: (time.sleep(MODEL_S), infer(self, work))[1])
    ports = [free_port() for _ in SIZES]
    servers = [serve_or_fail(port, 10.0, size=size) for port, size in zip(ports, SIZES)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    outs = [tmp_path / f"cam{i}" for i in range(4)]
    window: dict[str, float] = {}

    def trouble() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until all four are recording
            parts = _recording(tmp_path)
            if len(parts) == 4 and all(len(list(p.iterdir())) >= 5 for p in parts):
                break
            time.sleep(0.05)
        window["stop"] = time.time()
        servers[2].send_signal(signal.SIGSTOP)
        servers[3].kill()
        time.sleep(STALL_S)
        window["cont"] = time.time()
        servers[2].send_signal(signal.SIGCONT)

    helper = threading.Thread(target=trouble, daemon=True)
    helper.start()
    argv = ["run", str(model), "--no-display", "--reconnect", "1"]
    for url, out in zip(urls, outs):
        argv += ["--source", url, "-o", str(out)]
    try:
        rc = main(argv)
    finally:
        helper.join(timeout=30)
        for proc in servers:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait(timeout=10)
    out, err = capsys.readouterr()
    assert "stop" in window and "cont" in window, "the streams never all started recording"
    # every stream ends for good in the end (the servers stop after 10 s): exit 3, all kept
    assert rc == 3, err
    assert f"lost stream {urls[3]}" in err and f"{urls[3]} was lost; what it recorded is kept in cam3" in err
    times = [_written(o) for o in outs]
    stop, cont = window["stop"], window["cont"]
    for i in (0, 1):  # the healthy ones: frames all through the stall and after the death
        during = [t for t in times[i] if stop < t < cont]
        gaps = [b - a for a, b in zip(times[i], times[i][1:])]
        assert len(during) > 10 * STALL_S and max(gaps) < 1.0, (i, len(during), max(gaps))
        assert times[i][-1] > cont + 2.0
    # the frozen one: nothing while frozen, then back in the batch
    assert not [t for t in times[2] if stop + 1.0 < t < cont]
    assert len([t for t in times[2] if t > cont]) > 10
    # the dead one: ended there, its recording kept
    assert times[3] and times[3][-1] < stop + 2.0 < times[0][-1]
    assert "one model for 4 sources (batch 4)" in out
