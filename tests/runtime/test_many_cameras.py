"""Many sources, one model (issue 21): runtime/batcher.py through ``mrcnn-edge run`` and the Python API.

- four videos of different sizes with a batch-4 model: the model opens once, each output equals
  the single-source run of its file, each frame's detections equal the frame alone (fp32 tolerance);
- cameras (stand-in live sources): one that stalls is not waited for past the deadline, one lost
  for good ends alone, a slow model drops frames per camera, more cameras than the batch are
  served in turn with a full batch;
- bad input: files and cameras mixed, a window for several sources: one line, nothing written.

The live ffmpeg case (real streams on 127.0.0.1, one stalled with SIGSTOP and one killed) is in
tests/runtime/io/test_many_streams.py.
"""
from __future__ import annotations

import contextlib
import time

import cv2
import numpy as np
import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.runtime import segmenter as segmenter_module
from mrcnn_edge.runtime.batcher import Batcher
from mrcnn_edge.runtime.io.sources import ArraySource, SourceLost
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model, moving_squares, write_video

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZES = [(120, 160), (96, 128), (160, 120), (100, 200)]  # landscape, smaller, portrait, wide
FRAMES = 6


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return [write_video(folder / f"cam{i}.avi", moving_squares(FRAMES, hw=hw, side=hw[0] // 3, seed=i), fps=10)
            for i, hw in enumerate(SIZES)]


@pytest.fixture(scope="module")
def contract4(tmp_path_factory):
    return make_contract_model(tmp_path_factory.mktemp("c4") / "model.onnx", batch=4, mask_size=14)


def _count_opens(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = segmenter_module.open_backend

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(segmenter_module, "open_backend", counting)
    return opened


def _images(folder):
    return {p.name: cv2.imread(str(p)) for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_four_files_one_model_four_outputs_each_as_its_single_source_run(demo_onnx, videos, tmp_path, monkeypatch,
                                                                         capsys):
    """Issue 21's "done when": before, ``run`` opened the model once per source (four sessions, four
    sets of buffers) and each pipeline sent partial batches of its own frames. Now one model, full
    batches of one frame per file, and every written frame is what the file alone gives."""
    model = demo_onnx(batch=4)
    opened = _count_opens(monkeypatch)
    outs = [tmp_path / f"out{i}" for i in range(4)]
    argv = ["run", str(model), "--no-display", "-q", "--score-threshold", "0.3"]
    for video, out in zip(videos, outs):
        argv += ["--source", str(video), "-o", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert len(opened) == 1
    assert "one model for 4 sources (batch 4): 4.00 frames per inference over 6 inferences" in stdout
    for i, (video, out) in enumerate(zip(videos, outs)):
        single = tmp_path / f"single{i}"
        assert main(["run", str(model), "--source", str(video), "-o", str(single), "--no-display", "-q",
                     "--score-threshold", "0.3"]) == 0
        got, want = _images(out), _images(single)
        assert list(got) == list(want) and len(got) == FRAMES
        for name in want:
            assert got[name].shape == (*SIZES[i], 3)
            # the same detections drawn the same way; JPEG of the same pixels is the same file
            assert np.array_equal(got[name], want[name]), (video.name, name)
    assert len(opened) == 1 + 4


def test_each_frame_of_a_shared_batch_has_its_own_detections(contract4):
    """Through the Python API, six sources of six frame sizes on a batch-4 model (more sources than
    the batch: in turn): each frame's detections equal the model run on that frame alone, within
    the fp32 tolerance. The contract model's scores and masks are read from the frame's own slot of
    the batch and its boxes are scaled back through the frame's own letterbox: a frame put in the
    wrong slot, or letterboxed with another frame's size, changes them."""
    from mrcnn_edge.export.validate.compare import TOLERANCES

    tol = TOLERANCES["fp32"]
    sizes = [*SIZES, (64, 64), (150, 90)]
    frames = [list(moving_squares(3, hw=hw, side=hw[0] // 3, seed=10 + i)) for i, hw in enumerate(sizes)]
    got: dict[tuple[int, int], object] = {}
    with Segmenter.from_path(contract4, score_threshold=0.0) as seg:
        batcher = Batcher(seg, [ArraySource(f) for f in frames],
                          on_result=lambda i, frame, dets: got.__setitem__((i, frame.index), dets))
        stats = batcher.run()
        # 18 frames, least recently served first: 4+4+4+4+2
        assert (batcher.stats.inferences, batcher.stats.frames) == (5, 18)
        assert [s.frames for s in stats] == [3] * 6
        for i, source_frames in enumerate(frames):
            for j, frame in enumerate(source_frames):
                alone, shared = seg(frame), got[(i, j)]
                assert len(alone) == len(shared) > 0, (i, j)
                assert shared.masks.shape[1:] == frame.shape[:2]
                np.testing.assert_allclose(shared.boxes, alone.boxes, atol=tol["box"])
                np.testing.assert_allclose(shared.scores, alone.scores, atol=tol["score"])
                assert list(shared.class_ids) == list(alone.class_ids)
                inter = np.logical_and(shared.masks, alone.masks).sum((1, 2))
                union = np.logical_or(shared.masks, alone.masks).sum((1, 2))
                assert np.all((union == 0) | (inter >= tol["mask_iou"] * union)), (i, j)  # empty alike, or IoU


def _camera(n, every, stall_at=None, stall_s=0.0, lost_at=None, hw=(48, 64)):
    """A stand-in camera: ``n`` frames ``every`` seconds apart; it may stall once or be lost for good."""
    def frames():
        for i in range(n):
            if i == stall_at:
                time.sleep(stall_s)
            if i == lost_at:
                raise SourceLost("lost camera 3: no frames after 1 reconnect attempts; check the camera")
            time.sleep(every)
            yield np.full((*hw, 3), 40 + i % 200, np.uint8)
    return ArraySource(frames(), live=True, description="camera")


def _slow(monkeypatch, seconds):
    infer = Segmenter.infer
    monkeypatch.setattr(Segmenter, "infer", lambda self, work: (time.sleep(seconds), infer(self, work))[1])


def test_a_stalled_camera_does_not_stall_the_others_and_a_lost_one_ends_alone(contract4, monkeypatch):
    """Camera 2 stalls for 1.5 s, camera 3 is lost after 10 frames. Batches keep going out at the
    deadline with the cameras that delivered (partial batches, zero padding); the others' frames
    keep coming through the stall and after the loss; camera 2 is back in the batch once it delivers."""
    _slow(monkeypatch, 0.02)
    times: dict[int, list[float]] = {i: [] for i in range(4)}
    cams = [_camera(100, 0.03), _camera(100, 0.03, hw=(80, 60)), _camera(100, 0.03, stall_at=20, stall_s=1.5),
            _camera(100, 0.03, lost_at=10)]
    with Segmenter.from_path(contract4) as seg:
        batcher = Batcher(seg, cams, on_result=lambda i, frame, dets: times[i].append(time.perf_counter()))
        stats = batcher.run()
    assert stats[3].lost.startswith("lost camera 3") and stats[3].frames <= 10
    assert all(not s.lost for s in stats[:3])
    for i in (0, 1):  # never a gap near the stall's 1.5 s: the batch went without camera 2
        gaps = np.diff(times[i])
        assert stats[i].frames > 60 and gaps.max() < 0.5, (i, gaps.max())
    gap2 = np.diff(times[2])
    assert gap2.max() > 1.2 and stats[2].frames > 40  # it stalled, and came back into the batch
    assert times[2][-1] > times[0][0] + 3.0
    assert 1.5 < batcher.stats.fill < 4.0  # partial batches while 2 stalled and after 3 was lost
    assert batcher.stats.inferences * 4 > batcher.stats.frames


def test_a_slow_model_drops_per_camera_and_more_cameras_than_the_batch_take_turns(tmp_path, monkeypatch):
    """Five cameras on a batch-2 model slower than the cameras: every batch is full (fill 2), the
    cameras are served in turn (each gets about 2/5 of the inferences) and each camera's frames
    that the model could not take are counted as that camera's drops."""
    model = make_contract_model(tmp_path / "b2.onnx", batch=2, mask_size=14)
    _slow(monkeypatch, 0.06)
    cams = [_camera(60, 0.02) for _ in range(5)]
    with Segmenter.from_path(model) as seg:
        batcher = Batcher(seg, cams)
        stats = batcher.run()
    assert batcher.stats.fill == pytest.approx(2.0, abs=0.1)
    frames = [s.frames for s in stats]
    assert sum(frames) == batcher.stats.frames and min(frames) >= 0.7 * max(frames), frames
    for s in stats:
        assert s.dropped == s.dropped_at["capture"] > 10 and s.frames + s.dropped <= 60
        assert s.latency_ms() is not None


def test_files_and_cameras_mixed_are_one_line_and_write_nothing(videos, contract4, tmp_path, capsys):
    outs = [tmp_path / "a", tmp_path / "b"]
    rc = main(["run", str(contract4), "--source", str(videos[0]), "--source", "rtsp://127.0.0.1:9/cam",
               "-o", str(outs[0]), "-o", str(outs[1]), "--no-display"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "sources of different kinds" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_window_for_several_sources_is_one_line_and_writes_nothing(videos, contract4, tmp_path, capsys):
    rc = main(["run", str(contract4), "--source", str(videos[0]), "--source", str(videos[1]),
               "-o", str(tmp_path / "a"), "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "several --source run without a window" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_more_files_than_the_batch_are_served_in_turn(videos, tmp_path, capsys):
    """Three files on a batch-2 model: the run says how they are served, every frame of each is
    written, and the batches are full but for the last."""
    model = make_contract_model(tmp_path / "b2.onnx", batch=2, mask_size=14)
    outs = [tmp_path / f"o{i}" for i in range(3)]
    argv = ["run", str(model), "--no-display"]
    for video, out in zip(videos, outs):
        argv += ["--source", str(video), "-o", str(out)]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "3 sources, model batch 2: served in turn, 2 frames per inference" in err
    assert all(len(list(o.iterdir())) == FRAMES for o in outs)
    assert "one model for 3 sources (batch 2): 2.00 frames per inference over 9 inferences" in out


class _Keep:
    """A sink that keeps a copy of every drawn frame (the sinks are lent the drawing, not given it)."""

    description = "kept in memory"

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []

    def write(self, image, frame) -> bool:
        self.images.append(np.array(image, copy=True))
        return True


def _four_cameras_on_the_stand_in_gpu(tmp_path, monkeypatch, check_drawings: bool) -> None:
    """Four sources of four sizes on one batch-4 engine, on the stand-in cuda-python and TensorRT
    (tests/fakes): per batch, each frame is copied up once (one frame-sized copy each, of its own
    size), and the CUDA letterbox writes each straight into its slot of the engine's input (slot i
    at input + i x slot bytes); with ``check_drawings``, every drawn frame equals the CPU
    reference's drawing of that frame."""
    from fakes.gpu_stand_in import StandInGPU

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(tmp_path / "cache"))
    machine = StandInGPU.install(monkeypatch, tmp_path)
    fake = machine.cuda
    canvas = (96, 128)
    path = make_contract_model(tmp_path / "m.onnx", batch=4, canvas_hw=canvas, mask_size=28, gain=8.0,
                               boxes=[(4, 4, 60, 50), (40, 20, 120, 90)], classes=(1, 2), base_scores=(0.9, 0.8))
    sizes = [(120, 160), (240, 320), (200, 100), (90, 300)]
    frames = [list(moving_squares(2, hw=hw, side=hw[0] // 3, seed=i)) for i, hw in enumerate(sizes)]
    sinks = [[_Keep()] for _ in sizes]
    with Segmenter.from_path(machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        base = gpu.backend.on_device().device_pointer("images")
        fake.stats["htod_copies"].clear()
        fake.stats["launch_args"].clear()
        batcher = Batcher(gpu, [ArraySource(f) for f in frames], sinks)
        batcher.run()
        assert (batcher.stats.inferences, batcher.stats.frames) == (2, 8)
        smallest = min(f.nbytes for fs in frames for f in fs)
        up = sorted(c for c in fake.stats["htod_copies"] if c >= smallest)
        assert up == sorted(f.nbytes for fs in frames for f in fs), fake.stats["htod_copies"]
        slot = 3 * canvas[0] * canvas[1] * 4
        letterboxes = [args for name, _, args in fake.stats["launch_args"] if name.startswith("letterbox")]
        assert [args[-1] for args in letterboxes] == [base + i * slot for i in range(4)] * 2
        for source, (source_frames, (keep,)) in enumerate(zip(frames, sinks)):
            assert len(keep.images) == 2
            for frame, drawn in zip(source_frames, keep.images):
                if check_drawings:
                    assert np.array_equal(drawn, cpu(frame).draw(frame)), source
    assert fake.errors == []


def test_gpu_each_camera_frame_goes_up_once_into_its_slot_of_the_batch(tmp_path, monkeypatch):
    _four_cameras_on_the_stand_in_gpu(tmp_path, monkeypatch, check_drawings=False)


def test_gpu_drawings_of_a_batch_equal_the_cpu_reference(tmp_path, monkeypatch):
    _four_cameras_on_the_stand_in_gpu(tmp_path, monkeypatch, check_drawings=True)
