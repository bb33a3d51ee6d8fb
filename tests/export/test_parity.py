"""Parity on the demo model, small scale: torchvision eager vs EdgeMaskRCNN vs ONNX Runtime (both flavors, fp16).

The synthetic images are the canvas's size (the session's cached demo exports, ``demo_onnx``), so
the canvas equals the image region, the setting where DESIGN.md promises torchvision's answers
(the torchvision runner starts after torchvision's resize).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import mrcnn_edge
from mrcnn_edge.commands.cli import main
from mrcnn_edge.export.validate import TOLERANCES, validate


@pytest.fixture(scope="module")
def exported(demo_onnx):
    return {(flavor, precision): demo_onnx(flavor, precision)
            for flavor, precision in (("tensorrt", "fp32"), ("portable", "fp32"), ("portable", "fp16"), ("tensorrt", "fp16"))}


@pytest.fixture(scope="module")
def images(tmp_path_factory, demo_canvas):
    import cv2

    from mrcnn_edge.data.shapes import image_rng, render_sample

    d = tmp_path_factory.mktemp("img")
    for i in range(4):
        cv2.imwrite(str(d / f"{i}.png"), render_sample(image_rng(777, i), demo_canvas)[0])
    return d


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["tensorrt", "portable"])
def test_fp32_onnx_matches_pytorch(exported, images, flavor):
    rep = validate(str(mrcnn_edge.demo_checkpoint()), str(exported[(flavor, "fp32")]), images=str(images), progress=False)
    tv, ox = rep.comparisons["torchvision -> edge"], rep.comparisons["edge -> onnx"]
    assert tv.reference_detections >= 8  # the demo model does find the shapes
    assert tv.matched_fraction >= 0.99 and tv.mask_iou_mean >= 0.98, tv
    assert ox.matched_fraction == 1.0 and ox.unmatched_candidate == 0
    assert ox.box_abs_diff.max <= 0.01 and ox.score_abs_diff.max <= 1e-4
    assert ox.mask_prob_abs_diff.max <= 1e-3
    assert rep.ok


@pytest.mark.slow
def test_fp16_onnx_is_close(exported, images):
    rep = validate(str(mrcnn_edge.demo_checkpoint()), str(exported[("portable", "fp16")]), images=str(images), progress=False)
    c = rep.comparisons["edge -> onnx"]  # fp16 model against the float32 graph
    assert c.matched_fraction >= 0.95 and c.mask_iou_mean >= 0.98 and c.box_abs_diff.p99 <= 0.5, c
    assert rep.ok, c.failures


@pytest.mark.slow
def test_fp16_tensorrt_flavor_validates(exported, images, tmp_path):
    """The README's combination runs in ONNX Runtime through the plugin's fp16 path and passes validate
    (it used to abort the process inside onnxruntime-extensions: hence the subprocess, whose JSON
    report is read here rather than validating a second time in this process)."""
    import subprocess
    import sys

    report = tmp_path / "r.json"
    child = subprocess.run([sys.executable, "-m", "mrcnn_edge", "validate", "--checkpoint", str(mrcnn_edge.demo_checkpoint()),
                            "--model", str(exported[("tensorrt", "fp16")]), "--images", str(images),
                            "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, (child.stdout + child.stderr)[-2000:]
    assert "| edge -> onnx |" in child.stdout and "**PASS**" in child.stdout
    c = json.loads(report.read_text())["comparisons"]["edge -> onnx"]
    assert c["tolerance"] == TOLERANCES["fp16"] and c["ok"] and c["reference_detections"] > 0, c["failures"]


@pytest.mark.slow
def test_validate_cli_passes_then_fails_on_a_damaged_model(exported, images, tmp_path, capsys):
    good = exported[("portable", "fp32")]
    report, js = tmp_path / "r.md", tmp_path / "r.json"
    code = main(["validate", "--checkpoint", str(mrcnn_edge.demo_checkpoint()), "--model", str(good),
                 "--images", str(images), "--limit", "2", "--report", str(report), "--json", str(js)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "| torchvision -> edge |" in out and "PASS" in report.read_text()
    assert json.loads(js.read_text())["ok"] is True
    proto = onnx.load(str(good))  # damage one conv weight of the mask predictor
    init = next(i for i in proto.graph.initializer if "mask_predictor" in i.name and "weight" in i.name)
    arr = onnx.numpy_helper.to_array(init).copy() * 3.0 + 0.1
    init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    code = main(["validate", "--checkpoint", str(mrcnn_edge.demo_checkpoint()), "--model", str(bad),
                 "--images", str(images), "--limit", "2"])
    captured = capsys.readouterr()
    assert code == 1 and "FAIL" in captured.out


def test_validate_bad_inputs(tmp_path, capsys):
    ck = str(mrcnn_edge.demo_checkpoint())
    plain = tmp_path / "plain.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x],
              [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])), str(plain))
    assert main(["validate", "--checkpoint", ck, "--model", str(plain)]) == 2
    assert "no mrcnn-edge metadata" in capsys.readouterr().err
    assert main(["validate", "--checkpoint", ck, "--model", str(tmp_path / "none.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_validate_unreadable_images_and_mismatched_annotations(exported, tmp_path, capsys):
    ck = str(mrcnn_edge.demo_checkpoint())
    model = str(exported[("portable", "fp32")])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert main(["validate", "--checkpoint", ck, "--model", model, "--images", str(tmp_path)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    from mrcnn_edge.data.dataset import generate_dataset

    ds = generate_dataset(tmp_path / "ds", 2, 5, size=(64, 64), progress=False)
    ann = json.loads((ds / "annotations.json").read_text())
    ann["images"][0]["width"] = 999
    (ds / "annotations.json").write_text(json.dumps(ann))
    assert main(["validate", "--checkpoint", ck, "--model", model, "--annotations", str(ds)]) == 2
    assert "do not match" in capsys.readouterr().err


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_of_the_demo_model(demo_onnx, images, tmp_path, precision):
    """The tensorrt-flavor export parses, builds with the plugin, and validates against PyTorch."""
    onnx_path = demo_onnx("tensorrt", precision)
    assert main(["build-plugin", "-o", str(tmp_path / "libmrcnn_edge_plugins.so")]) == 0
    engine = tmp_path / f"demo_{precision}.engine"
    assert main(["build", str(onnx_path), "-o", str(engine), "--plugin-lib", str(tmp_path / "libmrcnn_edge_plugins.so")]) == 0
    rep = validate(str(mrcnn_edge.demo_checkpoint()), str(engine), images=str(images), progress=False)
    assert rep.ok, rep.comparisons


# ------------------------------------------------------------------ named differences (edge.py docstring)


@pytest.mark.slow
def test_candidate_cap_drops_only_detections_below_the_cap_score():
    """``candidate cap`` (edge.py): with R x (classes-1) > 5000 candidates, class-aware NMS sees the
    ``box_candidates`` best scores only. Without the cap the graph returns torchvision's detections;
    with it, torchvision's detections down to the cap's score cut and none below it."""
    import copy

    import torch
    from torchvision.models.detection.image_list import ImageList

    from mrcnn_edge.model.checkpoint import ModelConfig, build_model
    from mrcnn_edge.core.contract import TRT_NMS_MAX_BOXES
    from mrcnn_edge.model.edge import EdgeMaskRCNN

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18_fpn", num_classes=91)).eval()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight.mul_(4)  # graded scores, no ties
    # a low threshold and many rows, so that far more than box_candidates scores compete
    model.roi_heads.score_thresh, model.roi_heads.detections_per_img = 0.001, 3000
    size = (128, 128)  # the canvas is the image: no clip-to-canvas difference
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))

    def edge_dets(box_candidates: int):
        edge = EdgeMaskRCNN(model, size, 1, box_candidates=box_candidates)
        with torch.inference_mode():
            feats = edge.backbone(x)
            props, valid = edge.proposals(feats)
            num, boxes, scores, classes = edge.detect(feats, props, valid)
        assert props.shape[1] * (edge.num_classes - 1) > TRT_NMS_MAX_BOXES  # the cap path runs
        n = int(num[0])
        return boxes[0, :n].numpy(), scores[0, :n].numpy(), classes[0, :n].numpy()

    with torch.inference_mode():  # torchvision eager, box head only (no masks for 3000 rows)
        feats = model.backbone(x)
        il = ImageList(x, [size])
        props, _ = model.rpn(il, feats)
        heads = copy.deepcopy(model.roi_heads)
        heads.mask_roi_pool = None
        tv = heads(feats, props, il.image_sizes)[0][0]
    tv_boxes, tv_scores, tv_classes = tv["boxes"].numpy(), tv["scores"].numpy(), tv["labels"].numpy()

    def same(a, b) -> bool:
        if len(a[1]) != len(b[1]):
            return False
        # equal scores (one proposal, two classes) may come in either order: compare sorted
        a, b = ([v[np.lexsort((d[0][:, 0], d[2], -d[1]))] for v in d] for d in (a, b))
        return np.array_equal(a[2], b[2]) and np.allclose(a[0], b[0], atol=1e-3) and np.allclose(a[1], b[1], atol=1e-6)

    uncapped = edge_dets(10 ** 6)
    assert same(uncapped, (tv_boxes, tv_scores, tv_classes))
    capped = edge_dets(EdgeMaskRCNN(model, size, 1).box_candidates)
    n = len(capped[1])
    assert 0 < n < len(tv_scores)  # the cap does change the answer here ...
    assert same(capped, (tv_boxes[:n], tv_scores[:n], tv_classes[:n]))  # ... only by what it drops:
    assert tv_scores[n:].max() <= capped[1].min()  # torchvision's detections below the cut
