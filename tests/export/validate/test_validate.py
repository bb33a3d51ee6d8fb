"""``mrcnn-edge validate`` and what it runs: fp16 plugin nodes in ONNX Runtime, the edge-clip
attribution of unmatched detections, dataset folders, and a many-class deep model end to end."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import mrcnn_edge
from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.export import ort_custom
from mrcnn_edge.export.validate import TOLERANCES, collect_images, compare
from mrcnn_edge.runtime.postprocess import FrameRows

# ------------------------------------------------------------------ a plugin node alone, in ORT

_SCALES = [0.25, 0.125]


def _plugin_graph(feature_type: int = TensorProto.FLOAT16, **attr_overrides) -> onnx.ModelProto:
    """``images [1,3,32,32]`` float32 -> two feature maps of ``feature_type`` -> one plugin node -> ``pooled``."""
    rois = np.array([[[1.0, 2.0, 20.0, 30.0], [0.0, 0.0, 31.0, 31.0], [5.0, 5.0, 5.0, 9.0], [40.0, 40.0, 60.0, 70.0]]],
                    np.float32)
    attrs = dict(output_height=3, output_width=2, sampling_ratio=2, aligned=0, spatial_scales=_SCALES,
                 canonical_scale=8.0, canonical_level=3, plugin_version="1", plugin_namespace="mrcnn_edge")
    attrs.update(attr_overrides)
    nodes = [
        helper.make_node("Cast", ["images"], ["img_t"], to=feature_type),
        helper.make_node("Slice", ["img_t", "s0", "e0", "ax"], ["f0"]),  # 8x8 map at 1/4
        helper.make_node("MaxPool", ["img_t"], ["pooled16"], kernel_shape=[8, 8], strides=[8, 8]),  # 4x4 at 1/8
        helper.make_node("MultilevelRoIAlign", ["rois", "f0", "pooled16"], ["pooled"], domain="mrcnn_edge", **attrs),
    ]
    inits = [onnx.numpy_helper.from_array(rois, "rois"),
             onnx.numpy_helper.from_array(np.array([0, 0], np.int64), "s0"),
             onnx.numpy_helper.from_array(np.array([8, 8], np.int64), "e0"),
             onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "ax")]
    g = helper.make_graph(nodes, "plugin", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("pooled", feature_type, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mrcnn_edge", 1)])


_CHILD = textwrap.dedent("""
    import numpy as np, onnx, sys
    sys.path.insert(0, {tests!r})
    from test_validate import _plugin_graph, _SCALES
    from mrcnn_edge.export.ort_custom import make_session
    from mrcnn_edge.export.plugin_host import multilevel_roi_align_host

    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32) * 3
    proto = _plugin_graph()
    got = make_session(proto).run(None, {{"images": x}})[0]
    x16 = x.astype(np.float16)
    f1 = x16.reshape(1, 3, 4, 8, 4, 8).max(axis=(3, 5))
    rois = onnx.numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "rois"))
    want = multilevel_roi_align_host(rois, [x16[:, :, :8, :8], f1], output_height=3, output_width=2,
                                     spatial_scales=_SCALES, canonical_scale=8.0, canonical_level=3)
    assert got.dtype == np.float16 and want.dtype == np.float16, (got.dtype, want.dtype)
    assert got.shape == (1, 4, 3, 3, 2), got.shape
    print("EXACT" if np.array_equal(got.view(np.uint16), want.view(np.uint16)) else "DIFFERENT")
""")


def test_fp16_plugin_node_runs_the_host_fp16_path(tmp_path):
    """A float16 plugin node runs in ONNX Runtime (it used to abort the process) through the plugin's
    own fp16 arithmetic: bit-identical to the host library given the half features."""
    from pathlib import Path

    child = subprocess.run([sys.executable, "-c", _CHILD.format(tests=str(Path(__file__).parent))],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == "EXACT"


def test_plugin_failure_inside_ort_is_one_user_error(monkeypatch):
    sess = ort_custom.make_session(_plugin_graph(TensorProto.FLOAT))
    ok = ort_custom.run_session(sess, np.ones((1, 3, 32, 32), np.float32))
    assert ok["pooled"].shape == (1, 4, 3, 3, 2)

    def broken(*args, **kwargs):
        raise ValueError("feature maps disagree")

    # an exception inside an onnxruntime-extensions Python op aborts the process unless the op keeps it
    monkeypatch.setattr(ort_custom, "reference_roi_align", broken)
    with pytest.raises(UserError, match="MultilevelRoIAlign reference implementation failed: feature maps disagree"):
        ort_custom.run_session(sess, np.ones((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize("overrides,needle", [
    (dict(spatial_scales=[0.3, 0.125]), "powers of two"),
    (dict(sampling_ratio=100), "sampling_ratio"),
    (dict(plugin_version="2"), "plugin version '2'"),
    (dict(spatial_scales=[0.25]), "2 feature maps but 1 spatial_scales"),
])
def test_bad_plugin_nodes_are_refused_at_session_creation(overrides, needle):
    with pytest.raises(UserError, match=needle):
        ort_custom.make_session(_plugin_graph(TensorProto.FLOAT, **overrides))


def test_plugin_node_of_double_features_is_refused():
    with pytest.raises(UserError, match="all float32 or all float16"):
        ort_custom.make_session(_plugin_graph(TensorProto.DOUBLE))


# ------------------------------------------------------------------ edge-clip attribution


def _dets(boxes, scores, classes) -> FrameRows:
    n = len(scores)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return FrameRows(np.arange(n), boxes, boxes, np.asarray(scores, np.float32), np.asarray(classes, np.int32),
                     np.full((n, 4, 4), 0.9, np.float32))


def test_unmatched_detections_explained_by_the_clip_are_edge_clip_not_failures():
    canvas, region = (64, 96), (64, 64)  # a square image letterboxed into a wide canvas
    # torchvision clips box 2 at the image (x=64) and so keeps box 3 (away from the border), which
    # the graph's unclipped box 2 suppresses: both differences come from the clip
    ref = _dets([[10, 10, 30, 30], [40, 20, 64, 40], [30, 22, 50, 40]], [0.9, 0.8, 0.7], [1, 2, 2])
    cand = _dets([[10, 10, 30, 30], [40, 20, 75, 40]], [0.9, 0.8], [1, 2])
    twin = _dets([[10, 10, 30, 30], [40, 20, 75, 40]], [0.9, 0.8], [1, 2])  # torchvision clipping at the canvas
    tol = TOLERANCES["torchvision->edge"]
    res = compare([ref], [cand], tol, canvas, [region], [twin])
    assert (res.matched, res.unmatched_reference, res.unmatched_candidate) == (1, 2, 1)
    assert (res.edge_clip_reference, res.edge_clip_candidate) == (2, 1)
    assert res.ok, res.failures
    assert sorted(d.score for d in res.edge_clip) == pytest.approx([0.7, 0.8, 0.8])
    # judged without the exemption, the same pair fails: the exemption is what passes it
    strict = compare([ref], [cand], {k: v for k, v in tol.items() if k != "edge_clip_exempt"}, canvas, [region], [twin])
    assert not strict.ok and strict.edge_clip_reference == 2


def test_unmatched_detections_the_clip_does_not_explain_still_fail():
    canvas, region = (64, 96), (64, 64)
    ref = _dets([[10, 10, 30, 30], [5, 35, 25, 55]], [0.9, 0.8], [1, 2])
    cand = _dets([[10, 10, 30, 30], [5, 35, 20, 50]], [0.9, 0.8], [1, 2])  # a real difference
    res = compare([ref], [cand], TOLERANCES["torchvision->edge"], canvas, [region], [ref])  # the clip changes nothing
    assert res.edge_clip_reference == 0 and res.unmatched_reference == 1
    assert not res.ok and "matched 0.500" in res.failures[0]


# ------------------------------------------------------------------ image folders


def test_validate_accepts_the_folder_synth_writes(tmp_path):
    from mrcnn_edge.data.dataset import generate_dataset

    ds = generate_dataset(tmp_path / "ds", 3, 5, size=(64, 64), progress=False)
    items, dataset = collect_images(str(ds), None, None)
    assert [name for name, _ in items] == sorted(p.name for p in (ds / "images").iterdir())
    assert dataset is None and items[0][1].shape == (64, 64, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="dataset folder with images/"):
        collect_images(str(tmp_path / "empty"), None, None)


# ------------------------------------------------------------------ a many-class deep model end to end


@pytest.mark.slow
def test_many_class_deep_model_validates_and_a_wrong_level_fails(tmp_path):
    """ResNet-50-FPN, 91 classes, random weights with graded scores, letterboxed images: validate
    passes (clip differences attributed, deep-model rounding within the tolerances) and still fails
    when the plugin pools from the wrong FPN level."""
    import cv2
    import torch
    import torchvision

    from mrcnn_edge.data.shapes import image_rng, render_sample
    from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
    from mrcnn_edge.export.validate import validate

    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(4)  # graded scores, no ties
    ckpt = tmp_path / "r50.pth"
    torch.save(model.state_dict(), ckpt)
    images = tmp_path / "img"
    images.mkdir()
    for i in range(2):  # square images in a wide canvas: a padded strip on the right
        cv2.imwrite(str(images / f"{i}.png"), render_sample(image_rng(5, i), (96, 96))[0])
    onnx_path = tmp_path / "r50.onnx"
    from mrcnn_edge.model.checkpoint import load_checkpoint

    loaded = load_checkpoint(ckpt)
    export_onnx(*loaded, onnx_path, ExportOptions(input_size=(128, 192), flavor="tensorrt"), log=lambda s: None)
    rep = validate(str(ckpt), str(onnx_path), images=str(images), loaded=loaded, progress=False)
    tv, ox = rep.comparisons["torchvision -> edge"], rep.comparisons["edge -> onnx"]
    assert tv.reference_detections >= 20 and ox.reference_detections == 200
    assert tv.max_detections == ox.max_detections == 100  # the cut is known on both pairs (ties at it)
    assert tv.unmatched_reference == tv.edge_clip_reference  # every difference is the clip
    assert rep.ok, {k: c.failures for k, c in rep.comparisons.items()}

    proto = onnx.load(str(onnx_path))  # a wrong level rule: every ROI one level finer
    for node in proto.graph.node:
        if node.op_type == "MultilevelRoIAlign":
            for a in node.attribute:
                if a.name == "canonical_level":
                    a.i = 3
    wrong = tmp_path / "wrong_level.onnx"
    onnx.save(proto, str(wrong))
    # judged as validate judges its "edge -> onnx" pair (its loop, its fp32 tolerance), without
    # running torchvision again: the wrong level fails
    from mrcnn_edge.export.validate.compare import tolerance_for
    from mrcnn_edge.export.validate.loop import Pass, run_passes
    from mrcnn_edge.export.validate.runners import TorchSource, open_runner

    model, cfg = loaded
    source = TorchSource(model, cfg, str(ckpt), ExportOptions(input_size=(128, 192)))
    frames = [cv2.imread(str(p)) for p in sorted(images.iterdir())]
    with open_runner("edge", source) as edge, open_runner("onnxruntime", wrong, device="cpu") as bad:
        got, _ = run_passes([Pass("edge", edge), Pass("onnx", bad)], frames, cfg.image_mean, cfg.image_std)
    c = compare(got["edge"].canvas, got["onnx"].canvas, tolerance_for("fp32"), (128, 192), max_detections=100)
    assert c.reference_detections == 200 and not c.ok and c.failures


# ------------------------------------------------------------------ runners: the runtime's ORT backend, the frame step

_CHILD_BACKEND = textwrap.dedent("""
    import numpy as np, onnx, sys
    sys.path.insert(0, {tests!r})
    from test_validate import _plugin_graph
    from mrcnn_edge.export.ort_custom import make_session, register
    from mrcnn_edge.runtime.backends.ort import OrtBackend

    proto = _plugin_graph()  # with its output shape: the backend binds static outputs to its own buffers
    proto.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("pooled", 10, [1, 4, 3, 3, 2]))
    onnx.save(proto, {path!r})
    register()
    x = np.random.default_rng(2).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with OrtBackend({path!r}, device="cpu") as be:
        got = be.infer({{"images": x}})["pooled"]
    want = make_session(_plugin_graph()).run(None, {{"images": x}})[0]
    print("EXACT" if np.array_equal(got.view(np.uint16), want.view(np.uint16)) else "DIFFERENT")
""")


def test_fp16_plugin_file_runs_in_the_runtime_onnxruntime_backend(tmp_path):
    """validate runs ONNX files through the runtime's OrtBackend with ort_custom's hook: a float16
    plugin node gives the same bits as the standalone session (registering the reference op after
    the extensions library crashed the process)."""
    from pathlib import Path

    child = subprocess.run([sys.executable, "-c", _CHILD_BACKEND.format(tests=str(Path(__file__).parent),
                                                                        path=str(tmp_path / "p.onnx"))],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == "EXACT"


def test_reference_falls_back_to_torch_without_a_compiler(monkeypatch):
    monkeypatch.setattr(ort_custom, "_implementation", None)
    monkeypatch.setenv("CXX", "/no/such/compiler")
    assert ort_custom.reference_implementation().startswith("torch reference (CXX=/no/such/compiler")


@pytest.mark.slow
def test_cached_host_library_has_the_users_file_mode(tmp_path, monkeypatch):
    """The cached .so is written atomically with the user's usual mode (mkstemp's 0600 leaked into it)."""
    import os

    from mrcnn_edge.export.plugin_host import host_library_path

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(tmp_path))
    path = host_library_path()
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o777 & ~mask
    assert [p.name for p in path.parent.iterdir()] == [path.name]
