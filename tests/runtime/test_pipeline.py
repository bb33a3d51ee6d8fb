"""The real-time pipeline and the ``run`` command on synthetic videos through ONNX Runtime (CPU)."""
from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np
import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.io import sources
from mrcnn_edge.runtime.pipeline import LatestSlot, Pipeline
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.io.sinks import Sink
from mrcnn_edge.runtime.io.sources import ArraySource, Source
from mrcnn_edge.runtime.testing import make_contract_model, moving_squares, write_video

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp("pipeline") / "model.onnx", mask_size=14)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "squares.avi", moving_squares(24, hw=(120, 160)), fps=24)


class Recorder(Sink):
    def __init__(self, stop_after=None):
        self.frames, self.images, self.stop_after = [], [], stop_after

    def write(self, image, frame):
        self.frames.append(frame.index)
        self.images.append(image)
        return self.stop_after is None or len(self.frames) < self.stop_after


class Camera(Source):
    """A live 500 fps camera of ``n`` grey frames; ``sizes``: the frame size changes every 10 frames."""

    live, description = True, "fake camera"

    def __init__(self, n, sizes=((60, 80),)):
        self.i, self.n, self.sizes = 0, n, sizes

    def read(self):
        if self.i >= self.n:
            return None
        time.sleep(0.002)
        hw = self.sizes[(self.i // 10) % len(self.sizes)]
        self.i += 1
        return sources.Frame(self.i - 1, np.full((*hw, 3), 50, np.uint8), f"f{self.i}")


def _marked(n, hw=(60, 80)):
    """Frames whose first pixel carries their number."""
    frames = [np.full((*hw, 3), 40, np.uint8) for _ in range(n)]
    for i, f in enumerate(frames):
        f[0, 0, 0] = i
    return frames


# -- Pipeline -------------------------------------------------------------------------------------
def test_files_process_every_frame_in_order(model):
    sink = Recorder()
    with Segmenter.from_path(model, score_threshold=0.0) as seg:
        stats = Pipeline(seg, ArraySource(_marked(30)), [sink], queue_size=1).run()
    assert sink.frames == list(range(30)) and stats.frames == 30 and stats.dropped == 0
    # rendered frames came back: each one the source frame with the detections drawn on it
    assert len(sink.images) == 30
    assert all(img is not None and img.shape == (60, 80, 3) and (img != 40).any() for img in sink.images)
    medians = stats.median_ms()
    assert {"capture", "pre", "infer", "post", "render", "write"} <= set(medians)
    assert "30 frames in" in stats.summary() and "infer" in stats.summary()


def test_live_source_drops_frames_when_inference_is_slow(model):
    sink = Recorder()
    with Segmenter.from_path(model) as seg:
        infer = seg.infer
        seg.infer = lambda work: (time.sleep(0.02), infer(work))[1]  # a 50 fps model
        stats = Pipeline(seg, Camera(150), [sink]).run()
    assert stats.dropped > 0 and 0 < stats.frames < 150
    assert stats.frames + stats.dropped <= 150
    assert sink.frames == sorted(sink.frames)  # newest frame wins, never an older one after a newer


def test_live_boundaries_are_latest_frame_slots_and_latency_is_reported(model):
    """Issue 11: with a live source a frame must not wait in a queue behind older ones at any
    boundary (pre -> infer included): a slow model makes frames drop there too, counted per
    boundary; every written frame has a capture-to-sink latency, reported as p50/p95."""
    sink = Recorder()
    with Segmenter.from_path(model) as seg:
        infer, prepare = seg.infer, seg.prepare
        seg.infer = lambda work: (time.sleep(0.03), infer(work))[1]      # the model is the bottleneck
        seg.prepare = lambda frames: (time.sleep(0.01), prepare(frames))[1]  # pre faster than it
        stats = Pipeline(seg, Camera(120), [sink]).run()
    assert stats.dropped_at["pre"] > 0  # a queue there would have kept them, waiting
    assert stats.dropped == sum(stats.dropped_at.values())
    assert stats.frames + stats.dropped + 1 >= 120 >= stats.frames + stats.dropped - 1
    assert len(stats.latency) == stats.frames and stats.latency_ms() is not None
    assert "latency p50" in stats.summary() and "p95" in stats.summary()


def test_a_sink_that_cannot_keep_up_and_new_frame_sizes_mid_stream(model):
    """Issue 11, bad input: on a live source a slow sink makes frames drop at its boundary
    (counted there, never queued), and frames that change size mid-stream are segmented and
    drawn at their own size."""
    sizes = [(60, 80), (120, 160), (90, 200)]

    class SlowSink(Recorder):
        def write(self, image, frame):
            time.sleep(0.03)  # a display or network sink slower than everything before it
            self.shapes.append((image.shape, frame.image.shape))
            return super().write(image, frame)

    sink = SlowSink()
    sink.shapes = []
    with Segmenter.from_path(model) as seg:
        stats = Pipeline(seg, Camera(90, sizes), [sink]).run()
    assert stats.dropped_at["post"] > 0  # dropped in front of the sink, counted there
    assert stats.dropped == sum(stats.dropped_at.values()) and stats.frames == len(sink.frames)
    assert stats.frames + stats.dropped + 1 >= 90 >= stats.frames + stats.dropped - 1
    assert all(drawn == shot for drawn, shot in sink.shapes)
    assert len({shot for _, shot in sink.shapes}) >= 2  # sizes did change among the written frames


def test_latest_slot_keeps_the_newest_and_the_end_never_replaces_a_frame():
    from mrcnn_edge.runtime.pipeline import _END

    slot = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get() == 4 and slot.dropped == 4
    slot.put(5)
    slot.put(_END)
    assert slot.get() == 5 and slot.get() is _END and slot.get() is _END and slot.dropped == 4


def test_bad_frames_mid_stream_are_skipped_with_a_warning(model, caplog):
    frames = _marked(6)
    frames[2] = np.zeros((0, 0, 3), np.uint8)
    frames[4] = None
    sink = Recorder()
    with Segmenter.from_path(model) as seg, caplog.at_level(logging.WARNING):
        stats = Pipeline(seg, ArraySource(frames), [sink]).run()
    assert sink.frames == [0, 1, 3, 5] and stats.skipped == 2
    assert "skipping frame 2" in caplog.text and "empty frame" in caplog.text and "skipping frame 4" in caplog.text


def test_max_frames_and_sink_stop(model):
    with Segmenter.from_path(model) as seg:
        sink = Recorder()
        assert Pipeline(seg, ArraySource(_marked(20)), [sink], max_frames=5).run().frames == 5
        assert sink.frames == list(range(5))
        stopper = Recorder(stop_after=3)  # a window's q key
        assert Pipeline(seg, ArraySource(_marked(20)), [stopper]).run().frames == 3


def test_batched_model_groups_file_frames(tmp_path):
    path = make_contract_model(tmp_path / "b3.onnx", batch=3)
    sink = Recorder()
    with Segmenter.from_path(path) as seg:
        stats = Pipeline(seg, ArraySource(_marked(7)), [sink]).run()
    assert sink.frames == list(range(7)) and len(stats.samples["infer"]) == 3  # 3 + 3 + 1 (padded)


def test_an_error_in_a_stage_stops_the_pipeline_and_is_raised(model):
    def frames():
        yield from _marked(3)
        raise UserError("lost camera 0: no frames after 5 reconnect attempts")

    with Segmenter.from_path(model) as seg:
        with pytest.raises(UserError, match="lost camera 0"):
            Pipeline(seg, ArraySource(frames()), [Recorder()]).run()
    assert not [t for t in threading.enumerate() if t.name.startswith("mrcnn-edge-")]


def test_progress_lines_for_files(model):
    lines = []
    with Segmenter.from_path(model) as seg:
        Pipeline(seg, ArraySource(_marked(5)), [], progress=lines.append, progress_every=0).run()
    assert lines and lines[-1].startswith("[5/5 100%]") and "fps" in lines[-1] and "infer" in lines[-1]


def test_file_sources_report_service_time_not_queueing(model):
    """Issue 18 item 6: from a file every frame waits behind the ones read before it, so the time
    from capture to output grows with the queues (about 7 model times measured) and says nothing
    of speed. The service time excludes the waits: near one model time here."""
    model_s = 0.04
    with Segmenter.from_path(model) as seg:
        infer = seg.backend.infer
        seg.backend.infer = lambda feed: (time.sleep(model_s), infer(feed))[1]  # inside the infer stage's clock
        stats = Pipeline(seg, ArraySource(_marked(20)), [Recorder()]).run()
    assert not stats.live and len(stats.service) == 20 and not stats.latency
    p50, p95 = stats.service_ms()
    assert 1000 * model_s <= p50 < 1000 * model_s * 2.5  # queued, a frame takes several model times
    assert "service time p50" in stats.summary() and "latency" not in stats.summary()


def test_frames_are_converted_once_by_the_segmenter(model, monkeypatch):
    """Issue 17: as_bgr8 ran in the pipeline and again in Segmenter.prepare. The pipeline now leaves
    it to the segmenter; a gray frame is still converted (and drawn in colour) once."""
    from mrcnn_edge.runtime import frames as frames_module, pipeline as pipeline_module, segmenter as segmenter_module

    calls = []

    def counting(frame):
        calls.append(1)
        return frames_module.as_bgr8(frame)

    monkeypatch.setattr(segmenter_module, "as_bgr8", counting)
    monkeypatch.setattr(pipeline_module, "as_bgr8", counting, raising=False)
    gray = [np.full((60, 80), 90, np.uint8) for _ in range(4)]
    sink = Recorder()
    with Segmenter.from_path(model) as seg:
        assert Pipeline(seg, ArraySource(gray), [sink]).run().frames == 4
    assert len(calls) == 4
    assert all(img.shape == (60, 80, 3) for img in sink.images)


def test_a_bad_frame_in_a_batch_skips_only_that_frame(tmp_path, caplog):
    path = make_contract_model(tmp_path / "b2.onnx", batch=2)
    frames = _marked(5)
    frames[1] = np.zeros((10, 10, 3), np.int32)  # refused by the segmenter's check
    sink = Recorder()
    with Segmenter.from_path(path) as seg, caplog.at_level(logging.WARNING):
        stats = Pipeline(seg, ArraySource(frames), [sink]).run()
    assert sink.frames == [0, 2, 3, 4] and stats.skipped == 1 and "skipping frame 1" in caplog.text


def test_a_drain_writes_the_frames_in_flight_and_a_stop_does_not(model):
    """A first Ctrl-C/SIGTERM drains: capture stops, what was captured is finished and written, in
    order. A stop without drain (a second signal) ends at once."""
    def run(drain):
        sink = Recorder()
        with Segmenter.from_path(model) as seg:
            infer = seg.infer
            seg.infer = lambda work: (time.sleep(0.02), infer(work))[1]
            pipeline = Pipeline(seg, ArraySource(_marked(60)), [sink], queue_size=2)

            class StopAtThree(Recorder):
                def write(self, image, frame):
                    if frame.index == 3:
                        pipeline.interrupt(drain=drain)
                    return True

            pipeline.sinks.append(StopAtThree())
            stats = pipeline.run()
        return sink.frames, stats

    drained, stats = run(drain=True)
    assert stats.interrupted and drained == list(range(len(drained)))
    assert 5 < len(drained) < 60  # frames queued behind frame 3 were written, capture stopped
    stopped, _ = run(drain=False)
    assert len(stopped) < len(drained)


def test_a_source_lost_for_good_ends_its_stream_without_an_error(model, caplog):
    sink = Recorder()
    with Segmenter.from_path(model) as seg, caplog.at_level(logging.WARNING):
        stats = Pipeline(seg, _lost_after(4)(), [sink]).run()
    assert stats.lost.startswith("lost stream rtsp://cam/x") and stats.frames == 4 and len(sink.frames) == 4
    assert "ending its stream, what was recorded is kept" in caplog.text


# -- the run command ------------------------------------------------------------------------------
def test_run_command_on_a_video(model, video, tmp_path, capsys):
    out = tmp_path / "out.avi"
    rc = main(["run", str(model), "--source", str(video), "--output", str(out), "--no-display",
               "--score-threshold", "0.3", "--quiet", "--backend", "onnxruntime"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "24 frames in" in captured.out and "fps" in captured.out
    # a file's frames wait in the queues: the time per frame shown is service time, labelled so
    assert "service time p50" in captured.out and "(per frame, queueing excluded)" in captured.out
    assert "latency" not in captured.out
    assert "model: model.onnx: onnxruntime (CPUExecutionProvider)" in captured.err
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 24
    ok, first = cap.read()
    original = cv2.VideoCapture(str(video)).read()[1]
    assert ok and first.shape == original.shape and np.abs(first.astype(int) - original).mean() > 1  # overlay drawn


def test_run_command_images_to_folder(model, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i, img in enumerate(moving_squares(3, hw=(90, 120))):
        cv2.imwrite(str(src / f"shot{i}.png"), img)
    (src / "shot9.png").write_bytes(b"corrupt")
    assert main(["run", str(model), "--source", str(src), "--output", str(tmp_path / "out"), "--no-display"]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shot0.jpg", "shot1.jpg", "shot2.jpg"]
    assert "mrcnn-edge: warning: skipping frame 3 (shot9): cannot read image shot9.png" in err


@pytest.mark.parametrize("argv,words", [
    (["--source", "{video}"], "--no-display"),                                 # headless, no output
    (["--source", "/no/such/video.mp4", "--no-display"], "not found"),
    (["--source", "{video}", "--no-display", "--max-frames", "0"], "--max-frames: must be at least 1"),
    (["--source", "{video}", "--no-display", "--backend", "tensorrt"], "build an engine first"),
    (["--source", "{video}", "--no-display", "--providers", "CUDAExecutionProvider"], "no CUDAExecutionProvider"),
    (["--source", "csi://0?flip=12", "--no-display"], "flip must be"),
])
def test_run_command_errors_are_one_line(model, video, capsys, monkeypatch, argv, words):
    monkeypatch.delenv("DISPLAY", raising=False)
    rc = main(["run", str(model), *[a.format(video=video) for a in argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and words in err[-1] and err[-1].startswith("mrcnn-edge: error:")


def test_run_command_refuses_an_unwritable_output_before_loading_the_model(video, tmp_path, capsys):
    """Issue 18 item 10: an output that cannot be written was reported only after the model had
    loaded (a minute for an engine on a Jetson). The model here does not even exist: the output's
    line must come first."""
    (tmp_path / "blocker").write_text("a file where a folder should be")
    out = tmp_path / "blocker" / "rec.mp4"
    rc = main(["run", str(tmp_path / "no-such-model.onnx"), "--source", str(video), "-o", str(out), "--no-display"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"mrcnn-edge: error: cannot write {out}: {tmp_path / 'blocker'} is a file, not a folder"]


def test_run_help_says_what_backend_auto_picks(capsys):
    """Issue 18 item 10: the help said auto runs .onnx with ONNX Runtime where OpenVINO ran it."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".onnx -> openvino when OpenVINO installed, an x86-64 CPU, no CUDA GPU" in text
    assert text.index(".onnx -> openvino") < text.index(".onnx -> onnxruntime")
    assert ".onnx with OpenVINO on x86 CPUs where it is installed, else ONNX Runtime" in text


def test_run_command_without_a_display_but_with_an_output_warns_and_goes_on(model, video, tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    rc = main(["run", str(model), "--source", str(video), "--output", str(tmp_path / "o.avi"), "--max-frames", "4"])
    assert rc == 0 and "continuing without a window" in capsys.readouterr().err


def _lost_after(n):
    """open_source's stand-in: a live source that gives ``n`` frames and is then lost for good."""
    def opener(*args, **kwargs):
        def frames():
            for _ in range(n):
                time.sleep(0.01)
                yield np.zeros((40, 40, 3), np.uint8)
            raise sources.SourceLost("lost stream rtsp://cam/x: no frames after 5 reconnect attempts; check the network")
        return ArraySource(frames(), live=True, description="stream rtsp://cam/x")
    return opener


def test_run_command_reports_a_lost_stream_and_keeps_what_it_recorded(model, capsys, monkeypatch, tmp_path):
    """Issue 18 item 1: a stream lost for good deleted the recording (exit 2). Now its stream ends:
    a warning, the output kept, exit 3."""
    monkeypatch.setattr(sources, "open_source", _lost_after(3))
    out = tmp_path / "frames"
    assert main(["run", str(model), "--source", "rtsp://cam/x", "--no-display", "-o", str(out), "-q"]) == 3
    captured = capsys.readouterr()
    assert "3 frames in" in captured.out and "source lost" in captured.out
    assert "check the network; ending its stream, what was recorded is kept" in captured.err
    assert "rtsp://cam/x was lost; what it recorded is kept in frames (exit 3)" in captured.err
    assert len(list(out.iterdir())) == 3


def test_run_command_a_stream_lost_before_any_frame_is_an_error(model, capsys, monkeypatch):
    monkeypatch.setattr(sources, "open_source", _lost_after(0))
    assert main(["run", str(model), "--source", "rtsp://cam/x", "--no-display"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mrcnn-edge: error: no frame of rtsp://cam/x could be processed: lost stream rtsp://cam/x: "
        "no frames after 5 reconnect attempts; check the network")


def test_a_stage_that_outlives_the_join_keeps_the_model_until_it_returns(model, monkeypatch):
    """Issue 9 item 15: after a join timeout, closing the segmenter freed its (GPU) memory while the
    infer thread was still using it. Now close() waits for the running stage."""
    release, started = threading.Event(), threading.Event()
    events = []
    seg = Segmenter.from_path(model)
    infer = seg.backend.infer
    calls = []

    def slow_infer(feed):
        calls.append(1)
        if len(calls) == 2:  # the second batch hangs until released
            started.set()
            release.wait(60)  # longer than any join timeout: the test releases it
            events.append("infer returned")
        return infer(feed)

    close = seg.backend.close
    monkeypatch.setattr(seg.backend, "infer", slow_infer)
    monkeypatch.setattr(seg.backend, "close", lambda: (events.append("backend closed"), close()))
    class StopOnceInferHangs(Recorder):
        def write(self, image, frame):
            started.wait(30)  # stop only while the second infer is running
            return False

    pipeline = Pipeline(seg, ArraySource(_marked(3)), [StopOnceInferHangs()], queue_size=1)
    pipeline.join_timeout = 0.2
    pipeline.run()
    assert started.is_set() and not release.is_set()  # run() returned with the second infer running
    closer = threading.Thread(target=seg.close)
    closer.start()
    closer.join(0.5)  # long enough for a close that does not wait to finish
    release.set()
    closer.join(30)
    assert not closer.is_alive()
    assert events == ["infer returned", "backend closed"]
