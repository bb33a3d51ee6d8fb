"""Export options for CPU engines and DeepStream: the mask head on the real detections only, and
mean/std folded into the graph; each equal to the static, externally normalised graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mrcnn_edge
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.export.onnx_export import ExportOptions
from mrcnn_edge.core.contract import OUTPUT_NAMES, num_detections_of
from mrcnn_edge.model.edge import EdgeMaskRCNN

CANVAS = (160, 160)


@pytest.fixture(scope="module")
def demo():
    from mrcnn_edge.model.checkpoint import load_checkpoint

    return load_checkpoint(mrcnn_edge.demo_checkpoint())


@pytest.fixture(scope="module")
def frames():
    from mrcnn_edge.data.shapes import image_rng, render_sample

    return [render_sample(image_rng(321, i), CANVAS)[0] for i in range(2)]


def _feed(frame: np.ndarray, mean, std) -> np.ndarray:
    from mrcnn_edge.runtime.preprocess import letterbox

    return letterbox(frame, CANVAS, mean, std)[0][None]


def _eager(edge: EdgeMaskRCNN, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in zip(OUTPUT_NAMES, edge(torch.from_numpy(x)))}


def test_mask_head_on_detections_equals_static_graph_eager(demo, frames):
    model, cfg = demo
    static = EdgeMaskRCNN(model, CANVAS)
    dets = EdgeMaskRCNN(model, CANVAS, mask_head="detections")
    for frame in frames:
        x = _feed(frame, cfg.image_mean, cfg.image_std)
        a, b = _eager(static, x), _eager(dets, x)
        assert num_detections_of(a["num_detections"])[0] > 0  # the demo model finds the shapes: the head did run
        for name in OUTPUT_NAMES:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    # no detection at all: the head runs on zero rows and the outputs stay padded
    empty = _eager(dets, np.zeros((1, 3, *CANVAS), np.float32) - 50.0)
    assert empty["masks"].shape == (1, dets.max_detections, 28, 28)


def test_normalize_in_graph_equals_external_normalisation_eager(demo, frames):
    model, cfg = demo
    plain = EdgeMaskRCNN(model, CANVAS)
    folded = EdgeMaskRCNN(model, CANVAS, normalize_in_graph=True)
    from mrcnn_edge.data.shapes import image_rng, render_sample

    wide = render_sample(image_rng(321, 5), (120, 160))[0]  # leaves padding rows in the canvas
    for frame in [*frames, wide]:
        x = _feed(frame, cfg.image_mean, cfg.image_std)
        raw = _feed(frame, (0.0, 0.0, 0.0), (1 / 255,) * 3)  # 0-255 RGB, padding 0
        # padding of 255*mean normalises to torchvision's 0 (edge.py's docstring)
        pad = (raw == 0).all(axis=1, keepdims=True) & (x == 0).all(axis=1, keepdims=True)
        raw = np.where(pad, 255.0 * np.asarray(cfg.image_mean, np.float32).reshape(1, 3, 1, 1), raw).astype(np.float32)
        a, b = _eager(plain, x), _eager(folded, raw)
        assert num_detections_of(a["num_detections"])[0] > 0
        np.testing.assert_array_equal(b["num_detections"], a["num_detections"])
        np.testing.assert_allclose(b["boxes"], a["boxes"], atol=1e-2)
        np.testing.assert_allclose(b["masks"], a["masks"], atol=2e-3)


def test_mask_head_on_detections_refused_for_tensorrt_flavor():
    with pytest.raises(UserError, match="--flavor portable"):
        ExportOptions(flavor="tensorrt", mask_head="detections").validate()
    with pytest.raises(UserError, match="unknown mask head"):
        ExportOptions(flavor="portable", mask_head="sometimes").validate()
    ExportOptions(flavor="portable", mask_head="detections").validate()  # the allowed combination


def test_each_flavor_gets_its_default_mask_head():
    """Portable exports are for CPU engines: the head on the real detections unless told otherwise;
    the tensorrt flavor keeps static shapes. An explicit choice wins."""
    assert ExportOptions(flavor="portable").chosen_mask_head == "detections"
    assert ExportOptions(flavor="tensorrt").chosen_mask_head == "static"
    assert ExportOptions(flavor="portable", mask_head="static").chosen_mask_head == "static"
    ExportOptions(flavor="tensorrt").validate()  # the tensorrt default is one it accepts


@pytest.mark.slow
def test_exported_options_run_in_onnx_runtime_and_say_so(demo, demo_onnx, demo_canvas, frames):
    """Both options through torch.export + ONNX: same outputs as the static graph in ONNX Runtime,
    and metadata that says what the graph takes (DeepStream's config reads input_normalization)."""
    import onnx
    import onnxruntime as ort

    from mrcnn_edge.core.metadata import decode

    model, cfg = demo
    assert tuple(demo_canvas) == CANVAS  # the frames fill the canvas
    paths = {name: demo_onnx("portable", **kw)
             for name, kw in (("static", {"mask_head": "static"}), ("dets", {}), ("norm", {"normalize_in_graph": True}))}
    meta = {k: decode({p.key: p.value for p in onnx.load(str(v), load_external_data=False).metadata_props})
            for k, v in paths.items()}
    assert meta["norm"]["input_normalization"] == "in_graph" and meta["dets"]["mask_head"] == "detections"
    assert "input_normalization" not in meta["static"] and "mask_head" not in meta["static"]
    assert meta["norm"]["mask_head"] == "detections"  # the portable flavor's default, written down
    sess = {k: ort.InferenceSession(str(v), providers=["CPUExecutionProvider"]) for k, v in paths.items()}
    for frame in frames:
        x = _feed(frame, cfg.image_mean, cfg.image_std)
        raw = _feed(frame, (0.0, 0.0, 0.0), (1 / 255,) * 3)  # the frames fill the canvas: no padding
        ref = sess["static"].run(None, {"images": x})
        for name, feed in (("dets", x), ("norm", raw)):
            got = sess[name].run(None, {"images": feed})
            for n, a, b in zip(OUTPUT_NAMES, got, ref):
                np.testing.assert_allclose(a, b, atol=1e-4 if name == "norm" else 0, err_msg=f"{name} {n}")
    # the runtime reads input_normalization and feeds the in-graph model 0..255 RGB itself
    from mrcnn_edge.runtime import Segmenter

    with Segmenter.from_path(paths["static"], backend="onnxruntime", score_threshold=0.0) as a, \
            Segmenter.from_path(paths["norm"], backend="onnxruntime", score_threshold=0.0) as b:
        for frame in frames:
            da, db = a(frame), b(frame)
            assert len(da) == len(db) > 0
            np.testing.assert_allclose(da.scores, db.scores, atol=1e-4)
            np.testing.assert_allclose(da.boxes, db.boxes, atol=1e-2)


def test_runtime_spec_reads_input_normalization(tmp_path):
    from mrcnn_edge.runtime.backends.ort import OrtBackend
    from mrcnn_edge.runtime.spec import model_spec
    from mrcnn_edge.runtime.testing import make_contract_model

    for value, expected in ((None, "external"), ("in_graph", "in_graph"), ("sideways", None)):
        extra = {} if value is None else {"input_normalization": value}
        path = make_contract_model(tmp_path / f"{value}.onnx", metadata=extra)
        with OrtBackend(path, device="cpu") as be:
            if expected is None:
                with pytest.raises(UserError, match="input_normalization 'sideways'"):
                    model_spec(path, be.metadata, be.inputs, be.outputs)
            else:
                assert model_spec(path, be.metadata, be.inputs, be.outputs).input_normalization == expected
