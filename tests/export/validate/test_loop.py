"""The comparator loop that validate and benchmark share, and the runner table they look runners up in.

Real runners throughout: the runtime's ONNX Runtime backend on contract test models (known boxes,
masks that follow the pixels) and the torch runners on a small random-weight model.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the contract test models need the onnx package")
pytest.importorskip("onnxruntime", reason="the loop runs ONNX Runtime here")

from mrcnn_edge.core.contract import OUTPUT_SPECS, num_detections_of  # noqa: E402 - after the skips
from mrcnn_edge.core.errors import UserError  # noqa: E402
from mrcnn_edge.export.validate.loop import Pass, feed_for, run_passes, step  # noqa: E402
from mrcnn_edge.export.validate.runners import RUNNERS, open_runner, reference_runner  # noqa: E402
from mrcnn_edge.runtime.testing import IMAGENET_MEAN, IMAGENET_STD, make_contract_model  # noqa: E402

CANVAS = (64, 64)
# the second box reaches past x=32: in a tall 40x20 frame (resized to 64x32) it ends in the padding
BOXES = ((4.0, 4.0, 28.0, 30.0), (10.0, 10.0, 50.0, 40.0))


def _frames() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    tall = rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)
    tall[:, :, :] = np.maximum(tall, 170)  # bright: the contract model's masks are high over it
    return [tall, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)]


def _model(tmp_path, name: str = "m.onnx", **kw):
    kw.setdefault("canvas_hw", CANVAS)
    kw.setdefault("boxes", BOXES)
    kw.setdefault("classes", (1, 2))
    kw.setdefault("base_scores", (0.9, 0.8))
    return make_contract_model(tmp_path / name, **kw)


def test_frame_detections_of_the_loop_are_the_runtimes(tmp_path):
    """The loop's frame-pixel detections and pasted masks equal what the runtime's Segmenter returns
    for each frame (a partial last batch included), and a box reaching into the padding is reported
    clipped but pastes its mask with the unclipped box."""
    from mrcnn_edge.runtime.segmenter import Segmenter

    path = _model(tmp_path, batch=2)
    frames = _frames()
    with open_runner("onnxruntime", path, device="cpu") as runner:
        got = [step(runner, frames[i:i + 2], IMAGENET_MEAN, IMAGENET_STD, frame=True, paste=True) for i in (0, 2)]
    rows = [r for s in got for r in s.frame]
    masks = [m for s in got for m in s.masks]
    assert len(rows) == len(masks) == 3
    assert rows[0].boxes[1, 2] == pytest.approx(20.0) and rows[0].paste_boxes[1, 2] > 20.0  # clipped vs paste box
    with Segmenter.from_path(path, backend="onnxruntime", score_threshold=0.0, device="cpu") as seg:
        for frame, r, m in zip(frames, rows, masks):
            want = seg(frame)
            np.testing.assert_array_equal(r.boxes, want.boxes)
            np.testing.assert_array_equal(r.scores, want.scores)
            np.testing.assert_array_equal(r.classes, want.class_ids)
            assert m.shape == (len(want.boxes), *frame.shape[:2]) and m.any()
            np.testing.assert_array_equal(m, want.masks)
    assert set(got[0].ms) == {"pre", "infer", "post"} and all(v >= 0 for v in got[0].ms.values())


def test_canvas_detections_are_every_row_the_graph_returned(tmp_path):
    path = _model(tmp_path)
    with open_runner("onnxruntime", path, device="cpu") as runner:
        s = step(runner, [_frames()[1]], IMAGENET_MEAN, IMAGENET_STD)
    (rows,) = s.canvas
    np.testing.assert_array_equal(rows.boxes, np.asarray(BOXES, np.float32))  # canvas pixels, as the model gave them
    assert rows.classes.tolist() == [1, 2] and rows.masks.shape == (2, 8, 8) and s.frame == []


def test_feed_follows_the_runners_input_dtype_and_normalisation(tmp_path):
    frame = _frames()[1]  # fills the canvas: no resize, the fed pixels are the frame's
    with open_runner("onnxruntime", _model(tmp_path, "in.onnx", metadata={"input_normalization": "in_graph"}),
                     device="cpu") as runner:
        feed, _ = feed_for(runner, [frame], IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_array_equal(feed["images"][0], frame[:, :, ::-1].transpose(2, 0, 1).astype(np.float32))
    with open_runner("onnxruntime", _model(tmp_path, "h.onnx", precision="fp16"), device="cpu") as runner:
        feed, _ = feed_for(runner, [frame], IMAGENET_MEAN, IMAGENET_STD)
    assert feed["images"].dtype == np.float16
    want = ((frame[0, 0, ::-1] / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)).astype(np.float16)
    np.testing.assert_allclose(feed["images"][0, :, 0, 0].astype(np.float32), want.astype(np.float32), atol=2e-3)


def test_passes_of_one_runner_with_the_same_feed_run_it_once(tmp_path, monkeypatch):
    path = _model(tmp_path, batch=2)
    with open_runner("onnxruntime", path, device="cpu") as runner:
        calls = []
        real = runner.infer
        monkeypatch.setattr(runner, "infer", lambda feed: calls.append(1) or real(feed))
        results, boxes = run_passes([Pass("a", runner, frame=True), Pass("b", runner)], _frames(),
                                    IMAGENET_MEAN, IMAGENET_STD)
    assert len(calls) == 2  # two batches, one inference each
    assert len(boxes) == 3 and [b.frame_h for b in boxes] == [40, 64, 30]
    assert len(results["a"].canvas) == len(results["b"].canvas) == len(results["a"].frame) == 3
    assert results["b"].frame == []
    np.testing.assert_array_equal(results["a"].canvas[2].masks, results["b"].canvas[2].masks)


def test_torch_runners_emit_the_contracts_outputs():
    """torchvision and EdgeMaskRCNN eager: the contract's shapes and dtypes, num_detections [B,1],
    rows past it padded (class -1); torchvision given the canvas as image size clips where the graph does."""
    torch = pytest.importorskip("torch")
    from mrcnn_edge.export.onnx_export import ExportOptions
    from mrcnn_edge.export.validate.runners import TorchSource
    from mrcnn_edge.model.checkpoint import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(arch="mobilenet_v3_large_fpn", num_classes=3)
    model = build_model(cfg).eval()
    model.roi_heads.score_thresh = 0.0  # random weights score low: keep rows to look at
    model.roi_heads.detections_per_img = 10
    source = TorchSource(model, cfg, "random", ExportOptions(input_size=(64, 64), batch=2, max_detections=10,
                                                             score_threshold=0.0))
    frames = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    for name in ("torchvision", "edge"):
        with open_runner(name, source) as runner:
            feed, _ = feed_for(runner, frames, cfg.image_mean, cfg.image_std)
            out = runner.infer(feed)
            if name == "torchvision":  # the image region to clip to, or the canvas; a padding slot the canvas
                tall = frames[0][:, :32]
                assert feed_for(runner, [tall], cfg.image_mean, cfg.image_std)[0]["image_sizes"].tolist() == [[64, 32], [64, 64]]
                assert feed_for(runner, [tall], cfg.image_mean, cfg.image_std, "canvas")[0]["image_sizes"].tolist() == [[64, 64]] * 2
        for key, spec in OUTPUT_SPECS.items():
            assert out[key].shape == spec.shape(2, 10, 28) and out[key].dtype == np.dtype(spec.dtype), (name, key)
        counts = num_detections_of(out["num_detections"])
        assert any(counts), name
        for b, n in enumerate(counts):
            assert (out["classes"][b, :n] > 0).all() and (out["classes"][b, n:] == -1).all(), name


def test_the_runner_table_names_every_backend_and_the_validation_reference():
    from mrcnn_edge.runtime.backends import BACKENDS

    assert [e.name for e in RUNNERS.values() if e.takes == "model"] == list(BACKENDS)
    assert [e.name for e in RUNNERS.values() if e.takes == "checkpoint"] == ["torchvision", "edge"]
    entry, options = reference_runner("m.onnx")
    assert (entry.name, entry.label, options) == ("onnxruntime", "onnx", {"device": "cpu"})
    assert reference_runner("m.engine")[0].name == "tensorrt"
    with pytest.raises(UserError, match="cannot validate m.pt"):
        reference_runner("m.pt")
    with pytest.raises(UserError, match="unknown runner 'gpu'"):
        open_runner("gpu", "m.onnx")
    with pytest.raises(UserError, match="not found"):
        open_runner("onnxruntime", "no/such/model.onnx")
