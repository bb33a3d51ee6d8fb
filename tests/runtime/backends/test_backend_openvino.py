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
