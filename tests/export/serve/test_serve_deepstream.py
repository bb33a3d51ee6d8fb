"""``serve deepstream``: the nvinfer config, and the instance-mask parser driven as nvinfer drives it.

The parser is built by plugins/deepstream/Makefile against nvdsinfer_minimal.h (DeepStream's headers
are not public downloads), which includes TensorRT and, through it, CUDA, as the SDK's
nvdsinfer_custom_impl.h does: the build needs TensorRT's headers (a DeepStream machine has them on
the compiler's default path; here ``CPLUS_INCLUDE_PATH``, which gcc treats as a system folder too)
and CUDA's include folder, which only the Makefile names. plugins/deepstream/tests/parser_harness.cpp
does what nvinfer's sources do (its comment quotes them): it splits each output binding per frame,
counts elements with normalizeDims, allocates every output binding, calls the parser once per frame
and dlcloses the parser library when the element goes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.metadata import write_sidecar
from mrcnn_edge.core.paths import PLUGIN_AUTOREG_LIBRARY_NAME, PLUGIN_LIBRARY_NAME
from mrcnn_edge.plugins import _testbuild
from mrcnn_edge.runtime.testing import contract_metadata, make_contract_model

DS = Path(__file__).resolve().parents[3] / "plugins" / "deepstream"
NET_W, NET_H = 160, 96          # canvas width != height
K, MH, MW = 4, 3, 5             # mask rows != columns, so a swap shows
STRICT = "-O1 -std=c++14 -Wall -Wextra -Werror -fPIC"
INIT_FAILED = 3                 # the harness's exit status when nvinfer would not start the element


def _headers() -> tuple[Path, Path]:
    """(TensorRT include folder, CUDA home) for the parser build, or skip saying what is missing."""
    if shutil.which("g++") is None or shutil.which("make") is None:
        pytest.skip("needs g++ and make to build the DeepStream parser")
    trt = _testbuild.tensorrt_include_dirs()
    if not trt:
        pytest.skip("TensorRT headers not found (MRCNN_EDGE_TRT_HEADERS): nvdsinfer_custom_impl.h includes them")
    cuda = _testbuild.cuda_home()
    if cuda is None:
        pytest.skip("CUDA headers not found (no nvcc): TensorRT's headers include cuda_runtime_api.h")
    return trt[0], cuda


def _make_parser(folder: Path, trt: Path, cuda_home: Path, *extra: str) -> subprocess.CompletedProcess:
    """plugins/deepstream's Makefile in ``folder`` (a copy of the sources, as serve deepstream writes it),
    with TensorRT's headers where a DeepStream machine has them: on the compiler's system path."""
    for name in ("Makefile", "mrcnn_edge_parser.cpp", "nvdsinfer_minimal.h"):
        shutil.copy(DS / name, folder / name)
    env = dict(os.environ, CPLUS_INCLUDE_PATH=str(trt))
    return subprocess.run(["make", "-C", str(folder), "DS_INCLUDES=", "MINIMAL=1", f"CUDA_HOME={cuda_home}",
                           f"CXXFLAGS={STRICT}", *extra], capture_output=True, text=True, env=env, timeout=300)


def _make_harness(folder: Path, trt: Path, cuda_home: Path) -> Path:
    exe = folder / "harness"
    subprocess.run(["g++", *STRICT.split(), f"-I{DS}", "-isystem", str(trt), "-isystem", str(cuda_home / "include"),
                    "-o", str(exe), str(DS / "tests" / "parser_harness.cpp"), "-ldl"], check=True)
    return exe


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> tuple[Path, Path]:
    trt, cuda = _headers()
    d = tmp_path_factory.mktemp("ds")
    made = _make_parser(d, trt, cuda)
    assert made.returncode == 0, made.stdout + made.stderr
    return d / "libnvds_mrcnn_edge_parser.so", _make_harness(d, trt, cuda)


def _batch(mask_dtype=np.float32) -> dict[str, np.ndarray]:
    """Two frames with different detections, outputs shaped as the contract says; padding rows as the
    contract writes them."""
    num = np.array([[3], [1]], np.int32)  # [B,1]
    boxes = np.zeros((2, K, 4), np.float32)
    boxes[0, :3] = [[10, 5, 50, 40], [100, 60, 170, 110], [20, 20, 30, 30]]  # 2nd crosses W and H
    boxes[1, :1] = [[1, 2, 3, 4]]
    scores = np.zeros((2, K), np.float32)
    scores[0, :3] = [0.9, 0.8, 0.3]
    scores[1, :1] = [0.7]
    classes = np.full((2, K), -1, np.int32)
    classes[0, :3] = [1, 2, 1]
    classes[1, :1] = [2]
    masks = (np.arange(2 * K * MH * MW, dtype=np.float32).reshape(2, K, MH, MW) / (2 * K * MH * MW)).astype(mask_dtype)
    return {"num_detections": num, "boxes": boxes, "scores": scores, "classes": classes, "masks": masks}


def _write_bindings(folder: Path, layers: dict[str, np.ndarray]) -> None:
    """Each output binding as the engine leaves it: the whole batch, and its full dims (batch first)."""
    types = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 3}
    for name, a in layers.items():
        (folder / f"{name}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
        (folder / f"{name}.dims").write_text(f"{types[a.dtype]} {a.ndim} {' '.join(map(str, a.shape))}\n")


def _run(harness, tmp_path: Path, layers: dict[str, np.ndarray], threshold: float = 0.5, pipelines: int = 1,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    lib, exe = harness
    _write_bindings(tmp_path, layers)
    return subprocess.run([str(exe), str(lib), str(tmp_path), "2", str(NET_W), str(NET_H), "3", str(threshold),
                           str(pipelines)], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def _objects(run: subprocess.CompletedProcess) -> list[dict]:
    assert run.returncode == 0, run.stdout + run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float16])
def test_parser_layout_per_frame_of_a_batch(harness, tmp_path, mask_dtype):
    layers = _batch(mask_dtype)
    objs = _objects(_run(harness, tmp_path, layers))
    assert not any(o.get("failed") for o in objs)
    # frame 0: rows 0 and 1 (row 2 under the 0.5 threshold); frame 1: its own single row
    assert [(o["frame"], o["classId"]) for o in objs] == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose([o["confidence"] for o in objs], [0.9, 0.8, 0.7], rtol=1e-6)
    # left, top, width, height in network-input pixels, clipped to the 160 x 96 input
    np.testing.assert_allclose(objs[0]["box"], [10, 5, 40, 35])
    np.testing.assert_allclose(objs[1]["box"], [100, 60, 60, 36])
    np.testing.assert_allclose(objs[2]["box"], [1, 2, 2, 2])
    for o, (b, k) in zip(objs, [(0, 0), (0, 1), (1, 0)]):
        assert (o["mask_width"], o["mask_height"], o["mask_size"]) == (MW, MH, MW * MH * 4)
        expected = layers["masks"][b, k].astype(np.float32).ravel()  # row-major: y then x
        np.testing.assert_allclose(o["mask"], expected, rtol=1e-6)


def test_parser_class_and_count_guards(harness, tmp_path):
    layers = _batch()
    layers["num_detections"] = np.array([[99], [-4]], np.int32)  # clamped to [0, K]
    layers["classes"][0, 1] = 7                                   # >= numClassesConfigured (3): dropped
    objs = _objects(_run(harness, tmp_path, layers, threshold=0.0))
    assert [(o["frame"], o["classId"]) for o in objs] == [(0, 1), (0, 1)]


def test_a_num_detections_of_shape_b_stops_the_element_as_nvinfer_does(harness, tmp_path):
    """[B] (older exports): each frame's layer is 0-d, normalizeDims gives it no element, and nvinfer
    cannot allocate its buffer at initialisation; the parser is never called."""
    layers = _batch()
    layers["num_detections"] = np.array([3, 1], np.int32)
    run = _run(harness, tmp_path, layers)
    assert run.returncode == INIT_FAILED and run.stdout == "", run.stdout + run.stderr
    assert run.stderr.strip() == ("Failed to allocate cuda output buffer during context initialization "
                                  "(layer num_detections)")


def test_makefile_names_the_cuda_include_folder(tmp_path):
    """TensorRT's headers include cuda_runtime_api.h, on no default path: without CUDA's include
    folder the build fails as on a DeepStream machine; with it (CUDA_VER, as NVIDIA's parser
    Makefiles take it, or CUDA_HOME) it builds."""
    trt, cuda = _headers()
    without = tmp_path / "without"
    without.mkdir()
    made = _make_parser(without, trt, tmp_path / "no-cuda-here")
    assert made.returncode != 0 and "cuda_runtime_api.h" in made.stderr, made.stdout + made.stderr
    with_cuda = tmp_path / "with"
    with_cuda.mkdir()
    made = _make_parser(with_cuda, trt, cuda)
    assert made.returncode == 0, made.stdout + made.stderr
    assert (with_cuda / "libnvds_mrcnn_edge_parser.so").is_file()
    # NVIDIA's convention: CUDA_VER=12.6 means /usr/local/cuda-12.6/include (a dry run shows the command)
    dry = subprocess.run(["make", "-n", "-C", str(with_cuda), "-B", "CUDA_VER=12.6"], capture_output=True, text=True)
    assert "-I/usr/local/cuda-12.6/include" in dry.stdout, dry.stdout + dry.stderr


@pytest.mark.slow
def test_a_pipeline_rebuilt_in_one_process_keeps_the_plugin_registered(tmp_path):
    """The parser linked with the plugin's self-registering library, nvinfer's TensorRT (a stand-in
    libnvinfer) in the process: two element lifetimes, each dlclosing the parser; the creator TensorRT
    keeps must stay callable after each (an RTSP reconnect loop rebuilds the pipeline)."""
    trt, cuda = _headers()
    if _testbuild.cudart_static() is None:
        pytest.skip("libcudart_static.a not found next to nvcc: cannot link the plugin library")
    proc, kernel = _testbuild.kernel_object((87,))
    assert proc.returncode == 0, proc.stderr[-2000:]
    plugin, autoreg = _testbuild.plugin_libraries(trt, kernel)
    standin = _testbuild.standin_nvinfer(trt)
    folder = tmp_path / "ds"
    folder.mkdir()
    for lib in (plugin, autoreg):  # as serve deepstream copies them
        shutil.copy(lib, folder / lib.name)
    made = _make_parser(folder, trt, cuda, f"PLUGIN={folder / PLUGIN_AUTOREG_LIBRARY_NAME}")
    assert made.returncode == 0, made.stdout + made.stderr
    exe = _make_harness(tmp_path, trt, cuda)
    run = _run((folder / "libnvds_mrcnn_edge_parser.so", exe), tmp_path, _batch(), pipelines=2,
               env={"HARNESS_LIBNVINFER": str(standin)})
    lines = _objects(run)
    after = [line for line in lines if "creator_after_dlclose" in line]
    assert after == [{"pipeline": 0, "creator_after_dlclose": "MultilevelRoIAlign"},
                     {"pipeline": 1, "creator_after_dlclose": "MultilevelRoIAlign"}], run.stdout
    parsed = [(o["pipeline"], o["frame"], o["classId"]) for o in lines if "classId" in o]
    assert parsed == [(p, f, c) for p in (0, 1) for f, c in [(0, 1), (0, 2), (1, 2)]]
    assert run.stderr == ""  # registered quietly, once


# ---- the config -------------------------------------------------------------------------------


def _ds_model(tmp_path: Path, **meta) -> Path:
    return make_contract_model(tmp_path / "m.onnx", batch=2, metadata=meta)


def _engine(tmp_path: Path, precision: str = "fp32", plugin_library: Path | None = None) -> Path:
    """An engine file with its sidecar (nvinfer deserialises the bytes; nothing here reads them)."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not parsed here")
    flavor = "tensorrt" if plugin_library else "portable"
    meta = contract_metadata((128, 160), 2, ("__background__", "a", "b"), 28, 100, precision, flavor,
                             std=(0.5, 0.5, 0.5))
    meta.update(tensorrt_version="10.3.0", onnx_sha256="0" * 64,
                plugin_library=str(plugin_library) if plugin_library else None)
    write_sidecar(engine, meta)
    return engine


def _config(folder: Path) -> dict[str, str]:
    text = (folder / "config_infer_mrcnn_edge.txt").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_config_for_equal_std_model(tmp_path, capsys):
    model = _ds_model(tmp_path, mean=[0.5, 0.25, 0.125], std=[0.5, 0.5, 0.5])
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(model), "--out", str(out), "--deepstream", str(tmp_path / "none")]) == 0
    keys = _config(out)
    assert keys["network-type"] == "3" and keys["output-instance-mask"] == "1" and keys["cluster-mode"] == "4"
    assert keys["parse-bbox-instance-mask-func-name"] == "NvDsInferParseMrcnnEdge"
    assert keys["custom-lib-path"] == str(out.resolve() / "libnvds_mrcnn_edge_parser.so")
    assert keys["onnx-file"] == "model.onnx" and keys["batch-size"] == "2" and keys["infer-dims"] == "3;128;160"
    assert float(keys["net-scale-factor"]) == pytest.approx(1 / 127.5)
    assert [float(v) for v in keys["offsets"].split(";")] == pytest.approx([127.5, 63.75, 31.875])
    assert keys["segmentation-threshold"] == "0.5"
    assert keys["output-blob-names"] == "num_detections;boxes;scores;classes;masks"
    assert (out / "labels.txt").read_text().splitlines() == ["__background__", "square", "disk"]
    assert (out / "mrcnn_edge_parser.cpp").is_file() and (out / "Makefile").is_file()
    assert "make -C" in capsys.readouterr().out


def test_int8_engine_is_served_as_built(tmp_path, capsys):
    """A prebuilt engine's precision does not concern nvinfer: network-mode only matters when it builds."""
    engine = _engine(tmp_path, "int8")
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(engine), "--out", str(out), "--deepstream", str(tmp_path / "none")]) == 0
    keys = _config(out)
    assert keys["model-engine-file"] == "model.engine" and keys["network-mode"] == "1"
    assert (out / "model.engine").read_bytes() == engine.read_bytes()


def test_int8_onnx_is_refused_naming_the_engine_build(tmp_path, capsys):
    model = _ds_model(tmp_path, precision="int8", std=[0.5, 0.5, 0.5])
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(model), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int8" in err[0] and "mrcnn-edge build" in err[0]
    assert not out.exists()


def _fake_plugin(folder: Path, with_autoreg: bool = True) -> Path:
    """A plugin library answering the TensorRT-version probe (10.3.0), and its self-registering
    library beside it (only copied by serve deepstream, never loaded)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a C compiler to build a stand-in plugin library")
    folder.mkdir()
    src = folder / "probe.c"
    src.write_text("int mrcnnEdgePluginTensorRTVersion(void) { return 100300; }\n")
    lib = folder / PLUGIN_LIBRARY_NAME
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    if with_autoreg:
        (folder / PLUGIN_AUTOREG_LIBRARY_NAME).write_bytes(b"autoreg stand-in")
    return lib


def test_plugin_engine_gets_both_libraries_and_the_parser_links_the_registering_one(tmp_path, capsys):
    plugin = _fake_plugin(tmp_path / "plugin")
    engine = _engine(tmp_path, plugin_library=plugin)
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(engine), "--out", str(out), "--deepstream", str(tmp_path / "none")]) == 0
    assert (out / PLUGIN_LIBRARY_NAME).read_bytes() == plugin.read_bytes()
    assert (out / PLUGIN_AUTOREG_LIBRARY_NAME).read_bytes() == b"autoreg stand-in"
    printed = capsys.readouterr().out
    assert f"PLUGIN={PLUGIN_AUTOREG_LIBRARY_NAME}" in printed and "CUDA_VER=" in printed


def test_plugin_without_its_registering_library_is_one_line(tmp_path, capsys):
    plugin = _fake_plugin(tmp_path / "plugin", with_autoreg=False)
    engine = _engine(tmp_path, plugin_library=plugin)
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(engine), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and PLUGIN_AUTOREG_LIBRARY_NAME in err[0] and "build-plugin" in err[0]
    assert not out.exists()


def test_in_graph_normalisation_uses_raw_pixels(tmp_path):
    model = _ds_model(tmp_path, input_normalization="in_graph")
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(model), "--out", str(out), "--deepstream", str(tmp_path)]) == 0
    text = (out / "config_infer_mrcnn_edge.txt").read_text()
    assert "net-scale-factor=1\n" in text and "offsets=0;0;0\n" in text


def test_per_channel_std_is_refused_naming_the_export_option(tmp_path, capsys):
    model = _ds_model(tmp_path)  # torchvision's std differs per channel
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(model), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--normalize-in-graph" in err[0]
    assert not out.exists()


def test_out_folder_holding_something_else_is_refused(tmp_path, capsys):
    model = _ds_model(tmp_path, std=[0.5, 0.5, 0.5])
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["serve", "deepstream", str(model), "--out", str(out)]) != 0
    assert "holds files" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
