"""Backends against the I/O contract: ONNX Runtime on tiny contract models; the TensorRT backend's
checks (sidecar, version, plugin) without TensorRT; a real engine only where TensorRT runs."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import write_sidecar
from mrcnn_edge.runtime.backends import BACKENDS, backend_for, open_backend
from mrcnn_edge.core.onnx_info import read_onnx_info
from mrcnn_edge.runtime.spec import TensorSpec, model_spec
from mrcnn_edge.runtime.testing import contract_metadata, make_contract_model

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "fp32": make_contract_model(d / "fp32.onnx"),
        "fp16": make_contract_model(d / "fp16.onnx", precision="fp16", batch=2),
        "trt": make_contract_model(d / "trt.onnx", flavor="tensorrt"),
        "nometa": make_contract_model(d / "nometa.onnx", with_metadata=False),
    }


def test_ort_backend_follows_the_contract(models):
    from mrcnn_edge.runtime.backends.ort import OrtBackend

    with OrtBackend(models["fp32"], device="cpu") as be:
        assert be.providers == ["CPUExecutionProvider"]
        assert be.inputs["images"] == TensorSpec("images", (1, 3, 128, 160), np.dtype(np.float32))
        x = np.zeros((1, 3, 128, 160), np.float32)
        out = be.infer({"images": x})
        assert {k: v.dtype for k, v in out.items()} == {
            "num_detections": np.int32, "boxes": np.float32, "scores": np.float32, "classes": np.int32,
            "masks": np.float32}
        assert out["num_detections"].tolist() == [[3]] and out["classes"][0, 3:].tolist() == [-1, -1]
        # buffers are allocated once and reused by the next call
        again = be.infer({"images": x + 1})
        assert again["scores"] is out["scores"] or np.shares_memory(again["scores"], out["scores"])
        assert be.metadata["input_size"] == [128, 160] and be.metadata["flavor"] == "portable"


def test_ort_backend_fp16_model_takes_half_input(models):
    from mrcnn_edge.runtime.backends.ort import OrtBackend

    with OrtBackend(models["fp16"]) as be:
        assert be.inputs["images"].dtype == np.float16 and be.outputs["masks"].dtype == np.float16
        out = be.infer({"images": np.zeros((2, 3, 128, 160), np.float16)})
        assert out["masks"].shape == (2, 5, 8, 8)
        with pytest.raises(ValueError, match="float16"):
            be.infer({"images": np.zeros((2, 3, 128, 160), np.float32)})


def test_tensorrt_flavor_is_refused_by_onnxruntime_with_one_line(models, monkeypatch):
    from mrcnn_edge.runtime.backends import ort as backend_ort
    # as on a runtime-only install: nothing (validate, in an earlier test) registered the plugin's domain
    monkeypatch.setattr(backend_ort, "CUSTOM_OP_DOMAINS", {})
    with pytest.raises(UserError) as err:
        open_backend(models["trt"])
    msg = str(err.value)
    assert "tensorrt' flavor" in msg and "--flavor portable" in msg and "mrcnn-edge build" in msg and "\n" not in msg


def test_custom_op_domain_hook_is_called(models, monkeypatch):
    from mrcnn_edge.runtime.backends import ort as backend_ort

    seen = []

    def hook(options):
        seen.append(options)
        raise UserError("hook ran")  # stands in for registering an ORT custom-op library

    monkeypatch.setitem(backend_ort.CUSTOM_OP_DOMAINS, "mrcnn_edge", backend_ort.CustomOpDomain(hook))
    with pytest.raises(UserError, match="hook ran"):
        backend_ort.OrtBackend(models["trt"])
    assert seen


def test_provider_choice():
    from mrcnn_edge.runtime.backends.ort import choose_providers

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu) == gpu
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu, device="cpu") == ["CPUExecutionProvider"]
    assert choose_providers(gpu, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(UserError, match="onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], device="cuda")
    with pytest.raises(UserError, match="no CUDAExecutionProvider"):
        choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])


def test_backend_table_dispatches_by_suffix(tmp_path):
    assert backend_for("m.onnx").name == "onnxruntime" and backend_for("m.engine").name == "tensorrt"
    assert set(BACKENDS) == {"onnxruntime", "tensorrt", "openvino", "triton"}
    with pytest.raises(UserError, match="build an engine first"):
        backend_for("m.onnx", "tensorrt")
    with pytest.raises(UserError, match="don't know how to run"):
        backend_for("m.pth")
    with pytest.raises(UserError, match="not found"):
        open_backend(tmp_path / "missing.onnx")


def test_onnx_info_reads_metadata_without_onnx(models):
    info = read_onnx_info(models["trt"])
    assert json.loads(info.metadata["flavor"]) == "tensorrt"
    assert info.custom_ops() == {("mrcnn_edge", "MultilevelRoIAlign")}
    assert read_onnx_info(models["fp32"]).custom_ops() == set()


@pytest.mark.parametrize("content", [b"", b"\x08\x07garbage\xff\xff", b"PK\x03\x04zipfile"])
def test_corrupt_model_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        open_backend(path)
    assert "model.onnx" in str(err.value) and "\n" not in str(err.value)


# -- model spec (metadata) ----------------------------------------------------------------------------
def _specs(h=128, w=160, dtype=np.float32):
    inputs = {"images": TensorSpec("images", (1, 3, h, w), np.dtype(dtype))}
    outputs = {n: TensorSpec(n, s, np.dtype(t)) for n, s, t in [
        ("num_detections", (1,), np.int32), ("boxes", (1, 5, 4), np.float32), ("scores", (1, 5), np.float32),
        ("classes", (1, 5), np.int32), ("masks", (1, 5, 28, 28), np.float32)]}
    return inputs, outputs


def test_model_without_metadata_is_refused(models):
    from mrcnn_edge.runtime.segmenter import Segmenter

    with pytest.raises(UserError) as err:
        Segmenter.from_path(models["nometa"])
    assert "has no mrcnn-edge metadata" in str(err.value) and "mrcnn-edge export" in str(err.value)


@pytest.mark.parametrize("change,words", [
    ({"input_size": [64, 64]}, "metadata input_size is [64, 64]"),
    ({"mean": [0.5, 0.5]}, "'mean' must be 3 numbers"),
    ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
    ({"class_names": "cat"}, "class_names must be a list"),
    ({"channel_order": "BGR"}, "channel_order"),
])
def test_bad_metadata_is_refused(change, words):
    meta = contract_metadata((128, 160), 1, ["__background__", "a"], 28, 5)
    meta.update(change)
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        model_spec("m.onnx", meta, *_specs())


@pytest.mark.parametrize("shape,ok", [((1, 1), True), ((1,), True), ((1, 2), False), ((1, 1, 1), False)])
def test_num_detections_of_the_contract_and_of_older_models(shape, ok):
    """[B,1] is the contract; [B], from models exported before it, is still read; nothing else."""
    meta = contract_metadata((128, 160), 1, ["__background__", "a"], 28, 5)
    inputs, outputs = _specs()
    outputs["num_detections"] = TensorSpec("num_detections", shape, np.dtype(np.int32))
    if ok:
        assert model_spec("m.onnx", meta, inputs, outputs).batch == 1
    else:
        with pytest.raises(UserError, match=r"'num_detections' has shape .*contract has \[B,1\]"):
            model_spec("m.onnx", meta, inputs, outputs)


def test_missing_outputs_are_named():
    meta = contract_metadata((128, 160), 1, ["__background__", "a"], 28, 5)
    inputs, outputs = _specs()
    del outputs["masks"]
    with pytest.raises(UserError, match=r"missing outputs \['masks'\]"):
        model_spec("m.onnx", meta, inputs, outputs)


# -- TensorRT backend without TensorRT --------------------------------------------------------------
def _engine(tmp_path, **meta_changes):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not really an engine")
    meta = contract_metadata((128, 160), 1, ["__background__", "a"], 28, 5, flavor="tensorrt")
    meta.update({"tensorrt_version": "10.3.0.26", "onnx_sha256": "0" * 64, "plugin_library": "libmrcnn_edge_plugins.so"})
    meta.update(meta_changes)
    write_sidecar(engine, meta)
    return engine


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """A stand-in ``tensorrt`` module: enough to reach the checks that run before deserialising."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0.26"
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def test_engine_without_sidecar_is_refused(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    with pytest.raises(UserError, match="sidecar"):
        open_backend(engine)


def test_engine_needs_tensorrt_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(UserError, match="TensorRT is not installed"):
        open_backend(_engine(tmp_path))


def test_engine_from_another_tensorrt_version_is_refused(tmp_path, fake_tensorrt):
    fake_tensorrt.__version__ = "10.7.0.23"
    with pytest.raises(UserError) as err:
        open_backend(_engine(tmp_path))
    msg = str(err.value)
    assert "built with TensorRT 10.3.0.26 but TensorRT 10.7.0.23 is installed" in msg and "rebuild" in msg


def test_missing_plugin_library_is_refused(tmp_path, fake_tensorrt, monkeypatch):
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(tmp_path / "cache"))  # no build-plugin output there
    with pytest.raises(UserError) as err:
        open_backend(_engine(tmp_path))
    msg = str(err.value)
    assert "MultilevelRoIAlign v1 (mrcnn_edge)" in msg and "mrcnn-edge build-plugin" in msg and "--plugin-lib" in msg
    with pytest.raises(UserError, match="from --plugin-lib"):
        open_backend(_engine(tmp_path), plugin_lib=tmp_path / "nope.so")


def test_plugin_library_resolution(tmp_path, monkeypatch):
    """One lookup for build (an ONNX model), run and serve (an engine and its sidecar)."""
    from mrcnn_edge.runtime.backends.trt import check_tensorrt_version
    from mrcnn_edge.runtime.gpu.trt_platform import resolve_plugin_library

    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(tmp_path / "cache"))
    built = tmp_path / "cache" / "plugins" / "libmrcnn_edge_plugins.so"  # where build-plugin writes

    engine = tmp_path / "sub" / "model.engine"
    engine.parent.mkdir()
    lib = tmp_path / "sub" / "libplug.so"
    lib.write_bytes(b"")
    plugin = {"name": "MultilevelRoIAlign", "version": "1", "namespace": "mrcnn_edge"}
    # relative to the engine's folder; an absolute path from another machine falls back to the name
    assert resolve_plugin_library(engine, {"plugin": plugin, "plugin_library": "libplug.so"}) == lib
    assert resolve_plugin_library(engine, {"plugin": plugin, "plugin_library": "/elsewhere/libplug.so"}) == lib
    assert resolve_plugin_library(engine, {"plugin": None, "plugin_library": None}) is None
    assert resolve_plugin_library(engine, {"plugin": None}, lib) == lib  # given: loaded, needed or not
    needs = {"plugin": plugin, "plugin_library": "/elsewhere/libmissing.so"}
    with pytest.raises(UserError) as err:
        resolve_plugin_library(engine, needs)
    msg = str(err.value)
    assert "libmissing.so" in msg and str(built) in msg and "mrcnn-edge build-plugin" in msg and "\n" not in msg
    # an ONNX model with plugin nodes (build, serve): no sidecar, the build-plugin output only
    onnx = tmp_path / "sub" / "model.onnx"
    with pytest.raises(UserError, match="model.onnx needs the plugin library of the TensorRT plugin "
                                        r"MultilevelRoIAlign v1 \(mrcnn_edge\)"):
        resolve_plugin_library(onnx, {}, needed=True)
    assert resolve_plugin_library(onnx, {"plugin": plugin}, needed=False) is None  # a portable graph
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")
    assert resolve_plugin_library(engine, needs) == built
    assert resolve_plugin_library(onnx, {}, needed=True) == built
    with pytest.raises(UserError, match="from --plugin-lib"):
        resolve_plugin_library(onnx, {}, tmp_path / "nope.so", needed=True)
    check_tensorrt_version({"tensorrt_version": "10.3.0"}, "10.3.0.26", engine)  # build number is not checked
    check_tensorrt_version({}, "10.3.0", engine)  # unknown: warn, go on


def test_one_tensorrt_logger_prints_keeps_errors_and_can_be_quiet(capsys):
    """build and the runtime log TensorRT through trt_platform.make_logger."""
    from fakes.fake_tensorrt import FakeProcess, Severity

    from mrcnn_edge.runtime.gpu.trt_platform import make_logger

    trt = FakeProcess().tensorrt("10.3.0")
    logger = make_logger(trt)
    logger.log(Severity.INFO, "info line")
    logger.log(Severity.WARNING, "careful")
    logger.log(Severity.ERROR, "  broken  ")
    logger.quiet = True
    logger.log(Severity.ERROR, "held back")
    err = capsys.readouterr().err
    assert "[TensorRT] WARNING: careful" in err and "[TensorRT] ERROR:   broken" in err
    assert "info line" not in err and "held back" not in err
    assert logger.errors == ["broken", "held back"]
    verbose = make_logger(trt, verbose=True)
    verbose.log(Severity.VERBOSE, "every detail")
    assert "[TensorRT] VERBOSE: every detail" in capsys.readouterr().err


@pytest.mark.tensorrt
def test_tensorrt_backend_runs_an_engine(tmp_path):
    """Builds an engine from the portable contract model and compares it with ONNX Runtime."""
    import tensorrt as trt

    from mrcnn_edge.runtime.backends.ort import OrtBackend
    from mrcnn_edge.runtime.backends.trt import TrtBackend

    onnx_path = make_contract_model(tmp_path / "m.onnx")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_path.read_bytes())
    plan = builder.build_serialized_network(network, builder.create_builder_config())
    engine = tmp_path / "m.engine"
    engine.write_bytes(bytes(plan))
    meta = json.loads(json.dumps(contract_metadata((128, 160), 1, ["__background__", "square", "disk"], 8, 5)))
    meta.update({"tensorrt_version": trt.__version__, "plugin_library": None})
    write_sidecar(engine, meta)
    x = np.random.default_rng(0).normal(size=(1, 3, 128, 160)).astype(np.float32)
    with TrtBackend(engine, cuda_graph=True) as be, OrtBackend(onnx_path, device="cpu") as ref:
        got, want = be.infer({"images": x}), ref.infer({"images": x})
        for name in want:
            assert np.allclose(got[name], want[name], atol=1e-3), name


# -- the backend table: the options each backend takes, checked generically ---------------------------
def test_backend_rows_declare_the_keywords_their_classes_take():
    """Each row's options are its class's keywords, with the class's defaults (so the table the
    CLI, the checks and the docs read cannot drift from the code)."""
    import importlib
    import inspect

    for entry in BACKENDS.values():
        cls = getattr(importlib.import_module(entry.module), entry.cls)
        params = {n: p for n, p in list(inspect.signature(cls.__init__).parameters.items())[2:]
                  if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        declared = {o.name: o.default for o in entry.options}
        # a class may take keywords only to refuse them (Triton: --plugin-lib): those are not options
        refused = {"plugin_lib", "cuda_graph"} if entry.name == "triton" else set()
        assert {n: p.default for n, p in params.items() if n not in refused} == declared, entry.name


@pytest.mark.parametrize("backend,options,words", [
    ("onnxruntime", {"cuda_graph": True}, "--cuda-graph applies to TensorRT engines, not ONNX Runtime"),
    ("onnxruntime", {"plugin_lib": "x.so", "cuda_graph": True},
     "--plugin-lib and --cuda-graph apply to TensorRT engines, not ONNX Runtime"),
    ("tensorrt", {"precision": "bf16"}, "--precision applies to OpenVINO, not TensorRT engines"),
    ("tensorrt", {"providers": ["CPUExecutionProvider"]}, "--providers applies to ONNX Runtime, not TensorRT engines"),
    ("onnxruntime", {"threads": 0}, "threads 0 for the onnxruntime backend: expected at least 1"),
    ("onnxruntime", {"threads": "two"}, "threads 'two' for the onnxruntime backend: expected a whole number"),
    ("onnxruntime", {"device": "gpu"}, "--device 'gpu' for the onnxruntime backend: expected one of auto, cpu, cuda"),
    ("openvino", {"precision": "int4"}, "--precision 'int4' for the openvino backend: expected one of auto, fp32, bf16"),
    ("tensorrt", {"cuda_graph": "maybe"}, "--cuda-graph 'maybe' for the tensorrt backend: expected true or false"),
    ("onnxruntime", {"warp_speed": 9}, "the onnxruntime backend has no option 'warp_speed' (it takes: providers, device"),
])
def test_open_backend_checks_options_against_the_table(models, backend, options, words):
    from mrcnn_edge.runtime.backends import check_options

    with pytest.raises(UserError) as err:
        check_options(BACKENDS[backend], options)
    assert words in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match=words.split(" (")[0].replace("'", ".").replace("-", ".")):
        open_backend(models["fp32"] if backend != "tensorrt" else models["fp32"].with_suffix(".engine"), backend,
                     **options) if backend != "tensorrt" else check_options(BACKENDS[backend], options)


def test_options_given_as_text_are_converted(models):
    """``benchmark --row onnxruntime::threads=1,providers=CPUExecutionProvider`` gives strings."""
    from mrcnn_edge.runtime.backends import check_options

    got = check_options(BACKENDS["onnxruntime"], {"threads": "2", "providers": "CPUExecutionProvider, X"})
    assert got == {"threads": 2, "providers": ["CPUExecutionProvider", "X"]}
    assert check_options(BACKENDS["tensorrt"], {"cuda_graph": "true"}) == {"cuda_graph": True}
    assert check_options(BACKENDS["triton"], {"timeout": 2}) == {"timeout": 2.0}
    with open_backend(models["fp32"], "onnxruntime", threads="1", providers="CPUExecutionProvider") as be:
        assert be.providers == ["CPUExecutionProvider"]


def test_segmenter_from_path_passes_what_was_given_and_picks_a_backend_that_takes_it(models, monkeypatch):
    from mrcnn_edge.runtime import segmenter as segmenter_module
    from mrcnn_edge.runtime.segmenter import Segmenter

    opened = []
    real = segmenter_module.open_backend
    monkeypatch.setattr(segmenter_module, "open_backend",
                        lambda path, name, **options: opened.append((name, options)) or real(path, name, **options))
    with Segmenter.from_path(models["fp32"], providers=["CPUExecutionProvider"], device="cpu") as seg:
        assert seg.backend.name == "onnxruntime"
    assert opened[-1] == ("onnxruntime", {"providers": ["CPUExecutionProvider"], "device": "cpu"})
    with Segmenter.from_path(models["fp32"], backend="onnxruntime", threads=1) as seg:
        assert opened[-1] == ("onnxruntime", {"threads": 1})  # defaults are not passed
    with pytest.raises(UserError, match="--cuda-graph applies to TensorRT engines, not ONNX Runtime"):
        Segmenter.from_path(models["fp32"], backend="onnxruntime", cuda_graph=True)


def test_auto_choice_skips_a_backend_that_does_not_take_the_options(tmp_path):
    from dataclasses import replace

    from mrcnn_edge.runtime.segmenter import _choose_backend

    table = dict(BACKENDS)
    try:  # OpenVINO as the automatic choice for ONNX, as on an x86 CPU without a GPU
        BACKENDS["openvino"] = replace(BACKENDS["openvino"], auto_when=lambda path: True)
        assert _choose_backend(tmp_path / "m.onnx", None, {}, "auto").name == "openvino"
        assert _choose_backend(tmp_path / "m.onnx", None, {"precision": "bf16"}, "auto").name == "openvino"
        assert _choose_backend(tmp_path / "m.onnx", None, {"providers": ["X"]}, "auto").name == "onnxruntime"
        assert _choose_backend(tmp_path / "m.onnx", None, {}, "cuda").name == "onnxruntime"  # a GPU: not OpenVINO
        assert _choose_backend(tmp_path / "m.onnx", "openvino", {"providers": ["X"]}, "auto").name == "openvino"
    finally:
        BACKENDS.clear()
        BACKENDS.update(table)


def test_backend_docs_come_from_the_table():
    """runtime/README.md's backend table is backend_docs(): regenerate it when the table changes."""
    from pathlib import Path

    from mrcnn_edge.runtime.backends import backend_docs

    readme = (Path(__file__).resolve().parents[3] / "runtime" / "README.md").read_text()
    table = backend_docs()
    assert table in readme
    for entry in BACKENDS.values():
        assert f"`{entry.name}`" in table and all(o.name in table for o in entry.options)


def test_device_backends_are_told_apart_by_a_declared_capability(models):
    """The GPU path asks Backend.on_device() (a DeviceBackend or None), not hasattr."""
    from mrcnn_edge.runtime.backends import DeviceBackend
    from mrcnn_edge.runtime.backends.ort import OrtBackend
    from mrcnn_edge.runtime.backends.trt import TrtBackend

    with OrtBackend(models["fp32"], device="cpu") as be:
        assert be.on_device() is None and not isinstance(be, DeviceBackend)
    for name in ("device_pointer", "execute", "stream"):
        assert hasattr(TrtBackend, name)
    assert TrtBackend.on_device is not OrtBackend.on_device
