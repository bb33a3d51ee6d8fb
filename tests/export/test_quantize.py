"""``mrcnn-edge quantize``: INT8 Q/DQ placed where TensorRT fuses it, refusals in one line with
nothing written, and quantize -> validate -> run end to end on the demo model (small calibration)."""
from __future__ import annotations

import numpy as np
import pytest

import mrcnn_edge
from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.testing import make_contract_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mrcnn_edge.export.checks import qdq_problems, tensorrt_compatibility  # noqa: E402
from mrcnn_edge.export.quantize import calibration_images  # noqa: E402

CANVAS = (160, 160)


def _one_line_error(capsys, argv: list[str], words: str) -> None:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and words in err[0], err


def test_calibration_folder_must_hold_images(tmp_path, capsys):
    model = make_contract_model(tmp_path / "m.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("not an image")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "0.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "m.int8.onnx"
    for folder, words in ((empty, "it is empty"), (notes, "none is an image"), (tmp_path / "nope", "not found"),
                          (corrupt, "cannot be read as an image")):
        _one_line_error(capsys, ["quantize", str(model), "--calibration", str(folder), "-o", str(out)], words)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_calibration_images_of_a_dataset_folder_and_limit(tmp_path):
    import cv2

    (tmp_path / "images").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), np.zeros((8, 8, 3), np.uint8))
    assert [p.name for p in calibration_images(tmp_path, limit=2)] == ["0.png", "1.png"]


@pytest.mark.parametrize("precision, words", [("fp16", "cannot be quantized"), ("int8", "already quantized")])
def test_unquantizable_models_are_refused(tmp_path, capsys, precision, words):
    import cv2

    model = make_contract_model(tmp_path / "m.onnx", precision=precision)
    cv2.imwrite(str(tmp_path / "0.png"), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "q.onnx"
    _one_line_error(capsys, ["quantize", str(model), "--calibration", str(tmp_path), "-o", str(out)], words)
    assert not out.exists()


def _qdq_graph(consumer: str, zero_point: int):
    """x -> Q -> DQ -> consumer(., W): the smallest Q/DQ graph for the placement rules."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np.int8), "z"),
             numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node(consumer, ["xd", "w"], ["y"], name="c")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 2, 2]) for n in ("x", "y")]
    return helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], inits))


def test_qdq_placement_rules():
    assert qdq_problems(_qdq_graph("Conv", 0)) == []
    assert qdq_problems(_qdq_graph("ConvTranspose", 0)) == []  # a weighted op like Conv (TensorRT deconvolution)
    assert any("Add" in p and "does not run in INT8" in p for p in qdq_problems(_qdq_graph("Add", 0)))
    assert any("zero point 0" in p for p in qdq_problems(_qdq_graph("Conv", 3)))


def _layers(spec: list[tuple]) -> "onnx.ModelProto":
    """A chain of 1x1 convolutions and adds from ``(op, inputs, output, int8)`` rows: ``int8`` puts a
    Q/DQ pair (scale 0.1, zero point 0) on every input that is not a weight (True) or on those named."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = []
    for op, inputs, out, int8 in spec:
        ins = []
        for i in inputs:
            if int8 is True or (int8 and i in int8):
                nodes += [helper.make_node("QuantizeLinear", [i, "s", "z"], [f"{out}.{i}.q"], name=f"{out}.{i}.Q"),
                          helper.make_node("DequantizeLinear", [f"{out}.{i}.q", "s", "z"], [f"{out}.{i}.dq"],
                                           name=f"{out}.{i}.DQ")]
                i = f"{out}.{i}.dq"
            ins.append(i)
        if op == "Conv":
            inits.append(numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), f"{out}.w"))
            ins.append(f"{out}.w")
        nodes.append(helper.make_node(op, ins, [out], name=out))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 2, 2]) for n in ("x", spec[-1][2])]
    return helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:], inits))


def test_the_residual_input_of_a_skip_connection_is_quantized():
    """x -> conv a -> conv b, then b + a (a skip connection): TensorRT keeps the block INT8 only with
    the residual input a quantized, and finds nothing to fuse in an Add of two non-layer inputs."""
    block = [("Conv", ["x"], "a", True), ("Conv", ["a"], "b", True)]
    float_residual = _layers([*block, ("Relu", ["a"], "r", False), ("Add", ["b", "r"], "y", False)])
    assert [p for p in qdq_problems(float_residual) if "residual input r" in p and "Add y" in p]
    assert qdq_problems(_layers([*block, ("Relu", ["a"], "r", False), ("Add", ["r", "b"], "y", ("r",))])) == []
    # both inputs quantized: the layer's own output takes no Q/DQ (it would not fuse)
    assert [p for p in qdq_problems(_layers([*block, ("Add", ["b", "a"], "y", True)])) if "feeds Add y" in p]


def test_a_float_layer_between_int8_layers_is_an_island():
    island = _layers([("Conv", ["x"], "a", True), ("Relu", ["a"], "r", False), ("Conv", ["r"], "b", False),
                      ("Conv", ["b"], "c", True)])
    assert [p for p in qdq_problems(island) if p.startswith("Conv b") and "float island" in p]
    # at the edge of the INT8 region (a prediction layer after the last INT8 layer) float is fine
    assert qdq_problems(_layers([("Conv", ["x"], "a", True), ("Relu", ["a"], "r", False),
                                 ("Conv", ["r"], "b", False)])) == []


def _assert_int8_as_tensorrt_places_it(proto) -> None:
    """The transposed convolution (mask head) is INT8, and every Add joining a convolution's output
    with another activation (the residual blocks, the FPN's top-down sums) reads a dequantized
    residual: written from the graph, independently of the quantizer's own bookkeeping."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name for i in proto.graph.initializer}

    def dequantized(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    def made_by(name: str) -> str:
        while name in producers and producers[name].op_type in ("QuantizeLinear", "DequantizeLinear"):
            name = producers[name].input[0]
        return producers[name].op_type if name in producers else "input"

    deconv = [n for n in proto.graph.node if n.op_type == "ConvTranspose"]
    assert deconv and all(dequantized(n.input[0]) and dequantized(n.input[1]) for n in deconv)
    skips = [n for n in proto.graph.node if n.op_type == "Add" and not any(i in inits for i in n.input)
             and "Conv" in {made_by(i) for i in n.input}]
    assert len(skips) >= 2  # the demo's MobileNetV3 blocks and FPN sums
    for add in skips:
        assert sum(dequantized(i) for i in add.input) == 1, add.name  # the residual, not the layer's output


@pytest.mark.slow
def test_quantize_validate_run_end_to_end(tmp_path, capsys, demo_onnx, demo_canvas):
    """Both flavors quantize; the Q/DQ sit on conv/gemm inputs and weights only; ROIAlign (or the
    plugin) reads float maps; the portable INT8 model validates against the checkpoint and runs."""
    from mrcnn_edge.core.metadata import decode

    ckpt = str(mrcnn_edge.demo_checkpoint())
    size = f"{demo_canvas[0]}x{demo_canvas[1]}"
    assert main(["synth", "--out", str(tmp_path / "cal"), "--images", "4", "--seed", "5", "--size", size,
                 "--quiet"]) == 0
    # the float model carries a bf16 record: it says nothing about the INT8 model, which must not inherit it
    from mrcnn_edge.export.validated_precisions import bf16_record, write_validated_precisions

    stamped = tmp_path / "portable.onnx"
    stamped.write_bytes(demo_onnx("portable").read_bytes())
    write_validated_precisions(stamped, {"bf16": bf16_record(0.6, 0.6, 10, "val")})
    for flavor in ("portable", "tensorrt"):
        fp32 = stamped if flavor == "portable" else demo_onnx(flavor)
        int8 = tmp_path / f"{flavor}.int8.onnx"
        assert main(["quantize", str(fp32), "--calibration", str(tmp_path / "cal"), "-o", str(int8)]) == 0
        proto = onnx.load(str(int8))
        meta = decode({p.key: p.value for p in proto.metadata_props})
        assert meta["precision"] == "int8" and meta["flavor"] == flavor and "validated_precisions" not in meta
        assert meta["calibration"] == {"images": 4, "folder": "cal", "canvas": list(demo_canvas), "method": "percentile"}
        assert tensorrt_compatibility(proto, flavor) == []
        producers = {o: n for n in proto.graph.node for o in n.output}
        convs = [n for n in proto.graph.node if n.op_type == "Conv"]
        quantized = [n for n in convs if producers.get(n.input[1]) is not None
                     and producers[n.input[1]].op_type == "DequantizeLinear"]
        assert len(quantized) >= 0.8 * len(convs)  # all but the first and the prediction layers
        for n in proto.graph.node:
            if n.op_type in ("RoiAlign", "MultilevelRoIAlign", "NonMaxSuppression", "Softmax"):
                assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input)
        _assert_int8_as_tensorrt_places_it(proto)
    # validate (against the checkpoint) and run, on the portable INT8 model
    int8 = tmp_path / "portable.int8.onnx"
    capsys.readouterr()
    rc = main(["validate", "--checkpoint", ckpt, "--model", str(int8), "--images", str(tmp_path / "cal"),
               "--limit", "2"])
    assert rc == 0, capsys.readouterr().err
    out_dir = tmp_path / "seg"
    assert main(["run", str(int8), "--source", str(tmp_path / "cal" / "images"), "--output", str(out_dir)]) == 0
    assert len(list(out_dir.iterdir())) == 4
    _bf16_float_parts_are_judged_against_the_int8_model(int8, tmp_path / "cal")


def _bf16_float_parts_are_judged_against_the_int8_model(int8, annotated) -> None:
    """What 'validate --annotations' runs after its comparison, on an INT8 model: OpenVINO with the
    float parts in fp32 (precision int8) against bf16; what it records is what auto then picks."""
    ov = pytest.importorskip("openvino", reason="bf16 is measured with OpenVINO")
    from mrcnn_edge.core.contract import validated_drop
    from mrcnn_edge.core.metadata import read_onnx_metadata
    from mrcnn_edge.export.validate import collect_images
    from mrcnn_edge.export.validated_precisions import check_cpu_precisions
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend, cpu_has_bf16

    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    items, dataset = collect_images(None, str(annotated), 2)
    notes: list[str] = []
    checked = check_cpu_precisions(int8, items, dataset, "cal", log=notes.append)
    assert checked is not None and checked.int8 and notes == ["[validate] OpenVINO int8 on 2 annotated images",
                                                              "[validate] OpenVINO bf16 on 2 annotated images"]
    assert checked.line.startswith("OpenVINO bf16 float parts of the INT8 model on 2 annotated images: mask AP ")
    assert f"vs its float parts in fp32 {checked.fp32_mask_AP:.4f}" in checked.line
    meta = read_onnx_metadata(int8)[1]
    assert meta["precision"] == "int8" and (validated_drop(meta, "bf16") is not None) == checked.recorded
    with OpenVinoBackend(int8) as auto:
        assert auto.precision == ("bf16" if checked.recorded else "int8"), auto.description
        assert auto.float_precision == ("bf16" if checked.recorded else "fp32")


def test_build_refuses_int8_metadata_without_qdq_before_tensorrt(tmp_path):
    from mrcnn_edge.export.build.engine import build_engine

    model = make_contract_model(tmp_path / "m.onnx", precision="int8")
    with pytest.raises(UserError, match="no QuantizeLinear/DequantizeLinear"):
        build_engine(model, tmp_path / "m.engine", log=lambda s: None)
    assert not (tmp_path / "m.engine").exists()
