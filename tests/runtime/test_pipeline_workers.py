"""The pipeline's inference workers: a backend that runs several inferences at once (OpenVINO's
throughput mode, ``Backend.requests`` > 1) gets as many for a file, the results go on in order;
a camera keeps one."""
from __future__ import annotations

import threading
import time

import pytest

from mrcnn_edge.runtime.io.sources import ArraySource
from mrcnn_edge.runtime.pipeline import Pipeline
from mrcnn_edge.runtime.segmenter import Segmenter
from test_pipeline import Camera, Recorder, _marked  # noqa: E402  (tests/runtime is on sys.path)

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from mrcnn_edge.runtime.testing import make_contract_model

    return make_contract_model(tmp_path_factory.mktemp("workers") / "model.onnx", mask_size=14)


def _two_workers(seg, fail_frame=None, slow=lambda frame: frame[0, 0, 0] % 2 == 0):
    """Make ``seg`` a backend with two requests in flight whose inference of the ``slow`` frames (by
    default the even ones) takes longer (a sleep, the part two calls overlap in; the model itself
    runs one call at a time: the ONNX Runtime backend's I/O binding is not for concurrent calls);
    returns the most calls seen inside at once."""
    seg.backend.requests = 2
    real, lock, serial, inside, most = seg.infer, threading.Lock(), threading.Lock(), [0], [0]

    def infer(work):
        frame = work.frames[0]
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            if frame[0, 0, 0] == fail_frame:
                raise RuntimeError(f"inference failed on frame {frame[0, 0, 0]}")
            time.sleep(0.05 if slow(frame) else 0.0)
            with serial:
                return real(work)
        finally:
            with lock:
                inside[0] -= 1

    seg.infer = infer
    return most

def test_two_inference_workers_keep_a_files_frames_in_order(model):
    """A backend that runs two inferences at once (OpenVINO's throughput mode) gets two inference
    workers for a file. Even frames take longer: without the hand-over in order, the odd frame
    after each would overtake it. The sinks see every frame in order, and both workers ran at once."""
    sink = Recorder()
    with Segmenter.from_path(model, score_threshold=0.0, backend="onnxruntime") as seg:
        most = _two_workers(seg)
        stats = Pipeline(seg, ArraySource(_marked(20)), [sink]).run()
    assert sink.frames == list(range(20)) and stats.frames == 20
    assert most[0] == 2


def test_a_live_source_keeps_one_inference_worker(model):
    """A camera's frames are taken newest-first, one at a time: one worker whatever the backend offers."""
    with Segmenter.from_path(model, score_threshold=0.0, backend="onnxruntime") as seg:
        most = _two_workers(seg)
        Pipeline(seg, Camera(30), [Recorder()]).run()
    assert most[0] == 1


def test_an_error_in_one_of_two_inference_workers_stops_the_pipeline(model):
    with Segmenter.from_path(model, score_threshold=0.0, backend="onnxruntime") as seg:
        _two_workers(seg, fail_frame=5)
        sink = Recorder()
        with pytest.raises(RuntimeError, match="frame 5"):
            Pipeline(seg, ArraySource(_marked(40)), [sink]).run()
    assert sink.frames == list(range(len(sink.frames))) and len(sink.frames) <= 5
    assert not [t for t in threading.enumerate() if t.name.startswith("mrcnn-edge-")]


def test_a_dropped_numbered_batch_counts_its_frames():
    """The pre-processing stage numbers its batches for the workers: a live slot that drops one
    still counts every frame in it (a batch-2 camera model drops two frames at a time)."""
    from mrcnn_edge.runtime.pipeline import LatestSlot

    slot = LatestSlot()
    slot.put((0, (["frame a", "frame b"], "work")))
    slot.put((1, (["frame c", "frame d"], "work")))
    assert slot.dropped == 2 and slot.get(timeout=1)[0] == 1


# -- the batcher (several sources, one model) ------------------------------------------------------
def _two_sources(n):
    """Two files of ``n`` frames; the second pixel says the source, the first the frame's number."""
    out = []
    for source in range(2):
        frames = _marked(n)
        for f in frames:
            f[0, 0, 1] = source
        out.append(frames)
    return out


def _slow_first_source(seg):
    """Two requests in flight; the first source's even frames take longer: its next frame, two
    batches on (the sources are served in turn), would overtake it without the hand-over in order."""
    return _two_workers(seg, slow=lambda frame: frame[0, 0, 1] == 0 and frame[0, 0, 0] % 2 == 0)

def test_the_batcher_gives_files_two_inference_workers_and_keeps_each_sources_order(model):
    """Several files, one batch-1 model served in turn, two requests (``--requests 2``): two batches
    in flight, and each source's sink still sees its frames in order."""
    from mrcnn_edge.runtime.batcher import Batcher

    sinks = [Recorder(), Recorder()]
    with Segmenter.from_path(model, score_threshold=0.0, backend="onnxruntime") as seg:
        most = _slow_first_source(seg)
        batcher = Batcher(seg, [ArraySource(f) for f in _two_sources(12)], [[s] for s in sinks])
        t0 = time.perf_counter()
        stats = batcher.run()
        wall = time.perf_counter() - t0
    assert [s.frames for s in sinks] == [list(range(12))] * 2 and [s.frames for s in stats] == [12, 12]
    assert most[0] == 2 and batcher.stats.inferences == 24
    # the summary's rate in all: the 24 frames over the run's time (first capture to last write)
    assert 0 < batcher.stats.elapsed <= wall
    assert f"{24 / batcher.stats.elapsed:.2f} frames per second in all" in batcher.stats.summary()


def test_the_batchers_cameras_keep_one_inference_worker(model):
    """Cameras: a batch is taken when the model is free (the newest frames), one at a time."""
    from mrcnn_edge.runtime.batcher import Batcher

    with Segmenter.from_path(model, score_threshold=0.0, backend="onnxruntime") as seg:
        most = _slow_first_source(seg)
        Batcher(seg, [Camera(20), Camera(20)], [[Recorder()], [Recorder()]]).run()
    assert most[0] == 1


def test_a_stage_that_cannot_start_stops_the_ones_started(model, monkeypatch):
    """No thread left for a new stage (``threading.Thread.start`` raises): the stages already
    started are stopped and joined, and the error is raised, instead of captures left reading."""
    from mrcnn_edge.runtime import batcher as batcher_module, pipeline as pipeline_module
    from mrcnn_edge.runtime.batcher import Batcher

    real, started = pipeline_module.start_stage, []

    def start_stage(name, *args):
        if "infer" in name:
            raise RuntimeError("can't start new thread")
        started.append(real(name, *args))
        return started[-1]

    monkeypatch.setattr(pipeline_module, "start_stage", start_stage)
    monkeypatch.setattr(batcher_module, "start_stage", start_stage)
    with Segmenter.from_path(model, score_threshold=0.0, backend="onnxruntime") as seg:
        for run in (lambda: Pipeline(seg, Camera(10**6), [Recorder()]).run(),
                    lambda: Batcher(seg, [Camera(10**6), Camera(10**6)], [[Recorder()], [Recorder()]]).run()):
            started.clear()
            with pytest.raises(RuntimeError, match="can't start new thread"):
                run()
            assert started and not [t.name for t in started if t.is_alive()]
