"""``mrcnn-edge serve triton``: the repository checked against Triton's own ``model_config.proto``.

The written ``config.pbtxt`` is parsed with protobuf's text format into the ``ModelConfig`` message
that tritonclient generates from Triton's model_config.proto: an unknown field, a wrong enum or a
bad literal fails the parse, as it fails tritonserver's.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.contract import INPUT_NAME, OUTPUT_NAMES
from mrcnn_edge.runtime.testing import contract_metadata, make_contract_model

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (dev extra)")
text_format = pytest.importorskip("google.protobuf.text_format")
onnx = pytest.importorskip("onnx")

_NP_TO_TYPE = {np.dtype(np.float32): "TYPE_FP32", np.dtype(np.float16): "TYPE_FP16", np.dtype(np.int32): "TYPE_INT32"}


def _parse(config: Path):
    return text_format.Parse(config.read_text(), mc.ModelConfig())


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mrcnn-edge: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def _fake_plugin(tmp_path: Path, version: int, autoreg: bool = True) -> Path:
    """A library with the probe symbol of our plugin, reporting TensorRT ``version`` (10.3.0 = 100300),
    and beside it (unless not ``autoreg``) a stand-in of the self-registering library build-plugin writes."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler to build a stand-in plugin library")
    src = tmp_path / f"plugin{version}.c"
    src.write_text(f"int mrcnnEdgePluginTensorRTVersion(void) {{ return {version}; }}\n")
    lib = tmp_path / f"v{version}" / "libmrcnn_edge_plugins.so"
    lib.parent.mkdir()
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    if autoreg:
        (lib.parent / "libmrcnn_edge_plugins_autoreg.so").write_bytes(b"stand-in: copied, never loaded here")
    return lib


def _engine(tmp_path: Path, plugin_lib: Path | None, trt: str = "10.3.0", batch: int = 2) -> Path:
    """An engine file with its sidecar (the bytes are not parsed: Triton deserialises them)."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not parsed here")
    meta = contract_metadata((128, 160), batch, ("__background__", "a", "b"), 28, 100, "fp16", "tensorrt")
    meta.update(tensorrt_version=trt, onnx_sha256="0" * 64, plugin_library=str(plugin_lib) if plugin_lib else None)
    (tmp_path / "model.engine.json").write_text(json.dumps({k: json.dumps(v) for k, v in meta.items()}))
    return engine


@pytest.mark.parametrize("legacy", [False, True], ids=["num_detections_B1", "older_B"])
def test_onnx_repository_parses_as_model_config_and_matches_the_model(tmp_path, legacy):
    model = make_contract_model(tmp_path / "seg.onnx", batch=2, mask_size=8, legacy_num_detections=legacy)
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(model), "--repo", str(repo)]) == 0
    config = _parse(repo / "seg" / "config.pbtxt")
    assert (repo / "seg" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert config.name == "seg" and config.backend == "onnxruntime" and config.max_batch_size == 0
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    # every tensor as the ONNX graph itself declares it: name, dtype, full static shape
    graph = onnx.load(str(model)).graph
    declared = {}
    for vi in list(graph.input) + list(graph.output):
        t = vi.type.tensor_type
        declared[vi.name] = (_NP_TO_TYPE[np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))],
                             [d.dim_value for d in t.shape.dim])
    assert [t.name for t in config.input] == [INPUT_NAME]
    assert [t.name for t in config.output] == list(OUTPUT_NAMES)
    for t in list(config.input) + list(config.output):
        assert (mc.DataType.Name(t.data_type), list(t.dims)) == declared[t.name]
    # [B,1] as the contract has it, or [B] as an ONNX exported before that declares it
    assert [list(t.dims) for t in config.output if t.name == "num_detections"] == [[2] if legacy else [2, 1]]
    from mrcnn_edge.runtime.backends.triton import decode_parameters

    meta = decode_parameters({k: v.string_value for k, v in config.parameters.items()})
    assert meta["input_size"] == [128, 160] and meta["class_names"] == ["__background__", "square", "disk"]
    assert meta["std"] == [0.229, 0.224, 0.225]
    script = (repo / "seg" / "tritonserver.sh").read_text()
    assert f"--model-repository={repo.resolve()}" in script and "--backend-config" not in script


def test_engine_repository_tensorrt_plan_with_plugin_and_no_cuda_graphs(tmp_path, capsys):
    plugin = _fake_plugin(tmp_path, 100300)
    engine = _engine(tmp_path, plugin)
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(engine), "--repo", str(repo), "--name", "mrcnn"]) == 0
    printed = capsys.readouterr().out
    config = _parse(repo / "mrcnn" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 0
    assert config.optimization.cuda.graphs is False and config.optimization.HasField("cuda")
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    dims = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in list(config.input) + list(config.output)}
    # DESIGN.md's contract table; num_detections [B,1]: with max_batch_size 0 the dims are the full shapes
    assert dims == {
        "images": ("TYPE_FP32", [2, 3, 128, 160]), "num_detections": ("TYPE_INT32", [2, 1]),
        "boxes": ("TYPE_FP32", [2, 100, 4]), "scores": ("TYPE_FP32", [2, 100]),
        "classes": ("TYPE_INT32", [2, 100]), "masks": ("TYPE_FP16", [2, 100, 28, 28]),
    }
    copied = repo / "mrcnn" / "libmrcnn_edge_plugins.so"
    assert (repo / "mrcnn" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert copied.read_bytes() == plugin.read_bytes()
    # Triton's TensorRT backend only dlopens plugins=: the self-registering library, which finds
    # libmrcnn_edge_plugins.so beside it
    autoreg = repo / "mrcnn" / "libmrcnn_edge_plugins_autoreg.so"
    assert autoreg.read_bytes() == plugin.with_name(autoreg.name).read_bytes()
    expected = f"--backend-config=tensorrt,plugins={repo.resolve() / 'mrcnn' / autoreg.name}"
    assert expected in (repo / "mrcnn" / "tritonserver.sh").read_text() and expected in printed
    # a second run replaces our own model folder
    assert main(["serve", "triton", str(engine), "--repo", str(repo), "--name", "mrcnn"]) == 0


def test_plugin_without_its_self_registering_library_is_one_line(tmp_path, capsys):
    engine = _engine(tmp_path, _fake_plugin(tmp_path, 100300, autoreg=False))
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(engine), "--repo", str(repo)]) != 0
    assert "libmrcnn_edge_plugins_autoreg.so not found" in _one_error_line(capsys)
    assert not repo.exists()
    # with --pre-post server the runtime loads libmrcnn_edge_plugins.so itself: no need for it
    assert main(["serve", "triton", str(engine), "--repo", str(repo), "--pre-post", "server"]) == 0


def test_engine_without_sidecar_is_one_line_and_writes_nothing(tmp_path, capsys):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"x")
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(engine), "--repo", str(repo)]) != 0
    assert "sidecar" in _one_error_line(capsys)
    assert not repo.exists()


def test_plugin_of_another_tensorrt_major_is_refused(tmp_path, capsys):
    plugin = _fake_plugin(tmp_path, 110100)  # built against TensorRT 11.1
    engine = _engine(tmp_path, plugin, trt="10.3.0")
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(engine), "--repo", str(repo)]) != 0
    line = _one_error_line(capsys)
    assert "11.1.0" in line and "10.3.0" in line
    assert not repo.exists()


def test_repository_folder_holding_something_else_is_refused(tmp_path, capsys):
    model = make_contract_model(tmp_path / "seg.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("mine")
    assert main(["serve", "triton", str(model), "--repo", str(repo)]) != 0
    assert "notes.txt" in _one_error_line(capsys)
    assert sorted(p.name for p in repo.iterdir()) == ["notes.txt"]
    # a Triton model folder that is not ours is not replaced either
    (repo / "notes.txt").unlink()
    (repo / "seg").mkdir()
    (repo / "seg" / "config.pbtxt").write_text('name: "seg"\n')
    assert main(["serve", "triton", str(model), "--repo", str(repo)]) != 0
    assert "did not write" in _one_error_line(capsys)
    assert (repo / "seg" / "config.pbtxt").read_text() == 'name: "seg"\n'


def test_tensorrt_flavor_onnx_is_refused_for_onnxruntime(tmp_path, capsys):
    plugin = _fake_plugin(tmp_path, 100300)
    model = make_contract_model(tmp_path / "trt.onnx", flavor="tensorrt")
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(model), "--repo", str(repo), "--plugin-lib", str(plugin)]) != 0
    assert "mrcnn-edge build" in _one_error_line(capsys)
    assert not repo.exists()


def _parameters(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def test_pre_post_server_onnx_repository_is_a_python_backend_model(tmp_path, capsys):
    from mrcnn_edge.export.serve import prepost_model

    model = make_contract_model(tmp_path / "seg.onnx", batch=1, mask_size=8)
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(model), "--repo", str(repo), "--pre-post", "server",
                 "--score-threshold", "0.3"]) == 0
    printed = capsys.readouterr().out
    config = _parse(repo / "seg" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0 and not config.default_model_filename
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_CPU]
    # images in: one encoded image, or one raw BGR frame, either optional (a request sends one)
    inputs = {t.name: (mc.DataType.Name(t.data_type), list(t.dims), t.optional) for t in config.input}
    assert inputs == {"image": ("TYPE_STRING", [1], True), "frame": ("TYPE_UINT8", [-1, -1, 3], True)}
    outputs = {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in config.output}
    assert outputs == {"boxes": ("TYPE_FP32", [-1, 4]), "scores": ("TYPE_FP32", [-1]), "classes": ("TYPE_INT32", [-1]),
                       "class_names": ("TYPE_STRING", [-1]), "masks": ("TYPE_STRING", [-1])}
    params = _parameters(config)
    assert params["model_file"] == "model.onnx" and float(params["score_threshold"]) == 0.3
    assert params["mrcnn_edge.pre_post"] == '"server"' and params["plugin_lib"] == ""
    assert (repo / "seg" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert (repo / "seg" / "1" / "model.py").read_text() == Path(prepost_model.__file__).read_text()
    assert "/v2/models/seg/infer" in printed and "numpy < 2" in printed


def test_pre_post_server_engine_repository_carries_sidecar_and_plugin(tmp_path):
    plugin = _fake_plugin(tmp_path, 100300)
    engine = _engine(tmp_path, plugin)
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(engine), "--repo", str(repo), "--name", "m", "--pre-post", "server"]) == 0
    config = _parse(repo / "m" / "config.pbtxt")
    assert config.backend == "python" and not config.platform
    assert [g.kind for g in config.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    params = _parameters(config)
    assert params["model_file"] == "model.plan" and float(params["score_threshold"]) == 0.5
    assert params["plugin_lib"] == "libmrcnn_edge_plugins.so"
    assert (repo / "m" / params["plugin_lib"]).read_bytes() == plugin.read_bytes()
    assert not (repo / "m" / "libmrcnn_edge_plugins_autoreg.so").exists()
    # the runtime reads an engine's metadata from the sidecar beside it
    assert (repo / "m" / "1" / "model.plan.json").read_text() == (tmp_path / "model.engine.json").read_text()
    # the Python backend, not Triton's TensorRT backend, loads the plugin
    assert "--backend-config" not in (repo / "m" / "tritonserver.sh").read_text()


def test_score_threshold_without_server_pre_post_is_one_line(tmp_path, capsys):
    model = make_contract_model(tmp_path / "seg.onnx")
    repo = tmp_path / "repo"
    assert main(["serve", "triton", str(model), "--repo", str(repo), "--score-threshold", "0.3"]) != 0
    assert "--pre-post server" in _one_error_line(capsys)
    assert main(["serve", "triton", str(model), "--repo", str(repo), "--pre-post", "server",
                 "--score-threshold", "1.5"]) != 0
    assert "[0, 1]" in _one_error_line(capsys)
    assert not repo.exists()
