"""``mrcnn-edge benchmark`` by default (issue 20): every CPU engine at the precisions it offers over a
set of frames, the floor of each ONNX row from its graph's arithmetic, the row ``run`` would take
marked; and the arithmetic count itself on graphs small enough to count by hand."""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.commands.cli import main

onnx = pytest.importorskip("onnx")

from mrcnn_edge.commands.benchmark import default_rows  # noqa: E402
from mrcnn_edge.commands.floors import GraphCost, floor_ms, graph_cost, parse_gemm_limits  # noqa: E402
from mrcnn_edge.core.errors import UserError  # noqa: E402


def _graph(nodes, inits, x_shape, y_name, y_shape):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in inits.items()]
    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, y_shape)], inits),
        opset_imports=[helper.make_opsetid("", 18)])


def test_the_arithmetic_of_weighted_ops_counted_from_shapes():
    from onnx import helper

    # x [1,8,16,16] -> 3x3 conv to 4 channels (pad 1) -> 2x2 stride-2 transposed conv to 6 -> flatten -> Gemm to 10
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["a", "w2"], ["b"], strides=[2, 2]),
             helper.make_node("Flatten", ["b"], ["c"]),
             helper.make_node("Gemm", ["c", "w3"], ["y"], transB=1)]
    model = _graph(nodes, {"w1": (4, 8, 3, 3), "w2": (4, 6, 2, 2), "w3": (10, 6 * 32 * 32)}, [1, 8, 16, 16], "y", [1, 10])
    conv = 4 * 16 * 16 * 8 * 3 * 3          # outputs x (inputs per output)
    deconv = 4 * 16 * 16 * 6 * 2 * 2        # inputs x (outputs each input reaches)
    gemm = 10 * 6 * 32 * 32
    cost = graph_cost(model)
    assert cost.fixed == {"int8": 0.0, "float": float(conv + deconv + gemm)} and cost.per_row["float"] == 0.0
    assert cost.gflop(0) == pytest.approx(2e-9 * (conv + deconv + gemm))


def test_a_mask_head_on_the_detections_costs_per_row():
    from onnx import helper

    # the rows of a mask head on the detections are a symbolic dimension after shape inference
    model = _graph([helper.make_node("Conv", ["x", "w"], ["y"])], {"w": (5, 3, 1, 1)}, ["rows", 3, 14, 14],
                   "y", ["rows", 5, 14, 14])
    cost = graph_cost(model)
    assert cost.per_row["float"] == 5 * 14 * 14 * 3 and cost.fixed["float"] == 0.0
    assert floor_ms(cost, 10, {"fp32": 1.0}, "fp32") == pytest.approx(2 * 10 * 5 * 14 * 14 * 3 / 1e9 * 1e3)


def test_int8_layers_count_at_the_int8_rate():
    cost = GraphCost(fixed={"int8": 3e9, "float": 1e9})
    # 6 GOP at 600 GOP/s + 2 GFLOP at 100 GFLOP/s = 10 ms + 20 ms
    assert floor_ms(cost, 0, {"int8": 600.0, "fp32": 100.0}, "fp32") == pytest.approx(30.0)


def test_the_probes_count_what_they_compute():
    """The GEMM probes' FLOP per call (what the limits divide by) is their direct arithmetic, and
    the INT8 probes carry the quantize-dequantize that makes OpenVINO compute them in INT8."""
    ov = pytest.importorskip("openvino")
    from mrcnn_edge.commands.floors import _conv_model, _matmul_model

    model, shape, flop = _conv_model(ov, 8, 16, int8=False)
    assert shape == (1, 8, 16, 16) and flop == 2 * 8 * 8 * 9 * 16 * 16
    model, shape, flop = _matmul_model(ov, 32, int8=False)
    assert shape == (32, 32) and flop == 2 * 32 ** 3
    for make in (lambda: _conv_model(ov, 8, 16, int8=True), lambda: _matmul_model(ov, 32, int8=True)):
        types = [op.get_type_name() for op in make()[0].get_ops()]
        assert types.count("FakeQuantize") == 2, types


def test_gemm_limits_are_checked_in_one_line(capsys):
    assert parse_gemm_limits("fp32=139,bf16=392,int8=548") == {"fp32": 139.0, "bf16": 392.0, "int8": 548.0}
    for bad in ("fp64=3", "fp32=-1", "fp32=fast"):
        with pytest.raises(UserError, match="PRECISION=GFLOPS"):
            parse_gemm_limits(bad)
    rc = main(["benchmark", "--gemm-limits", "fp64=3", "--backends", "edge"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--gemm-limits" in err[0], err


def test_default_rows_are_every_cpu_engine_at_its_precisions():
    labels = [r.label for r in default_rows(True, None)]
    assert labels == ["torchvision", "onnxruntime fp32", "openvino fp32", "openvino bf16"]
    with_int8 = default_rows(True, None, "m.int8.onnx")
    assert [r.label for r in with_int8[-3:]] == ["onnxruntime int8", "openvino int8", "openvino int8 bf16"]
    assert all(r.model == "m.int8.onnx" for r in with_int8[-3:])
    assert [r.options.get("precision") for r in with_int8[-2:]] == ["int8", "bf16"]  # the float parts
    # OpenVINO (and its bf16) may be missing on a machine: skipped with a note; ONNX Runtime is not
    assert [r.label for r in with_int8 if not r.implicit] == ["torchvision", "onnxruntime fp32", "onnxruntime int8"]


@pytest.mark.slow
def test_the_default_benchmark_marks_what_run_takes(tmp_path, capsys):
    """No rows given: the demo's validation split, every CPU engine, AP beside each row, a floor for
    each engine row, and exactly one row marked as the one ``run`` takes on the portable model."""
    pytest.importorskip("openvino", reason="the default rows' automatic choice is OpenVINO's on x86")
    import json

    js = tmp_path / "b.json"
    rc = main(["benchmark", "--input-size", "64x64", "--frames", "2", "--warmup", "0", "--gemm-limits",
               "fp32=100,bf16=200,int8=400", "--json", str(js)])
    out, err = capsys.readouterr()
    assert rc == 0, err[-500:]
    data = json.loads(js.read_text())
    results = data["results"]
    assert {"torchvision", "onnxruntime fp32", "openvino fp32"} <= set(results)
    marked = [k for k, r in results.items() if r["run_default"]]
    assert len(marked) == 1 and marked[0].startswith("openvino "), marked
    assert f"**{marked[0]}** (run's default)" in out and "run's default on the portable model" in err
    for label, r in results.items():
        assert r["mask_AP"] is not None and 0 <= r["mask_AP"] <= 1
        assert (r["floor_ms"] is not None) == (label != "torchvision"), label
        if r["floor_ms"] is not None:
            assert 0 < r["floor_ms"] and r["floor_share"] == pytest.approx(r["floor_ms"] / r["stages_ms"]["infer"]["mean"])


@pytest.mark.parametrize("int8_ap, bf16_ap, stamp, bf16_taken", [
    (0.60, 0.595, None, True),     # these frames: the bf16 float parts within 0.01 of the fp32 ones
    (0.60, 0.585, None, False),    # 0.015 lost on these frames
    (0.60, 0.50, (0.60, 0.60), True),  # the model's own record decides over these frames
])
def test_the_row_run_takes_on_an_int8_model(tmp_path, int8_ap, bf16_ap, stamp, bf16_taken):
    """With --int8 the row auto takes on the INT8 model is marked too, by the same rule as the float model's."""
    ov = pytest.importorskip("openvino", reason="the INT8 rows are OpenVINO's")
    from mrcnn_edge.commands.benchmark import RowResult, Timing, _openvino_default
    from mrcnn_edge.export.validated_precisions import bf16_record
    from mrcnn_edge.runtime.backends.openvino import cpu_has_bf16
    from mrcnn_edge.runtime.testing import make_contract_model

    meta = {"validated_precisions": {"bf16": bf16_record(*stamp, 100, "val")}} if stamp else None
    model = make_contract_model(tmp_path / "m.int8.onnx", precision="int8", metadata=meta)
    t = Timing(1.0, 1.0, 1.0, 1.0)
    results = {label: RowResult(label, "openvino", str(model), t, {}, 1.0, mask_AP=ap)
               for label, ap in (("openvino int8", int8_ap), ("openvino int8 bf16", bf16_ap))}
    label, why = _openvino_default(model, results, "openvino int8", "openvino int8 bf16", 20)
    taken = bf16_taken and cpu_has_bf16(ov.Core())
    assert label == ("openvino int8 bf16" if taken else "openvino int8"), why
    assert why.startswith("auto: ") and ("judged on these frames" in why) == (stamp is None)
