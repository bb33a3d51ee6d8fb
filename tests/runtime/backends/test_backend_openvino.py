"""The OpenVINO backend against the I/O contract (tiny contract models), its refusals, and the
backend table's automatic choice of it on x86 CPUs without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime import backends
from mrcnn_edge.runtime.backends import BACKENDS, backend_for
from mrcnn_edge.runtime.spec import TensorSpec
from mrcnn_edge.runtime.testing import make_contract_model

pytest.importorskip("onnx")
ov = pytest.importorskip("openvino", reason="the [openvino] extra is not installed")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    return {"fp32": make_contract_model(d / "fp32.onnx"), "b2": make_contract_model(d / "b2.onnx", batch=2),
            "trt": make_contract_model(d / "trt.onnx", flavor="tensorrt")}


def test_openvino_backend_matches_onnx_runtime(models):
    from mrcnn_edge.runtime.backends.ort import OrtBackend
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend

    x = np.random.default_rng(0).uniform(-2, 2, (2, 3, 128, 160)).astype(np.float32)
    with OpenVinoBackend(models["b2"], precision="fp32") as be, OrtBackend(models["b2"], device="cpu") as ref:
        assert be.inputs["images"] == TensorSpec("images", (2, 3, 128, 160), np.dtype(np.float32))
        assert {k: s.dtype for k, s in be.outputs.items()} == {k: s.dtype for k, s in ref.outputs.items()}
        assert be.metadata["input_size"] == [128, 160] and be.description == "openvino (CPU, fp32)"
        got, want = be.infer({"images": x}), ref.infer({"images": x})
        assert set(got) == set(want)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
        with pytest.raises(ValueError, match="float32"):  # a wrong feed fails before OpenVINO
            be.infer({"images": x.astype(np.float16)})


def test_openvino_backend_refusals_are_one_line(models):
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend

    with pytest.raises(UserError, match="'tensorrt' flavor.*--flavor portable"):
        OpenVinoBackend(models["trt"])
    with pytest.raises(UserError, match="precision 'int4'"):
        OpenVinoBackend(models["fp32"], precision="int4")
    with pytest.raises(UserError, match="no device NPU9"):
        OpenVinoBackend(models["fp32"], device="NPU9")


def test_bf16_only_where_openvino_says_the_cpu_has_it(models):
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend, cpu_has_bf16

    if cpu_has_bf16(ov.Core()):
        with OpenVinoBackend(models["fp32"], precision="bf16") as be:
            out = be.infer({"images": np.zeros((1, 3, 128, 160), np.float32)})
            assert out["num_detections"].tolist() == [[3]] and be.precision == "bf16"
    else:
        with pytest.raises(UserError, match="no BF16"):
            OpenVinoBackend(models["fp32"], precision="bf16")


def test_auto_picks_openvino_on_x86_without_gpu_for_portable_models(models, monkeypatch):
    from mrcnn_edge.runtime.gpu import trt_platform

    assert "openvino" in BACKENDS and ".onnx" in BACKENDS["openvino"].suffixes
    monkeypatch.setattr(backends.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(trt_platform, "cuda_driver", lambda: trt_platform.CudaDriver(why="none here"))
    assert backend_for(models["fp32"]).name == "openvino"
    assert backend_for(models["trt"]).name == "onnxruntime"  # a plugin node: OpenVINO cannot run it
    assert backend_for(models["fp32"], "onnxruntime").name == "onnxruntime"  # asked for by name
    monkeypatch.setattr(backends.platform, "machine", lambda: "aarch64")  # a Jetson: never OpenVINO
    assert backend_for(models["fp32"]).name == "onnxruntime"


def test_segmenter_runs_on_openvino(models):
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend
    from mrcnn_edge.runtime.segmenter import Segmenter

    frame = np.full((64, 80, 3), 200, np.uint8)
    with Segmenter(OpenVinoBackend(models["fp32"]), score_threshold=0.0) as seg:
        det = seg(frame)
        assert len(det) == 3 and det.masks.shape == (3, 64, 80)


# ---- what `auto` picks, and the refusals of what cannot be had (issue 20) ----------------------------------

def _stamp(fp32_ap: float, bf16_ap: float) -> dict:
    """A ``validated_precisions`` record as 'mrcnn-edge validate' writes it (contract.OPTIONAL_KEYS)."""
    return {"validated_precisions": {"bf16": {"engine": "openvino", "mask_AP": bf16_ap, "fp32_mask_AP": fp32_ap,
                                              "images": 100, "annotations": "val", "date": "2026-12-07"}}}


@pytest.mark.parametrize("cpu_bf16, metadata, expected", [
    (True, _stamp(0.60, 0.595), "bf16"),      # native BF16 and validated within 0.01: bf16
    (True, _stamp(0.60, 0.585), "fp32"),      # measured, but 0.015 lost: outside the bound
    (True, {}, "fp32"),                       # never measured: the model's numbers stay
    (True, _stamp(0.008, 0.008), "fp32"),     # a reference AP within the bound of 0 vouches for nothing
    (False, _stamp(0.60, 0.595), "fp32"),     # validated, but this CPU would emulate BF16
    # an INT8 model: the same rule for its float parts (the record measured against its float parts in fp32)
    (True, {**_stamp(0.60, 0.60), "precision": "int8"}, "bf16"),
    (True, {**_stamp(0.60, 0.585), "precision": "int8"}, "int8"),  # outside the bound: float parts in fp32
    (True, {"precision": "int8"}, "int8"),                          # never measured
    (False, {**_stamp(0.60, 0.60), "precision": "int8"}, "int8"),   # validated, no BF16 here
])
def test_auto_takes_bf16_only_where_the_cpu_has_it_and_the_model_was_validated(cpu_bf16, metadata, expected):
    from mrcnn_edge.runtime.backends.openvino import FLOAT_PARTS, choose_precision

    choice = choose_precision("auto", metadata, cpu_bf16)
    assert choice.precision == expected and choice.why.startswith("auto: ")
    back = "--precision int8" if metadata.get("precision") == "int8" else "--precision fp32"
    assert (back in choice.why) == (expected == "bf16")  # the way back is named where bf16 was taken
    assert FLOAT_PARTS[choice.precision] == ("bf16" if expected == "bf16" else "fp32")
    # the one option back: exact fp32 for a float model, the float parts in fp32 for an INT8 one
    assert choose_precision("fp32", {}, cpu_bf16).precision == "fp32"
    assert choose_precision("int8", {"precision": "int8"}, cpu_bf16).precision == "int8"


@pytest.mark.parametrize("requested, metadata, words", [
    ("fp32", {"precision": "int8"}, "exact fp32 is impossible.*--precision int8"),
    ("int8", {"precision": "fp32"}, "--precision int8 runs an INT8 model.*is fp32"),
    ("int8", {}, "--precision int8 runs an INT8 model"),
    ("fp16", {}, "choose one of auto, fp32, bf16, int8"),
])
def test_precisions_a_model_cannot_have_are_refused(requested, metadata, words):
    from mrcnn_edge.runtime.backends.openvino import choose_precision

    with pytest.raises(UserError, match=words):
        choose_precision(requested, metadata, True)


def test_bf16_keeps_the_boxes_roialign_pools_in_f32(demo_onnx):
    """bf16 rounds a box corner at 256-512 px to 2 px steps; the boxes' arithmetic is marked precise."""
    from mrcnn_edge.runtime.backends.openvino import (OpenVinoBackend, cpu_has_bf16, keep_precise, roi_box_nodes,
                                                      roi_box_precisions)

    core = ov.Core()
    if not cpu_has_bf16(core):
        pytest.skip("this CPU has no BF16 instructions")
    path = demo_onnx("portable")
    model = core.read_model(str(path))
    names = roi_box_nodes(model)
    kinds = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
    assert names and not {kinds[n] for n in names} & {"ROIAlign", "Convolution", "MatMul", "Parameter", "Constant"}
    assert {kinds[n] for n in names} >= {"NonMaxSuppression", "TopK", "Gather"}  # proposals and detections
    hint = {"INFERENCE_PRECISION_HINT": "bf16"}
    plain = roi_box_precisions(core.compile_model(model, "CPU", hint))
    assert plain and "bf16" in plain  # what OpenVINO does by itself: the boxes in bf16
    marked = roi_box_precisions(core.compile_model(keep_precise(core, model, names), "CPU", hint))
    assert len(marked) == len(plain) and set(marked) == {"f32"}, marked
    with OpenVinoBackend(path, precision="bf16") as be, OpenVinoBackend(path, precision="fp32") as exact:
        assert "ROI boxes in f32" in be.description and set(roi_box_precisions(be._compiled)) == {"f32"}
        x = np.zeros((1, 3, *be.metadata["input_size"]), np.float32)
        assert be.infer({"images": x})["boxes"].dtype == exact.infer({"images": x})["boxes"].dtype == np.float32


def test_bf16_runs_without_the_marks_where_they_cannot_be_made(demo_onnx, tmp_path, monkeypatch, caplog):
    """The marks go through a temporary IR copy: no temporary folder (a full disk) costs accuracy, not the run."""
    import tempfile

    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend, cpu_has_bf16, roi_box_precisions

    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
    with caplog.at_level("WARNING"), OpenVinoBackend(demo_onnx("portable"), precision="bf16") as be:
        assert be.description.startswith("openvino (CPU, bf16 (ROI boxes in bf16 too)")
        assert "bf16" in roi_box_precisions(be._compiled)
        out = be.infer({"images": np.zeros((1, 3, *be.metadata["input_size"]), np.float32)})
        assert out["boxes"].shape[-1] == 4
    assert "could not mark them f32" in caplog.text and "no-such-folder" in caplog.text


def test_bf16_on_a_full_disk_says_where_and_why(demo_onnx, tmp_path, monkeypatch, caplog, media_tools):
    """A temp folder on a real full disk (a tmpfs): OpenVINO's own reason for the failed copy is one
    cryptic line ('basic_ios::clear: iostream error'), so the warning names the folder and the cause;
    nothing is left in it, and bf16 runs unmarked."""
    import tempfile

    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend, cpu_has_bf16

    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    disk = tmp_path / "disk"
    with media_tools.small_disk(disk, 64) as mounted:
        if not mounted:
            pytest.skip("no tmpfs can be mounted here (not root): the no-temp-folder test covers the fallback")
        (disk / "filler").write_bytes(b"\0" * (64 * 1024 - 4096))  # what the tmpfs has room for, less a page
        monkeypatch.setattr(tempfile, "tempdir", str(disk))
        with caplog.at_level("WARNING"), OpenVinoBackend(demo_onnx("portable"), precision="bf16") as be:
            assert "(ROI boxes in bf16 too)" in be.description
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    assert "could not mark them f32 (writing a copy of the model into " + str(disk) in caplog.text
    assert "a full disk? TMPDIR names another folder" in caplog.text


def test_bf16_says_so_where_openvino_did_not_keep_the_marks(demo_onnx, monkeypatch, caplog):
    """An OpenVINO release that takes the IR copy but ignores its marks: the compiled graph tells."""
    from mrcnn_edge.runtime.backends import openvino as ovb

    if not ovb.cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    monkeypatch.setattr(ovb, "keep_precise", lambda core, model, names: model)  # marks silently dropped
    with caplog.at_level("WARNING"), ovb.OpenVinoBackend(demo_onnx("portable"), precision="bf16") as be:
        assert "(ROI boxes in bf16 too)" in be.description
    assert "did not keep the operations marked precise" in caplog.text


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    """A CPU whose OpenVINO lists no BF16 in OPTIMIZATION_CAPABILITIES (this machine's answer replaced)."""
    real = ov.Core.get_property

    def get_property(core, *args):
        value = real(core, *args)
        return [c for c in value if c != "BF16"] if "OPTIMIZATION_CAPABILITIES" in args else value

    monkeypatch.setattr(ov.Core, "get_property", get_property)


def _run_one_line_error(capsys, argv: list[str], words: str) -> None:
    from mrcnn_edge.commands.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and words in err[0], err


def test_what_cannot_be_had_is_one_line(models, tmp_path, capsys, no_bf16_cpu, monkeypatch):
    import cv2

    cv2.imwrite(str(tmp_path / "f.png"), np.full((64, 80, 3), 200, np.uint8))
    run = ["run", "--source", str(tmp_path / "f.png"), "--no-display", "--backend", "openvino"]
    _run_one_line_error(capsys, [*run[:1], str(models["fp32"]), *run[1:], "--precision", "bf16"], "no BF16")
    int8 = make_contract_model(tmp_path / "m.int8.onnx", precision="int8")
    _run_one_line_error(capsys, [*run[:1], str(int8), *run[1:], "--precision", "fp32"], "exact fp32 is impossible")
    _run_one_line_error(capsys, [*run[:1], str(models["fp32"]), *run[1:], "--precision", "int8"],
                        "runs an INT8 model")
    out = tmp_path / "cam.mp4"  # a camera takes its newest frame when the model is free: one request
    _run_one_line_error(capsys, ["run", str(models["fp32"]), "--source", "rtsp://127.0.0.1:9/cam", "--no-display",
                                 "-o", str(out), "--requests", "2"], "--requests is for files")
    assert not out.exists()
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    _run_one_line_error(capsys, [*run[:1], str(models["fp32"]), *run[1:]], "openvino")


def test_run_says_what_auto_picked(models, tmp_path, capsys, no_bf16_cpu):
    import cv2

    from mrcnn_edge.commands.cli import main

    cv2.imwrite(str(tmp_path / "f.png"), np.full((64, 80, 3), 200, np.uint8))
    stamped = make_contract_model(tmp_path / "stamped.onnx", metadata=_stamp(0.60, 0.598))
    assert main(["run", str(stamped), "--source", str(tmp_path / "f.png"), "--no-display", "--backend", "openvino"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "openvino (CPU, fp32" in ln and "; auto: " in ln]
    assert len(lines) == 1 and "no BF16" in lines[0], lines


def test_validated_bf16_is_what_auto_runs_on_a_bf16_cpu(tmp_path):
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend, cpu_has_bf16

    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    stamped = make_contract_model(tmp_path / "stamped.onnx", metadata=_stamp(0.60, 0.598))
    with OpenVinoBackend(stamped) as be, OpenVinoBackend(stamped, precision="fp32") as exact:
        assert be.precision == "bf16" and "validated" in be.description and "--precision fp32" in be.description
        assert exact.precision == "fp32" and exact.description == "openvino (CPU, fp32)"
        assert be._compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "bf16"
        assert exact._compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"


def test_run_says_the_portable_export_is_the_fast_one_on_a_cpu(models, tmp_path, capsys, monkeypatch):
    """A tensorrt-flavor model on a CPU: one line saying the portable export is the one to run there."""
    import cv2

    from mrcnn_edge.runtime.backends import ort as backend_ort

    # as in a fresh 'mrcnn-edge run': no plugin reference registered by an earlier test (export's ort_custom)
    monkeypatch.setattr(backend_ort, "CUSTOM_OP_DOMAINS", {})

    cv2.imwrite(str(tmp_path / "f.png"), np.full((64, 80, 3), 200, np.uint8))
    run = ["--source", str(tmp_path / "f.png"), "--no-display", "--device", "cpu"]
    _run_one_line_error(capsys, ["run", str(models["trt"]), *run], "'--flavor portable' (on a CPU the fast one")
    _run_one_line_error(capsys, ["run", str(models["trt"]), *run, "--backend", "openvino"],
                        "'--flavor portable', the fast one on CPUs")


def test_requests_in_flight_give_the_answers_of_one(models, tmp_path):
    """``requests=2``: OpenVINO's throughput mode with two requests; calls from two threads at once
    each return their own frame's answers, equal to one request's, in arrays that a later call
    does not overwrite."""
    import threading

    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend

    path = make_contract_model(tmp_path / "m.onnx", canvas_hw=(64, 96))
    rng = np.random.default_rng(0)
    feeds = [{"images": rng.standard_normal((1, 3, 64, 96)).astype(np.float32) * (1 + i)} for i in range(8)]
    with OpenVinoBackend(path, precision="fp32") as one, OpenVinoBackend(path, precision="fp32", requests=2) as two:
        assert (one.requests, two.requests) == (1, 2) and "2 requests in flight" in two.description
        assert str(two._compiled.get_property("PERFORMANCE_HINT")).endswith("THROUGHPUT")
        want = [{k: np.array(v, copy=True) for k, v in one.infer(f).items()} for f in feeds]
        got: dict[int, dict] = {}

        def worker(indices):
            for i in indices:
                got[i] = two.infer(feeds[i])

        threads = [threading.Thread(target=worker, args=(range(k, 8, 2),)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i in range(8):  # every call's arrays are still its own after the later calls
            for name, value in want[i].items():
                np.testing.assert_array_equal(got[i][name], value, err_msg=f"frame {i} {name}")


def test_requests_must_be_a_positive_whole_number(models, tmp_path):
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend

    path = make_contract_model(tmp_path / "m.onnx", canvas_hw=(64, 96))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="requests"):
            OpenVinoBackend(path, requests=bad)


def test_run_takes_two_requests_for_a_file_and_one_for_a_camera(models, tmp_path, capsys, monkeypatch):
    """``run`` without --requests: OpenVINO's throughput mode (2 requests) for one file on a CPU with 2+
    cores, the latency mode for a camera, several sources or a backend chosen by another option;
    --requests N is taken as given, and refused in one line for a backend without requests."""
    import cv2

    from mrcnn_edge.commands.cli import main
    from mrcnn_edge.runtime import cli as run_cli, segmenter as segmenter_module
    from mrcnn_edge.runtime.run import check_run
    from mrcnn_edge.runtime.segmenter import Segmenter

    image = tmp_path / "f.png"
    cv2.imwrite(str(image), np.full((64, 80, 3), 200, np.uint8))
    model = str(models["fp32"])

    def requests(**kw):
        with Segmenter.from_path(model, throughput=True, **kw) as seg:
            return seg.backend.requests

    monkeypatch.setattr(segmenter_module.os, "cpu_count", lambda: 2)
    assert run_cli.frames_queue_up(check_run([str(image)], [])) and requests() == 2
    assert not run_cli.frames_queue_up(check_run(["rtsp://127.0.0.1:9/cam"], []))
    assert run_cli.frames_queue_up(check_run([str(image), str(image)], []))  # the batcher: a worker per request
    assert requests(providers=["CPUExecutionProvider"]) == 1  # ONNX Runtime chosen: one at a time
    assert requests(backend="onnxruntime") == 1
    assert requests(requests=3) == 3  # as given
    monkeypatch.setattr(segmenter_module.os, "cpu_count", lambda: 1)
    assert requests() == 1
    monkeypatch.setattr(segmenter_module.os, "cpu_count", lambda: 2)

    assert main(["run", model, "--source", str(image), "--no-display", "--backend", "openvino"]) == 0
    assert "2 requests in flight" in capsys.readouterr().err
    assert main(["run", model, "--source", str(image), "--no-display", "--backend", "openvino", "--requests", "1"]) == 0
    assert "requests in flight" not in capsys.readouterr().err
    rc = main(["run", model, "--source", str(image), "--no-display", "--backend", "onnxruntime", "--requests", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--requests applies to OpenVINO" in err[0], err
