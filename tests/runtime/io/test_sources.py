"""Sources: kinds, CSI pipelines, reconnect with back-off, a source lost for good, corrupt frames."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.io import sources
from mrcnn_edge.runtime.io.sources import csi_pipeline, open_source, parse_csi
from mrcnn_edge.runtime.testing import make_contract_model, moving_squares, write_video


class FakeCapture:
    """A cv2.VideoCapture stand-in that plays a script of read() results."""

    def __init__(self, script=(), opened=True, fps=30.0, count=0):
        self.script, self.opened, self.props = list(script), opened, {cv2.CAP_PROP_FPS: fps, cv2.CAP_PROP_FRAME_COUNT: count}
        self.released = False

    def isOpened(self):
        return self.opened

    def read(self):
        return self.script.pop(0) if self.script else (False, None)

    def get(self, prop):
        return self.props.get(prop, 0)

    def release(self):
        self.released = True


def _img(v=1):
    return np.full((4, 4, 3), v, np.uint8)


class Factory:
    """capture(...) returns the next prepared FakeCapture and records the arguments."""

    def __init__(self, *caps):
        self.caps, self.calls = list(caps), []

    def __call__(self, *args):
        self.calls.append(args)
        return self.caps.pop(0) if self.caps else FakeCapture(opened=False)


@pytest.fixture
def no_wait(monkeypatch):
    """Record back-off delays instead of sleeping."""
    delays = []
    monkeypatch.setattr(sources.threading.Event, "wait", lambda self, t=None: delays.append(t) or False)
    return delays


# -- kinds ------------------------------------------------------------------------------------------
def test_source_kinds(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "clip.avi").write_bytes(b"")
    assert sources._kind("0") == "camera" and sources._kind("/dev/video2") == "camera"
    assert sources._kind("csi://0") == "csi"
    assert sources._kind("rtsp://cam.local/stream") == "stream" and sources._kind("http://x/y.mjpg") == "stream"
    assert sources._kind(str(tmp_path)) == "images" and sources._kind(str(tmp_path / "a.png")) == "images"
    assert sources._kind(str(tmp_path / "*.png")) == "images"
    assert sources._kind(str(tmp_path / "clip.avi")) == "video"
    with pytest.raises(UserError, match="not found: give a camera index"):
        sources._kind(str(tmp_path / "missing.mp4"))


def test_camera_that_cannot_open_is_one_line():
    with pytest.raises(UserError) as err:
        open_source(7, capture=Factory(FakeCapture(opened=False)))
    assert str(err.value).startswith("cannot open camera 7") and "\n" not in str(err.value)
    with pytest.raises(UserError, match="/dev/video99 not found"):
        open_source("/dev/video99")
    with pytest.raises(UserError, match="empty --source"):
        open_source("  ")


def test_video_that_cannot_open(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(UserError, match="cannot open video"):
        open_source(str(bad))


def test_stream_credentials_stay_out_of_messages():
    with pytest.raises(UserError) as err:
        open_source("rtsp://admin:secret@10.0.0.2/live", capture=Factory(FakeCapture(opened=False)))
    assert "secret" not in str(err.value) and "***@10.0.0.2" in str(err.value)


# -- CSI --------------------------------------------------------------------------------------------
def test_csi_pipeline_is_built_from_checked_parameters():
    line = csi_pipeline(**parse_csi("csi://1?width=1920&height=1080&fps=60&flip=2"))
    assert line.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1920, height=(int)1080, framerate=(fraction)60/1" in line
    assert "nvvidconv flip-method=2" in line and line.endswith("appsink drop=true max-buffers=1 sync=false")
    assert parse_csi("csi://0") == {"sensor_id": 0}


@pytest.mark.parametrize("spec,words", [
    ("csi://x", "sensor id"), ("csi://0?flip=9", "flip must be an integer in 0..7"),
    ("csi://0?width=1920;rm -rf /", "whole number"), ("csi://0?gain=3", "unknown option"),
    ("csi://0?fps=0", "fps must be"), ("csi://99", "sensor_id must be"),
])
def test_bad_csi_parameters_are_refused(spec, words):
    with pytest.raises(UserError, match=words):
        parse_csi(spec)


def test_csi_with_a_fake_capture_and_without_gstreamer(monkeypatch):
    factory = Factory(FakeCapture([(True, _img())]))
    src = open_source("csi://0?width=640&height=480", capture=factory)
    assert src.live and factory.calls[0][1] == cv2.CAP_GSTREAMER and "width=(int)640" in factory.calls[0][0]
    monkeypatch.setattr(sources, "_has_gstreamer", lambda: False)
    with pytest.raises(UserError, match="need an OpenCV built with GStreamer"):
        open_source("csi://0")


def _run_cli(argv, capsys):
    from mrcnn_edge.commands.cli import main

    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.skipif(sources._has_gstreamer(), reason="this OpenCV has GStreamer; the test needs pip's OpenCV without it")
def test_run_csi_without_gstreamer_says_exactly_what_to_do(tmp_path, capsys):
    """Through the CLI, with this machine's pip OpenCV (no GStreamer) and a working model."""
    pytest.importorskip("onnxruntime", reason="the run command's model needs ONNX Runtime")
    model = make_contract_model(tmp_path / "m.onnx")
    out = tmp_path / "out.mp4"
    code, err = _run_cli(["run", str(model), "--source", "csi://0", "--no-display", "--output", str(out)], capsys)
    installed = sources._installed_pip_opencv()
    assert code != 0 and len(err) == 1 and err[0].startswith("mrcnn-edge: error: csi:// cameras need an OpenCV built with GStreamer")
    assert installed and f"pip uninstall -y {' '.join(installed)}" in err[0]
    assert "sudo apt install nvidia-opencv" in err[0] and "--system-site-packages" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_source_is_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """The source is checked first: a model that would take long to load is not even opened."""
    from mrcnn_edge.runtime.segmenter import Segmenter

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the source was checked")
    monkeypatch.setattr(Segmenter, "from_path", must_not_load)
    for source, words in [("csi://0?gain=3", "unknown option 'gain'"), (str(tmp_path / "nope.mp4"), "not found")]:
        code, err = _run_cli(["run", "model.engine", "--source", source, "--no-display"], capsys)
        assert code == 2 and len(err) == 1 and words in err[0]
    monkeypatch.setattr(sources, "_has_gstreamer", lambda: False)
    code, err = _run_cli(["run", "model.engine", "--source", "csi://0", "--no-display"], capsys)
    assert code == 2 and len(err) == 1 and "GStreamer" in err[0]


def test_check_source_without_opening_anything(monkeypatch):
    monkeypatch.setattr(sources, "_has_gstreamer", lambda: True)
    assert sources.check_source("csi://0?width=640") == "csi" and sources.check_source("7") == "camera"
    with pytest.raises(UserError, match="empty --source"):
        sources.check_source(" ")


def test_without_opencv_the_runtime_names_what_to_install(tmp_path):
    """No cv2 at all (a Jetson venv without --system-site-packages): one line, an apt package and an extra."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['cv2'] = None\n"
            "from mrcnn_edge.commands.cli import main\n"
            f"sys.exit(main(['run', 'model.engine', '--source', {str(tmp_path)!r}, '--no-display']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == f"mrcnn-edge: error: {sources.OPENCV_MISSING}"
    assert "sudo apt install nvidia-opencv" in lines[0] and "pip install 'mrcnn-edge[opencv]'" in lines[0]
    # and code that guards the import the usual way still can
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.modules['cv2'] = None\n"
                           "try:\n    import mrcnn_edge.runtime.io.sources\nexcept ImportError as e:\n    print(type(e).__name__)"],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "OpenCVMissing", proc.stderr


# -- live sources: reconnect ------------------------------------------------------------------------
def test_live_source_reconnects_with_exponential_backoff(no_wait, caplog):
    first = FakeCapture([(True, _img(1)), (True, _img(2))])  # then stops delivering
    factory = Factory(first, FakeCapture(opened=False), FakeCapture([(False, None)]),
                      FakeCapture([(True, _img(3)), (True, _img(4))]))
    src = open_source("0", reconnect_tries=5, capture=factory)
    with caplog.at_level(logging.WARNING):
        got = [f.image[0, 0, 0] for f in [src.read() for _ in range(4)]]
    assert got == [1, 2, 3, 4] and first.released
    assert no_wait == [0.5, 1.0, 2.0]  # three tries before the one that worked
    assert "reconnecting in 0.5 s (attempt 1 of 5)" in caplog.text and "reconnected" in caplog.text


def test_live_source_gives_up_with_a_clear_message(no_wait):
    src = open_source("rtsp://cam/stream", reconnect_tries=3, capture=Factory(FakeCapture([(True, _img())])))
    assert src.read() is not None
    with pytest.raises(sources.SourceLost) as err:  # the pipeline ends this source's stream on it
        src.read()
    assert isinstance(err.value, UserError)  # one line where it is not caught
    assert str(err.value) == ("lost stream rtsp://cam/stream: no frames after 3 reconnect attempts; "
                              "check the camera, cable or network")
    assert no_wait == [0.5, 1.0, 2.0]


def test_interrupt_stops_a_reconnect_wait(monkeypatch):
    src = open_source("0", capture=Factory(FakeCapture([])))
    src.interrupt()
    assert src.read() is None


# -- files: corrupt frames --------------------------------------------------------------------------
def test_corrupt_frame_mid_video_is_reported_and_skipped(tmp_path):
    (tmp_path / "v.avi").write_bytes(b"")
    script = [(True, _img(0)), (True, _img(1)), (False, None), (True, _img(3)), (True, _img(4))]
    src = open_source(str(tmp_path / "v.avi"), capture=Factory(FakeCapture(script, count=5)))
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert frames[2].image is None and "unreadable frame" in frames[2].problem
    assert [f.image[0, 0, 0] for f in frames if f.image is not None] == [0, 1, 3, 4]
    assert not src.live and src.length == 5 and src.fps == 30.0


def test_truncated_video_ends_after_a_few_bad_reads(tmp_path):
    (tmp_path / "v.avi").write_bytes(b"")
    src = open_source(str(tmp_path / "v.avi"), capture=Factory(FakeCapture([(True, _img())], count=100)))
    frames = list(src)
    assert frames[0].image is not None and len(frames) == 1 + sources.CaptureSource.MAX_SKIPPED_IN_A_ROW


def test_real_video_file(tmp_path):
    path = write_video(tmp_path / "v.avi", moving_squares(7, hw=(48, 64)), fps=12)
    src = open_source(str(path))
    frames = list(src)
    assert len(frames) == 7 and all(f.image.shape == (48, 64, 3) for f in frames)
    assert src.length == 7 and src.fps == pytest.approx(12)


def test_image_folder_in_natural_order_with_a_corrupt_image(tmp_path):
    for i in (1, 2, 10):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), _img(i))
    (tmp_path / "img3.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    (tmp_path / "notes.txt").write_text("not an image")
    frames = list(open_source(str(tmp_path)))
    assert [f.name for f in frames] == ["img1", "img2", "img3", "img10"]
    assert frames[2].image is None and "cannot read image img3.jpg" in frames[2].problem
    assert [f.name for f in open_source(str(tmp_path / "img1*.png"))] == ["img1", "img10"]
    with pytest.raises(UserError, match="no images match"):
        open_source(str(tmp_path / "*.gif"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        open_source(str(tmp_path / "empty"))


def test_images_keep_gray_alpha_and_16_bit_for_the_segmenter(tmp_path):
    cv2.imwrite(str(tmp_path / "g16.png"), np.full((5, 6), 4000, np.uint16))
    frame = open_source(str(tmp_path / "g16.png")).read()
    assert frame.image.dtype == np.uint16 and frame.image.shape == (5, 6)
