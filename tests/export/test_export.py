"""Export of every listed arch (two canvases, batch 2, both flavors, both precisions) and its checks.

Each arch is exported twice, so that between them every arch meets both canvas sizes, both flavors
and both precisions: ``(64x96, tensorrt, fp32)`` and ``(96x64, portable, fp16)``. fp32 exports must
match ``EdgeMaskRCNN`` eager one to one in ONNX Runtime; fp16 exports must run and keep the I/O contract.
"""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch

from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.contract import OUTPUT_NAMES, OUTPUTS, num_detections_of
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import MODEL_KEYS, decode
from mrcnn_edge.export.checks import check_model, nms_box_counts, tensorrt_compatibility
from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
from mrcnn_edge.export.ort_custom import make_session
from mrcnn_edge.export.validate.compare import TOLERANCES, compare
from mrcnn_edge.model.checkpoint import ARCHS, ModelConfig, build_model, save_checkpoint
from mrcnn_edge.model.edge import EdgeMaskRCNN
from mrcnn_edge.runtime.postprocess import FrameRows

VARIANTS = [((64, 96), "tensorrt", "fp32"), ((96, 64), "portable", "fp16")]
# Random weights (BatchNorm statistics untouched) give large activations in deep trunks, so float
# rounding between ONNX Runtime and torch grows to ~1e-3 in mask probabilities; still one to one.
# The README's tolerances (box 0.01 px, score 1e-4, mask 1e-3) are asserted on the trained demo
# model in test_parity.py.
RANDOM_WEIGHTS_TOL = {**TOLERANCES["fp32"], "box": 0.05, "score": 1e-3, "mask": 1e-2, "mask_p99": 1e-2, "mask_iou": 0.95}


def _tame(model):
    """Zero the last norm scale of each residual block (torchvision's zero_init_residual): random deep
    ResNets otherwise overflow float32, and a NaN model has nothing to compare. The graph is unchanged."""
    with torch.no_grad():
        for m in model.backbone.body.modules():
            last = getattr(m, "bn3", None) if hasattr(m, "conv3") else getattr(m, "bn2", None) if hasattr(m, "downsample") else None
            if last is not None:
                last.weight.zero_()
    return model


def _run_both(model, path, size, precision, seed=0):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    sess = make_session(path)
    onnx_out = dict(zip(OUTPUT_NAMES, sess.run(None, {"images": x.numpy()})))
    edge = EdgeMaskRCNN(model, size, 2, precision=precision, score_threshold=0.0)
    with torch.no_grad():
        eager = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in zip(OUTPUT_NAMES, edge(x))}
    return onnx_out, eager


# the MobileNet FPN (two maps at 1/32) in the tensorrt flavor: the plugin's level rule where k_min == k_max
ARCH_VARIANT = {"resnet18_fpn": 0, "resnet34_fpn": 1, "resnet50_fpn": 0, "resnet101_fpn": 1,
                "resnet50_fpn_v2": 1, "mobilenet_v3_large_fpn": 0}


@pytest.mark.slow
@pytest.mark.parametrize("arch, variant", [(arch, VARIANTS[ARCH_VARIANT[arch]]) for arch in ARCHS])
def test_every_arch_exports(tmp_path, arch, variant):
    """Each architecture once, the variants alternating: every variant meets a ResNet and the
    MobileNet, both flavors, both precisions and both canvas shapes (one export each: the six
    exports are most of the suite's time on two cores)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, num_classes=3, class_names=["__background__", "a", "b"])
    model = _tame(build_model(cfg))
    for size, flavor, precision in [variant]:
        path = tmp_path / f"{flavor}.onnx"
        # score threshold 0: random weights score low, and every row should be a detection to compare
        rep = export_onnx(model, cfg, path, ExportOptions(input_size=size, batch=2, flavor=flavor, precision=precision,
                                                          score_threshold=0.0), log=lambda s: None)
        proto = onnx.load(str(path))
        meta = decode({p.key: p.value for p in proto.metadata_props})
        assert set(MODEL_KEYS) <= set(meta)
        assert meta["input_size"] == list(size) and meta["batch"] == 2 and meta["flavor"] == flavor
        assert (meta["plugin"] is not None) == (flavor == "tensorrt")
        plugin_nodes = [n for n in proto.graph.node if n.op_type == "MultilevelRoIAlign"]
        assert len(plugin_nodes) == (2 if flavor == "tensorrt" else 0)
        for n in plugin_nodes:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"mrcnn_edge"
        assert tensorrt_compatibility(onnx.shape_inference.infer_shapes(proto), flavor) == []
        assert all(0 < n <= 5000 for n in nms_box_counts(proto))
        onnx_out, eager = _run_both(model, path, size, precision)
        for spec in OUTPUTS:  # batch 2, torchvision's 100 detections, 28x28 masks
            assert rep["outputs"][spec.name] == list(spec.shape(2, 100, 28)), spec.name
            assert onnx_out[spec.name].shape == spec.shape(2, 100, 28), spec.name
            assert onnx_out[spec.name].dtype == np.dtype(spec.dtype_for(precision)), spec.name
        for b, n in enumerate(num_detections_of(onnx_out["num_detections"])):  # padding rows: zero, class -1
            assert (onnx_out["classes"][b, n:] == -1).all() and not onnx_out["boxes"][b, n:].any()
        if precision == "fp32":
            res = compare([FrameRows.from_outputs(eager, b) for b in range(2)], [FrameRows.from_outputs(onnx_out, b) for b in range(2)],
                          RANDOM_WEIGHTS_TOL, size)
            assert res.ok, res.failures
            assert res.matched > 0


def test_export_is_static_and_guard_free():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mobilenet_v3_large_fpn", num_classes=3))
    edge = EdgeMaskRCNN(model, (64, 64), 1)
    ep = torch.export.export(edge, (torch.zeros(1, 3, 64, 64),), strict=False)
    assert not ep.range_constraints  # no symbolic (data-dependent) sizes survive
    out_shapes = [tuple(n.meta["val"].shape) for n in ep.graph.output_node().args[0]]
    assert out_shapes == [spec.shape(1, 100, 28) for spec in OUTPUTS]
    assert out_shapes[0] == (1, 1)  # num_detections [B,1] (the contract since 0.2)


def _constant_model(wrong: dict[str, tuple[tuple[int, ...], str]] = {}):
    """images [1,3,64,64] in; each contract output a Constant of the contract's shape and dtype for
    K=5, M=4, fp32, except those in ``wrong`` (name -> (shape, dtype))."""
    from onnx import helper, numpy_helper

    nodes, outputs = [], []
    for spec in OUTPUTS:
        shape, dtype = wrong.get(spec.name, (spec.shape(1, 5, 4), spec.dtype))
        value = numpy_helper.from_array(np.zeros(shape, dtype), spec.name + "_value")
        nodes.append(helper.make_node("Constant", [], [spec.name], value=value))
        outputs.append(helper.make_tensor_value_info(spec.name, value.data_type, shape))
    images = helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 64, 64])
    return helper.make_model(helper.make_graph(nodes, "g", [images], outputs),
                             opset_imports=[helper.make_opsetid("", 18)])


def test_check_model_holds_outputs_to_the_contract_shapes_and_dtypes():
    meta = {"batch": 1, "input_size": [64, 64], "max_detections": 5, "mask_size": 4, "flavor": "portable",
            "precision": "fp32"}
    report = check_model(_constant_model(), meta)
    assert report["outputs"]["num_detections"] == [1, 1] and report["outputs"]["masks"] == [1, 5, 4, 4]
    for wrong, words in [({"num_detections": ((1,), "int32")}, "'num_detections' is int32 [1]"),  # older [B]
                         ({"masks": ((1, 5, 4, 4), "float16")}, "'masks' is float16"),
                         ({"classes": ((1, 5), "int64")}, "'classes' is int64"),
                         ({"boxes": ((1, 6, 4), "float32")}, "'boxes' is float32 [1, 6, 4]")]:
        with pytest.raises(UserError, match=re.escape(words)):
            check_model(_constant_model(wrong), meta)
    # an fp16 model's masks are float16, and so must they be
    check_model(_constant_model({"masks": ((1, 5, 4, 4), "float16")}), {**meta, "precision": "fp16"})
    with pytest.raises(UserError, match=re.escape("expected [1, 3, 32, 64]")):
        check_model(_constant_model(), {**meta, "input_size": [32, 64]})


def test_tensorrt_compatibility_catches_problems():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 4])
    g = onnx.helper.make_graph([onnx.helper.make_node("Det", ["x"], ["y"])], "g", [x], [y])
    problems = tensorrt_compatibility(onnx.helper.make_model(g), "tensorrt")
    assert any("Det" in p for p in problems) and any("dynamic" in p for p in problems)


# ----------------------------------------------------------------------------- CLI and bad input


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="mobilenet_v3_large_fpn", num_classes=3, class_names=["__background__", "a", "b"])
    path = tmp_path_factory.mktemp("ck") / "m.pth"
    save_checkpoint(build_model(cfg), cfg, path)
    return path


@pytest.mark.parametrize("args,needle", [
    (["--input-size", "500x512"], "multiples of 32"),
    (["--batch", "0"], "batch"),
    (["--flavor", "tflite"], "invalid choice: 'tflite'"),
    (["--precision", "int4"], "invalid choice: 'int4'"),
])
def test_export_bad_options(tmp_path, small_ckpt, capsys, args, needle):
    out = tmp_path / "m.onnx"
    assert main(["export", str(small_ckpt), "-o", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_export_bad_checkpoint_and_output(tmp_path, small_ckpt, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["export", str(small_ckpt), "-o", str(blocker / "m.onnx"), "--input-size", "64x64"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "file"]


def test_export_cli_writes_model_with_metadata(tmp_path, small_ckpt, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", str(small_ckpt), "-o", str(out), "--input-size", "64x64", "--flavor", "portable",
                 "--max-detections", "20", "--score-threshold", "0.1"]) == 0
    meta = decode({p.key: p.value for p in onnx.load(str(out)).metadata_props})
    assert meta["max_detections"] == 20 and meta["score_threshold"] == pytest.approx(0.1)
    assert meta["class_names"] == ["__background__", "a", "b"] and meta["plugin"] is None
    assert json.loads(json.dumps(meta))  # plain JSON values
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left
