"""Parity on the demo model, small scale: torchvision eager vs EdgeMaskRCNN vs ONNX Runtime (both flavors, fp16).

The synthetic images are 320x320 and the demo model resizes to 320, so the canvas equals the
resized image size, the setting where DESIGN.md promises torchvision's answers.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import mrcnn_edge
from mrcnn_edge.cli import main
from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
from mrcnn_edge.export.validate import validate

CANVAS = (320, 320)


@pytest.fixture(scope="module")
def demo():
    from mrcnn_edge.checkpoint import load_checkpoint

    return load_checkpoint(mrcnn_edge.demo_checkpoint())


@pytest.fixture(scope="module")
def exported(demo, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    paths = {}
    for flavor, precision in (("tensorrt", "fp32"), ("portable", "fp32"), ("portable", "fp16")):
        p = d / f"{flavor}-{precision}.onnx"
        export_onnx(None, p, ExportOptions(input_size=CANVAS, flavor=flavor, precision=precision),
                    model_and_config=demo, log=lambda s: None)
        paths[(flavor, precision)] = p
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    import cv2

    from mrcnn_edge.synth import image_rng, render_sample

    d = tmp_path_factory.mktemp("img")
    for i in range(4):
        cv2.imwrite(str(d / f"{i}.png"), render_sample(image_rng(777, i), CANVAS)[0])
    return d


@pytest.mark.slow
@pytest.mark.parametrize("flavor", ["tensorrt", "portable"])
def test_fp32_onnx_matches_pytorch(exported, images, flavor):
    rep = validate(str(mrcnn_edge.demo_checkpoint()), str(exported[(flavor, "fp32")]), images=str(images), log=lambda s: None)
    tv, ox = rep["comparisons"]["torchvision -> edge"], rep["comparisons"]["edge -> onnx"]
    assert tv["reference_detections"] >= 8  # the demo model does find the shapes
    assert tv["matched_fraction"] >= 0.99 and tv["mask_iou_mean"] >= 0.98, tv
    assert ox["matched_fraction"] == 1.0 and ox["unmatched_candidate"] == 0
    assert ox["box_abs_diff"]["max"] <= 0.01 and ox["score_abs_diff"]["max"] <= 1e-4
    assert ox["mask_prob_abs_diff"]["max"] <= 1e-3
    assert rep["ok"]


@pytest.mark.slow
def test_fp16_onnx_is_close(exported, images):
    rep = validate(str(mrcnn_edge.demo_checkpoint()), str(exported[("portable", "fp16")]), images=str(images), log=lambda s: None)
    c = rep["comparisons"]["edge -> onnx"]  # fp16 model against the float32 graph
    assert c["matched_fraction"] >= 0.95 and c["mask_iou_mean"] >= 0.98 and c["box_abs_diff"]["p99"] <= 0.5, c
    assert rep["ok"], c["failures"]


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
    from mrcnn_edge.synth import generate_dataset

    ds = generate_dataset(tmp_path / "ds", 2, 5, size=(64, 64), progress=False)
    ann = json.loads((ds / "annotations.json").read_text())
    ann["images"][0]["width"] = 999
    (ds / "annotations.json").write_text(json.dumps(ann))
    assert main(["validate", "--checkpoint", ck, "--model", model, "--annotations", str(ds)]) == 2
    assert "do not match" in capsys.readouterr().err


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_of_the_demo_model(demo, images, tmp_path, precision):
    """The tensorrt-flavor export parses, builds with the plugin, and validates against PyTorch."""
    onnx_path = tmp_path / f"demo_{precision}.onnx"
    export_onnx(None, onnx_path, ExportOptions(input_size=CANVAS, flavor="tensorrt", precision=precision),
                model_and_config=demo, log=lambda s: None)
    assert main(["build-plugin", "-o", str(tmp_path / "libmrcnn_edge_plugins.so")]) == 0
    engine = tmp_path / f"demo_{precision}.engine"
    assert main(["build", str(onnx_path), "-o", str(engine), "--plugin-lib", str(tmp_path / "libmrcnn_edge_plugins.so")]) == 0
    rep = validate(str(mrcnn_edge.demo_checkpoint()), str(engine), images=str(images), log=lambda s: None)
    assert rep["ok"], rep["comparisons"]
