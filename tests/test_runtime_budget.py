"""The bus budget of the GPU path (issue 11), counted by the stand-in cuda-python.

Per drawn frame, host<->device traffic may be at most: the frame up (once), the drawn frame down
(once) and the compact outputs (boxes, scores, classes, num_detections, masks at M x M, and the
few bytes per detection of paste boxes, paint order and colours). Nothing else frame-sized: no
id map, no second upload of the frame, no pasted masks. The drawn frame must equal the CPU
reference's. Runs the real kernels (their host build) through the stand-in, on this machine.
"""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.runtime.segmenter import Segmenter
from mrcnn_edge.runtime.testing import make_contract_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CANVAS = (96, 128)
MASK = 28


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("budget")


def _model(dirs, detections: int):
    rng = np.random.default_rng(detections)
    x0 = rng.uniform(0, CANVAS[1] - 24, detections)
    y0 = rng.uniform(0, CANVAS[0] - 20, detections)
    boxes = np.stack([x0, y0, x0 + rng.uniform(8, 24, detections), y0 + rng.uniform(8, 20, detections)], 1)
    scores = np.sort(rng.uniform(0.55, 0.99, detections))[::-1]
    return make_contract_model(dirs / f"budget-{detections}.onnx", canvas_hw=CANVAS, mask_size=MASK,
                               boxes=boxes.tolist(), classes=[1 + i % 2 for i in range(detections)],
                               base_scores=scores.tolist(), max_detections=detections, gain=8.0)


def _frame(hw, seed):
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 120, size=(*hw, 3), dtype=np.uint8)
    frame[hw[0] // 6: hw[0] // 2, hw[1] // 5: hw[1] // 2] = 250  # bright: masks there
    return frame


@pytest.mark.parametrize("hw", [(480, 640), (1080, 1920)])
@pytest.mark.parametrize("detections", [10, 100])
def test_drawn_frame_moves_frame_up_frame_down_and_compact_outputs(dirs, monkeypatch, hw, detections):
    from fakes.fake_cuda import DeviceBackend, FakeCuda

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(dirs / "cache"))
    fake = FakeCuda.install(monkeypatch, dirs)
    path = _model(dirs, detections)
    frames = [_frame(hw, s) for s in range(2)]
    with Segmenter(DeviceBackend(fake, path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        gpu(frames[0]).draw(frames[0])  # warm-up: buffers are allocated on first use
        for key in ("htod_bytes", "dtoh_bytes"):
            fake.stats[key] = 0
        fake.stats["htod_copies"].clear()
        fake.stats["dtoh_copies"].clear()
        dets = gpu(frames[1])
        drawn = dets.draw(frames[1])
        want = cpu(frames[1]).draw(frames[1])
        assert len(dets) == detections
        assert np.array_equal(drawn, want)  # the device render is the reference's drawing
        outputs = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in gpu.backend.outputs.values())
    frame = frames[1].nbytes
    per_detection = 16 + 4 + 3  # paste box, paint order, colour
    compact = outputs + detections * per_detection
    up, down = fake.stats["htod_bytes"], fake.stats["dtoh_bytes"]
    assert up <= frame + detections * per_detection, fake.stats["htod_copies"]
    assert down <= frame + outputs, fake.stats["dtoh_copies"]
    assert up + down <= 2 * frame + compact
    # exactly one frame-sized copy each way
    assert sum(c >= frame for c in fake.stats["htod_copies"]) == 1
    assert sum(c >= frame for c in fake.stats["dtoh_copies"]) == 1
    # nothing waits inside a blocking cuda-python call on the runtime's own streams: only the
    # (stand-in) engine's stream is synchronised, as TrtBackend.execute does
    assert set(fake.stats["stream_syncs"]) <= {int(gpu.backend.stream)}
    assert fake.errors == []


def test_a_frame_that_is_not_the_uploaded_one_is_uploaded_again(dirs, monkeypatch):
    """draw() with another array (or after the slot was reused) must not draw the old frame."""
    from fakes.fake_cuda import DeviceBackend, FakeCuda

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(dirs / "cache"))
    fake = FakeCuda.install(monkeypatch, dirs)
    path = _model(dirs, 10)
    a, b = _frame((120, 160), 1), _frame((120, 160), 2)
    with Segmenter(DeviceBackend(fake, path), score_threshold=0.0, device="cuda") as gpu, \
            Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as cpu:
        dets = gpu(a)
        ref = cpu(a)
        assert np.array_equal(dets.draw(b.copy()), ref.draw(b))   # another array: its pixels
        for i in range(6):  # more frames than slots: the first detections' slot is reused
            gpu(_frame((120, 160), 10 + i))
        assert np.array_equal(dets.draw(a), ref.draw(a))
        assert np.array_equal(dets.instance_map(), ref.instance_map())
    assert fake.errors == []
