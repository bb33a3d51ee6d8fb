"""Segmenter end to end through ONNX Runtime on contract models: geometry, batching, thresholds,
bad frames, and the Detections API (masks, instance map, COCO, drawing)."""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CANVAS = (128, 160)
NAMES = ("__background__", "square", "disk")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("segmenter")


@pytest.fixture(scope="module")
def full_canvas(tmp):
    """One detection whose box is the whole canvas, with a fine 28x28 mask: segments bright pixels."""
    path = make_contract_model(tmp / "full.onnx", boxes=[(0, 0, CANVAS[1], CANVAS[0])], classes=[1],
                               base_scores=[0.9], mask_size=28, gain=8.0)
    with Segmenter.from_path(path, score_threshold=0.0) as seg:
        yield seg


@pytest.fixture(scope="module")
def three(tmp):
    path = make_contract_model(tmp / "three.onnx")
    with Segmenter.from_path(path, score_threshold=0.0) as seg:
        yield seg


def _square(hw, top_left, side_hw, value=255):
    frame = np.full((*hw, 3), 10, np.uint8)
    y, x = top_left
    frame[y:y + side_hw[0], x:x + side_hw[1]] = value
    truth = np.zeros(hw, bool)
    truth[y:y + side_hw[0], x:x + side_hw[1]] = True
    return frame, truth


def _iou(a, b):
    union = (a | b).sum()
    return (a & b).sum() / union if union else 1.0


@pytest.mark.parametrize("hw,top_left,side", [
    ((480, 640), (200, 240), (120, 200)),   # landscape: padding below
    ((640, 480), (100, 50), (300, 150)),    # portrait: padding on the right
    ((300, 300), (0, 0), (150, 150)),       # square frame, object in the corner
    ((256, 320), (128, 160), (128, 160)),   # exactly 2x the canvas, object in the corner
])
def test_masks_land_on_the_object_in_frame_pixels(full_canvas, hw, top_left, side):
    frame, truth = _square(hw, top_left, side)
    dets = full_canvas(frame)
    assert len(dets) == 1 and dets.frame_shape == hw
    # the reported box is the image area: the canvas box clipped to the resized image, scaled back
    assert np.allclose(dets.boxes[0], [0, 0, hw[1], hw[0]], atol=1e-3)
    iou = _iou(dets.masks[0], truth)
    print(f"{hw}: IoU with the drawn square {iou:.3f}")
    assert iou >= 0.8


def test_boxes_are_scaled_back_by_frame_over_resized(three):
    dets = three(np.zeros((480, 640, 3), np.uint8))  # resized 120x160 in the 128x160 canvas: x4
    expected = np.array([[8, 8, 88, 72], [64, 40, 152, 120], [0, 0, 40, 30]], np.float32) * 4
    assert np.array_equal(dets.boxes, expected)  # the second box is clipped at the image bottom (y 120)
    assert np.array_equal(dets.paste_boxes[1], np.array([64, 40, 152, 120], np.float32) * 4)
    assert dets.class_ids.tolist() == [1, 2, 1] and dets.class_names == ["square", "disk", "square"]
    assert np.all(np.diff(dets.scores) < 0)


@pytest.mark.parametrize("batch", [1, 2])
def test_models_of_the_contract_and_older_b_counts_give_the_same_detections(tmp, batch):
    """num_detections is [B,1] now (contract.OUTPUTS); models exported before that have [B]."""
    from mrcnn_edge.core.contract import OUTPUTS

    new = make_contract_model(tmp / f"new-b{batch}.onnx", batch=batch)
    old = make_contract_model(tmp / f"old-b{batch}.onnx", batch=batch, legacy_num_detections=True)
    frames = [_square((120, 160), (10 + 20 * i, 30), (50, 60))[0] for i in range(3)]
    with Segmenter.from_path(new, score_threshold=0.0) as a, Segmenter.from_path(old, score_threshold=0.0) as b:
        assert a.backend.outputs["num_detections"].shape == (batch, 1)
        assert b.backend.outputs["num_detections"].shape == (batch,)
        for spec in OUTPUTS:  # the test model's outputs are the contract's
            assert a.backend.outputs[spec.name].shape == spec.shape(batch, 5, 8)
            assert a.backend.outputs[spec.name].dtype == np.dtype(spec.dtype_for("fp32"))
        for x, y in zip(a.batch(frames), b.batch(frames)):
            assert len(x) == len(y) == 3
            assert np.array_equal(x.boxes, y.boxes) and np.array_equal(x.masks, y.masks)


def test_each_frame_is_converted_once(three, monkeypatch):
    """Issue 17: a frame was made BGR uint8 three times (pipeline, segmenter, draw). It is converted
    where it enters (prepare), carried in the Detections, and draw() with no argument draws on it."""
    from mrcnn_edge.runtime import detections as detections_module
    from mrcnn_edge.runtime import frames, segmenter

    calls = []
    real = frames.as_bgr8

    def counting(frame):
        calls.append(frame)
        return real(frame)

    monkeypatch.setattr(segmenter, "as_bgr8", counting)
    monkeypatch.setattr(detections_module, "as_bgr8", counting)
    gray = np.full((120, 160), 200, np.uint8)
    dets = three(gray)
    drawn = dets.draw()
    assert len(calls) == 1 and calls[0] is gray
    assert dets.frame.shape == (120, 160, 3) and (dets.frame == 200).all()
    assert np.array_equal(drawn, dets.draw(gray))  # an explicit frame is the caller's: converted again
    assert len(calls) == 2
    bgr = np.zeros((120, 160, 3), np.uint8)
    assert three(bgr).frame is bgr  # a BGR uint8 frame is kept by reference, not copied
    with pytest.raises(UserError, match="do not keep theirs"):  # made by hand, without a frame
        detections_module.Detections.empty((10, 10)).draw()


def test_score_threshold_follows_the_scores(tmp):
    path = make_contract_model(tmp / "thr.onnx")
    bright = np.full((120, 160, 3), 255, np.uint8)
    with Segmenter.from_path(path, score_threshold=0.0) as seg:
        scores = seg(bright).scores
    mid = float((scores[1] + scores[2]) / 2)
    with Segmenter.from_path(path, score_threshold=mid) as seg:
        assert len(seg(bright)) == 2
        assert len(seg(np.zeros((120, 160, 3), np.uint8))) < 2  # a dark frame scores lower
    with Segmenter.from_path(path) as seg:
        assert seg.score_threshold == 0.5
    with pytest.raises(UserError, match="score threshold"):
        Segmenter.from_path(path, score_threshold=1.5)


def test_batch_chunks_to_the_model_batch_and_pads(tmp):
    path = make_contract_model(tmp / "b2.onnx", batch=2)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=hw, dtype=np.uint8) for hw in [(100, 80, 3), (60, 200, 3), (90, 90, 3)]]
    with Segmenter.from_path(path, score_threshold=0.0) as seg:
        assert seg.spec.batch == 2
        many = seg.batch(frames)
        one_by_one = [seg(f) for f in frames]  # each a zero-padded batch of 1
    assert len(many) == 3
    for a, b, f in zip(many, one_by_one, frames):
        assert a.frame_shape == f.shape[:2]
        assert np.array_equal(a.boxes, b.boxes) and np.allclose(a.scores, b.scores)
        assert np.allclose(a.mask_probs, b.mask_probs, atol=1e-6)
    assert seg.batch([]) == []


def test_fp16_model_agrees_with_fp32(tmp):
    p32 = make_contract_model(tmp / "p32.onnx", mask_size=28)
    p16 = make_contract_model(tmp / "p16.onnx", mask_size=28, precision="fp16")
    frame, _ = _square((240, 320), (60, 100), (90, 120))
    with Segmenter.from_path(p32, score_threshold=0) as a, Segmenter.from_path(p16, score_threshold=0) as b:
        assert b.spec.input_dtype == np.float16
        da, db = a(frame), b(frame)
    assert np.allclose(da.scores, db.scores, atol=2e-3) and da.masks.any()
    for ma, mb in zip(da.masks, db.masks):
        assert _iou(ma, mb) >= 0.95


@pytest.mark.parametrize("frame", [
    np.full((120, 160), 200, np.uint8),                        # gray
    np.full((120, 160, 1), 200, np.uint8),                     # gray with a channel axis
    np.full((120, 160, 4), 200, np.uint8),                     # BGRA
    np.full((120, 160, 3), 200 * 256, np.uint16),              # 16-bit
    np.full((120, 160, 3), 200 / 255, np.float32),             # float in [0, 1]
    np.full((1, 1, 3), 200, np.uint8),                         # 1x1
    np.full((8000, 100, 3), 200, np.uint8),                    # extreme aspect
    np.full((100, 8000, 3), 200, np.uint8),
])
def test_unusual_frames_are_converted_and_segmented(three, frame):
    dets = three(frame)
    assert dets.frame_shape == frame.shape[:2] and len(dets) == 3
    h, w = frame.shape[:2]
    assert (dets.boxes[:, 0::2] <= w).all() and (dets.boxes[:, 1::2] <= h).all() and (dets.boxes >= 0).all()
    assert dets.masks.shape == (3, h, w) and dets.instance_map().shape == (h, w)
    assert dets.draw(frame).shape == (h, w, 3)


@pytest.mark.parametrize("frame", [np.zeros((0, 0, 3), np.uint8), np.zeros((10, 10, 3), np.int64),
                                   np.full((10, 10, 3), 7.0), None])
def test_bad_frames_are_refused(three, frame):
    with pytest.raises(UserError):
        three(frame)


def test_onnxruntime_pre_post_stay_on_the_cpu(tmp):
    path = make_contract_model(tmp / "cuda.onnx")
    with Segmenter.from_path(path, device="cpu") as seg:
        assert seg.ops.name == "cpu" and "pre/post on cpu" in seg.description
        assert Segmenter(seg.backend, device="cuda").ops.name == "cpu"  # ORT's I/O is host memory
        with pytest.raises(UserError, match="device must be one of"):
            Segmenter(seg.backend, device="gpu")
    with pytest.raises(UserError, match="TensorRT engines"):
        Segmenter.from_path(path, cuda_graph=True)


# -- Detections ---------------------------------------------------------------------------------
def test_detections_masks_are_lazy_and_consistent(three):
    frame, _ = _square((240, 320), (20, 20), (150, 250))
    dets = three(frame)
    assert dets._masks is None
    masks = dets.masks
    assert masks.dtype == bool and masks.shape == (3, 240, 320) and dets.masks is masks
    ids = dets.instance_map()
    assert ids.dtype == np.int32
    for i in range(len(dets)):  # a pixel carries the best-scoring detection whose mask covers it
        better = masks[:i].any(axis=0)
        assert (ids[masks[i] & ~better] == i + 1).all()
    assert ((ids > 0) == masks.any(axis=0)).all()


def test_detections_subset(three):
    dets = three(np.full((120, 160, 3), 255, np.uint8))
    top = dets[dets.scores >= dets.scores[1]]
    assert len(top) == 2 and top.class_names == dets.class_names[:2]
    assert np.array_equal(top.masks, dets.masks[:2])
    assert len(dets[[2]]) == 1 and "Detections(" in repr(dets)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' own numpy 2 warning
def test_to_coco_is_readable_by_pycocotools(three):
    mask_utils = pytest.importorskip("pycocotools.mask")
    frame, _ = _square((240, 320), (20, 20), (150, 250))
    dets = three(frame)
    results = dets.to_coco(image_id=7, category_map={1: 11, 2: 12})
    assert [r["category_id"] for r in results] == [11, 12, 11] and results[0]["image_id"] == 7
    for r, mask, box in zip(results, dets.masks, dets.boxes):
        assert np.array_equal(mask_utils.decode(r["segmentation"]).astype(bool), mask)
        assert r["bbox"] == pytest.approx([box[0], box[1], box[2] - box[0], box[3] - box[1]], abs=0.01)
        assert isinstance(r["segmentation"]["counts"], str)


def test_draw_colours_masked_pixels_and_leaves_the_rest(three):
    frame = np.full((240, 320, 3), 255, np.uint8)
    dets = three(frame)
    out = dets.draw(frame, labels=False, boxes=False)
    ids = dets.instance_map()
    assert ids.any() and (out[ids == 0] == frame[ids == 0]).all() and (out[ids > 0] != 255).any()
    labelled = dets.draw(frame)
    assert labelled.shape == frame.shape and (labelled != out).any() and (frame == 255).all()
    with pytest.raises(UserError, match="draw"):
        dets.draw(np.zeros((10, 10, 3), np.uint8))


def test_empty_detections_behave(three):
    dets = three(np.zeros((50, 60, 3), np.uint8))[[]]
    assert len(dets) == 0 and dets.masks.shape == (0, 50, 60) and not dets.instance_map().any()
    assert dets.to_coco(1) == [] and dets.draw(np.zeros((50, 60, 3), np.uint8)).shape == (50, 60, 3)


# -- the GPU branch (CudaOps) on the stand-in cuda-python: it must equal the CPU branch -----------
@pytest.fixture(scope="module")
def fake_dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("fake-cuda"), tmp_path_factory.mktemp("kernel-cache")


def _install_fake(fake_dirs, monkeypatch, **kwargs):
    """The stand-in GPU: the real TrtBackend runs engines of the stand-in TensorRT on it."""
    from fakes.gpu_stand_in import StandInGPU

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(fake_dirs[1]))
    return StandInGPU.install(monkeypatch, fake_dirs[0], **kwargs)


def _same(a, b, frame):
    assert a.frame_shape == b.frame_shape and len(a) == len(b) > 0
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.instance_map(), b.instance_map())
    assert np.array_equal(a.draw(frame), b.draw(frame))


@pytest.mark.parametrize("batch,precision", [(1, "fp32"), (2, "fp32"), (2, "fp16")])
def test_gpu_branch_equals_cpu_branch(tmp, fake_dirs, monkeypatch, batch, precision):
    gpu_machine = _install_fake(fake_dirs, monkeypatch)
    fake = gpu_machine.cuda
    path = make_contract_model(tmp / f"gpu-b{batch}-{precision}.onnx", batch=batch, mask_size=28,
                               precision=precision)
    engine = gpu_machine.engine_for(path)
    rng = np.random.default_rng(batch)
    frames = [rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8) for hw in [(240, 320), (97, 61), (50, 300)]]
    frames[0][60:180, 80:240] = 255  # something to segment
    with Segmenter.from_path(engine, score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        assert gpu.ops.name == "cuda" and cpu.ops.name == "cpu" and gpu.backend.name == "tensorrt"
        for a, b, f in zip(gpu.batch(frames), cpu.batch(frames), frames):  # with batch 2: a padded partial batch
            _same(a, b, f)
        _same(gpu(frames[1]), cpu(frames[1]), frames[1])
    kernel = "letterbox_f16" if precision == "fp16" else "letterbox_f32"
    assert fake.stats["launches"][kernel] == len(frames) + 1  # one per frame: the batches and the single call
    assert fake.errors == []


def test_detections_outlive_their_segmenter_and_close_is_once(tmp, fake_dirs, monkeypatch):
    """Issue 9 item 12: ``with ... as seg: d = seg(f)`` then ``d.draw(f)`` launched on destroyed
    streams and unloaded modules; a second close destroyed them twice."""
    gpu_machine = _install_fake(fake_dirs, monkeypatch)
    fake = gpu_machine.cuda
    path = make_contract_model(tmp / "gpu-close.onnx", mask_size=28)
    frame, _ = _square((240, 320), (60, 100), (90, 120))
    with Segmenter.from_path(gpu_machine.engine_for(path), score_threshold=0.0, device="cuda") as seg:
        dets = seg(frame)
    seg.close()
    with Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        _same(dets, cpu(frame), frame)  # pasted, mapped and drawn after the close: on the CPU
    assert fake.errors == [] and fake.live_device_bytes() == 0 and not fake.streams
    with pytest.raises(RuntimeError, match="closed"):
        seg(frame)


def test_gpu_branch_on_device_1_from_a_worker_thread(tmp, fake_dirs, monkeypatch):
    """Issue 9 item 14: the ops must follow the backend's device, in every thread."""
    import threading

    from mrcnn_edge.runtime.backends.trt import TrtBackend

    gpu_machine = _install_fake(fake_dirs, monkeypatch, devices=((8, 7), (8, 7)))
    fake = gpu_machine.cuda
    path = make_contract_model(tmp / "gpu-dev1.onnx", mask_size=28)
    frame, _ = _square((120, 200), (30, 40), (60, 100))
    got = {}
    with Segmenter(TrtBackend(gpu_machine.engine_for(path), device_id=1), score_threshold=0.0, device="cuda") as seg:
        def worker():
            try:
                d = seg(frame)
                got["dets"], got["drawn"] = d, d.draw(frame)
            except Exception as exc:  # noqa: BLE001 - reported below
                got["error"] = exc

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert "error" not in got, got.get("error")
        assert fake.live_device_bytes(0) == 0 and all(s.device == 1 for s in fake.streams)
    with Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        _same(got["dets"], cpu(frame), frame)
        assert np.array_equal(got["drawn"], cpu(frame).draw(frame))
    assert fake.errors == []


def test_close_waits_for_a_stage_running_in_another_thread(tmp, monkeypatch):
    """Issue 9 item 15: closing freed the backend under an infer still running in a worker."""
    import threading

    path = make_contract_model(tmp / "close-wait.onnx")
    seg = Segmenter.from_path(path)
    release, started, events = threading.Event(), threading.Event(), []
    infer, close = seg.backend.infer, seg.backend.close

    def hanging_infer(feed):
        started.set()
        release.wait(30)
        events.append("infer returned")
        return infer(feed)

    monkeypatch.setattr(seg.backend, "infer", hanging_infer)
    monkeypatch.setattr(seg.backend, "close", lambda: (events.append("backend closed"), close()))
    got = []
    worker = threading.Thread(target=lambda: got.append(seg(np.zeros((60, 80, 3), np.uint8))))
    worker.start()
    assert started.wait(30)
    closer = threading.Thread(target=seg.close)
    closer.start()
    closer.join(0.5)  # long enough for a close that does not wait to finish
    release.set()
    worker.join(30)
    closer.join(30)
    assert events == ["infer returned", "backend closed"]
    assert len(got) == 1 and got[0].frame_shape == (60, 80)  # the call that was running finished


@pytest.mark.parametrize("integrated,captured", [(False, False), (True, False), (True, True)],
                         ids=["discrete", "integrated", "integrated-captured"])
def test_gpu_draw_sees_edits_made_after_segmenting(tmp, fake_dirs, monkeypatch, integrated, captured):
    """Issue 18 item 5: an overlay (a privacy mask, a caption) drawn on the frame between seg(frame)
    and draw(frame) vanished on TensorRT only: draw() rendered the copy uploaded for inference,
    chosen by an identity check. It must draw the frame as it is, like the CPU reference."""
    gpu_machine = _install_fake(fake_dirs, monkeypatch, integrated=integrated)
    path = make_contract_model(tmp / "gpu-edits.onnx", mask_size=28)
    picture, _ = _square((240, 320), (60, 100), (90, 120))
    with Segmenter.from_path(gpu_machine.engine_for(path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        want_plain = cpu(picture).draw(picture)
        frame = picture.copy()
        if captured:
            frame = gpu.frame_buffer(picture.shape)
            frame[...] = picture
        dets = gpu(frame)
        assert np.array_equal(dets.draw(frame), want_plain)  # unedited: drawn from the device copy
        uploads = gpu_machine.cuda.stats["htod_copies"][:]
        frame[100:140, 20:300] = (0, 0, 255)  # an overlay drawn before draw()
        edited = frame.copy()
        ref = cpu(picture)  # the detections are those of the unedited frame, on both sides
        assert np.array_equal(dets.draw(frame), ref.draw(edited))
        assert np.array_equal(dets.draw(), ref.draw(edited))  # the frame it keeps, as it is now
        new = gpu_machine.cuda.stats["htod_copies"][len(uploads):]
        # the edited frame went up again only where the device had a copy of its own (discrete)
        assert [c for c in new if c >= picture.nbytes] == ([picture.nbytes] if not integrated else [])
    assert gpu_machine.cuda.errors == []


def test_frames_lent_by_the_gpu_path_are_never_reused_under_their_holder(tmp, fake_dirs, monkeypatch):
    """Issue 18 item 8: the captured frame and the drawn frame handed to the sinks are the device's
    own memory, lent without a copy; holding them (a slow sink) must keep their pixels: the slot or
    buffer is only reused once every view of it is gone, and past the ring the GPU path copies."""
    from mrcnn_edge.runtime.backends.trt import TrtBackend

    gpu_machine = _install_fake(fake_dirs, monkeypatch, integrated=True)
    path = make_contract_model(tmp / "gpu-lent.onnx", mask_size=28)
    pictures = [_square((120, 160), (10 + 5 * i, 20), (60, 70))[0] for i in range(12)]
    held = []
    engine = TrtBackend(gpu_machine.engine_for(path))
    with Segmenter(engine, score_threshold=0.0, device="cuda", batches_in_flight=2) as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        for picture in pictures:  # more than the ring's 2 slots and 4 lent drawings, all held
            frame = gpu.frame_buffer(picture.shape)
            if frame is None:  # every slot holds a frame somebody keeps: read into our own array
                frame = np.empty_like(picture)
            frame[...] = picture
            dets = gpu(frame)
            held.append((frame, dets.draw(), picture))
        assert sum(gpu.frame_buffer((120, 160, 3)) is None for _ in range(3)) == 3  # nothing free to lend
        for frame, drawn, picture in held:
            assert np.array_equal(frame, picture)
            assert np.array_equal(drawn, cpu(picture).draw(picture))
        captured = sum(any(s.holds(f) for s in gpu.ops.slots) for f, _, _ in held)
        assert captured == 2  # the ring lent what it had, then the frames were read elsewhere
        held.clear()  # the sinks are done: everything can be lent again
        assert gpu.frame_buffer((120, 160, 3)) is not None
    assert gpu_machine.cuda.errors == []
