"""``mrcnn-edge build``: bad input gives one line, a non-zero exit and nothing on disk; the TensorRT
calls it makes, against the stand-in TensorRT of tests/fakes; with TensorRT and a GPU, an engine with
the plugin matches the plugin's CPU build.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from build_models import (SCALES, error_line, files_in, model_metadata, plugin_onnx, private_cache,  # noqa: F401
                          real_tensorrt_headers)
from fakes.fake_tensorrt import FakeProcess, write_plugin_library
from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.metadata import MODEL_KEYS, encode, read_sidecar, sidecar_path
from mrcnn_edge.export.build import plugin_library as plugin_build
from mrcnn_edge.export.plugin_host import multilevel_roi_align_host
from mrcnn_edge.runtime.gpu import trt_platform

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


# ---- build: bad input -------------------------------------------------------------------------


def test_build_missing_onnx(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["build", str(tmp_path / "missing.onnx"), "-o", str(out / "m.engine")])
    assert rc != 0
    line = error_line(capsys)
    assert "ONNX model" in line and "missing.onnx not found" in line
    assert not out.exists()


def test_build_not_an_onnx_file(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage\xff" * 10)
    assert main(["build", str(bad), "-o", str(tmp_path / "m.engine")]) != 0
    assert "cannot read" in error_line(capsys)
    assert files_in(tmp_path) == {"bad.onnx"}


def test_build_needs_mrcnn_edge_metadata(tmp_path, capsys):
    model = plugin_onnx(tmp_path / "m.onnx", metadata=False)
    assert main(["build", str(model)]) != 0
    assert "no mrcnn-edge metadata" in error_line(capsys)
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.parametrize(
    "attrs,expect",
    [
        ({"output_size": 7}, "unknown attribute 'output_size'"),
        ({"aligned": 2}, "aligned must be 0 or 1"),
        ({"output_height": 7.0}, "'output_height' must be an integer"),
        ({"spatial_scales": SCALES[:3]}, "4 feature maps but spatial_scales has 3 entries"),
        ({"plugin_namespace": "other"}, "'plugin_namespace' must be 'mrcnn_edge'"),
        ({"spatial_scales": [0.25, 0.125, 0.0625, 4.0]}, "spatial_scales must be in (0, 1]"),
        ({"spatial_scales": [0.25, 0.125, 0.0625, 0.03]}, "spatial_scales must be powers of two"),
    ],
)
def test_build_refuses_bad_plugin_attributes(tmp_path, capsys, attrs, expect):
    model = plugin_onnx(tmp_path / "m.onnx", attrs=attrs)
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine")]) != 0
    line = error_line(capsys)
    assert expect in line and "roi_pool" in line
    assert files_in(tmp_path) == {"m.onnx"}


def test_build_needs_the_plugin_library(tmp_path, capsys):
    model = plugin_onnx(tmp_path / "m.onnx")
    assert main(["build", str(model)]) != 0
    assert "needs the plugin library" in (line := error_line(capsys)) and "mrcnn-edge build-plugin" in line
    assert main(["build", str(model), "--plugin-lib", str(tmp_path / "nope.so")]) != 0
    assert "nope.so not found (from --plugin-lib)" in error_line(capsys)
    assert files_in(tmp_path) == {"m.onnx"}


def test_build_without_tensorrt_is_one_line(tmp_path, capsys, monkeypatch):
    model = plugin_onnx(tmp_path / "m.onnx")
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, TensorRT or not
    rc = main(["build", str(model), "-o", str(tmp_path / "out" / "m.engine"), "--plugin-lib", str(lib)])
    assert rc != 0
    line = error_line(capsys)
    assert "TensorRT is not installed" in line and "JetPack" in line and "pip install tensorrt" in line
    assert files_in(tmp_path) == {"m.onnx", "libfake.so"}  # not even the output folder


def test_build_without_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    model = plugin_onnx(tmp_path / "m.onnx")
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"")
    monkeypatch.setattr(trt_platform, "import_tensorrt", lambda: object())
    monkeypatch.setattr(trt_platform, "cuda_device_count", lambda: (0, "no NVIDIA driver (libcuda.so.1 not found)"))
    assert main(["build", str(model), "--plugin-lib", str(lib)]) != 0
    assert "needs an NVIDIA GPU: no NVIDIA driver" in error_line(capsys)
    assert files_in(tmp_path) == {"m.onnx", "libfake.so"}


def test_cuda_device_count_never_raises():
    count, why = trt_platform.cuda_device_count()
    assert count >= 0 and (count > 0 or why)


def test_build_bad_workspace(tmp_path, capsys):
    model = plugin_onnx(tmp_path / "m.onnx")
    assert main(["build", str(model), "--workspace", "-1"]) != 0
    assert "--workspace: must be positive, got -1" in error_line(capsys)


# ---- build: the TensorRT calls, against the stand-in TensorRT of tests/fakes ---------------------


@pytest.fixture
def fake_device(tmp_path, monkeypatch):
    """A GPU, a TensorRT of the given version living in one fake process, and a plugin library file."""
    def setup(version="10.3.0", built_for=None, self_registering=False, **builder_options):
        proc = FakeProcess()
        trt = proc.tensorrt(version, **builder_options)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_platform, "_dlopen", proc.dlopen)
        monkeypatch.setattr(trt_platform, "cuda_device_count", lambda: (1, ""))
        lib = write_plugin_library(tmp_path / "libmrcnn_edge_plugins.so", built_for or version,
                                   self_registering=self_registering)
        return trt, plugin_onnx(tmp_path / "m.onnx"), lib
    return setup


@pytest.mark.parametrize("version,flags", [("10.3.0", 1 << 1), ("11.1.0", 0)])
def test_build_drives_tensorrt(tmp_path, capsys, fake_device, version, flags):
    trt, model, lib = fake_device(version=version)
    engine_path = tmp_path / "out" / "m.engine"
    cache = tmp_path / "timing.cache"
    assert main(["build", str(model), "-o", str(engine_path), "--plugin-lib", str(lib), "--workspace", "1.5",
                 "--timing-cache", str(cache)]) == 0
    assert trt.calls["network_flags"] == flags  # strongly typed: a flag on 10, the only mode on 11
    assert trt.calls["workspace"] == ("WORKSPACE", int(1.5 * 2**30))
    assert trt.process.load_library_calls == [str(lib.resolve())]
    assert engine_path.read_bytes() == b"SERIALIZED-ENGINE" and cache.read_bytes() == b"CACHE"
    meta = read_sidecar(engine_path)
    assert set(MODEL_KEYS) <= set(meta) and meta["tensorrt_version"] == version
    assert meta["onnx_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert meta["plugin_library"] == str(lib.resolve())
    out = capsys.readouterr().out
    assert "Building engine ..." in out and "wrote" in out
    assert files_in(engine_path.parent) == {"m.engine", "m.engine.json"}
    # a second build in the same process reads the timing cache back and finds the plugin loaded
    assert main(["build", str(model), "-o", str(engine_path), "--plugin-lib", str(lib),
                 "--timing-cache", str(cache)]) == 0
    assert trt.calls["timing_blobs"][-1] == b"CACHE"


def test_build_twice_in_one_process_loads_the_plugin_once(tmp_path, capsys, fake_device):
    """load_library fails when the creators are registered: `demo` builds, then builds again."""
    trt, model, lib = fake_device()
    for name in ("a.engine", "b.engine"):
        assert main(["build", str(model), "-o", str(tmp_path / name), "--plugin-lib", str(lib),
                     "--no-timing-cache"]) == 0, capsys.readouterr().err
    assert len(trt.process.load_library_calls) == 1
    assert (tmp_path / "b.engine").read_bytes() == b"SERIALIZED-ENGINE"


def test_build_with_a_self_registering_plugin(tmp_path, capsys, fake_device):
    """A library that registers itself at dlopen is loaded, not loaded again through TensorRT."""
    trt, model, lib = fake_device(self_registering=True)
    assert main(["build", str(model), "-o", str(tmp_path / "m.engine"), "--plugin-lib", str(lib),
                 "--no-timing-cache"]) == 0, capsys.readouterr().err
    assert trt.process.load_library_calls == []
    assert trt.get_plugin_registry().get_creator("MultilevelRoIAlign", "1", "mrcnn_edge") is not None


def test_build_parse_failure_says_why_and_leaves_nothing(tmp_path, capsys, fake_device):
    _, model, lib = fake_device(parse_error="MultilevelRoIAlign 'roi_pool': feature map 3 has 4 channels "
                                            "but feature map 0 has 8")
    engine_path = tmp_path / "m.engine"
    assert main(["build", str(model), "-o", str(engine_path), "--plugin-lib", str(lib), "--no-timing-cache"]) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not parse m.onnx" in last and "feature map 3 has 4 channels" in last
    assert files_in(tmp_path) == {"m.onnx", "libmrcnn_edge_plugins.so"}


def test_build_failure_reports_the_plugin_error_and_leaves_no_engine(tmp_path, capsys, fake_device):
    _, model, lib = fake_device(build_errors=[
        (1, "MultilevelRoIAlign 'roi_pool': 1200 ROIs per image but at most 1000 are supported"),
        (1, "[network.cpp::operator()::3212] Error Code 4: Internal Error (could not find any implementation)"),
        (1, "IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error (Engine could not be created)"),
    ])
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(b"OLD")  # an older engine stays as it was
    assert main(["build", str(model), "-o", str(engine_path), "--plugin-lib", str(lib), "--no-timing-cache"]) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not build the engine: MultilevelRoIAlign 'roi_pool': 1200 ROIs" in last
    assert engine_path.read_bytes() == b"OLD" and not sidecar_path(engine_path).exists()
    assert files_in(tmp_path) == {"m.onnx", "libmrcnn_edge_plugins.so", "m.engine"}


def test_build_library_that_is_not_a_plugin_says_why(tmp_path, capsys, fake_device):
    _, model, _ = fake_device()
    junk = tmp_path / "libjunk.so"
    junk.write_bytes(b"\x7fELF not really")
    assert main(["build", str(model), "--plugin-lib", str(junk), "--no-timing-cache"]) != 0
    line = error_line(capsys)
    assert f"cannot load the plugin library {junk}" in line and "invalid ELF header" in line


def test_portable_model_needs_no_plugin(tmp_path, fake_device, private_cache):
    trt, _, _ = fake_device(needs_plugin=False)
    stale = write_plugin_library(private_cache / "plugins" / plugin_build.LIBRARY_NAME)  # must not be loaded
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 64, 96])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "portable", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, encode(model_metadata(flavor="portable", plugin=None)))
    onnx.save(model, str(tmp_path / "p.onnx"))
    assert main(["build", str(tmp_path / "p.onnx"), "--no-timing-cache"]) == 0
    assert trt.process.load_library_calls == [] and str(stale.resolve()) not in trt.process.loaded
    assert read_sidecar(tmp_path / "p.engine")["plugin_library"] is None


def test_build_refuses_a_plugin_of_another_tensorrt_major(tmp_path, capsys, fake_device):
    _, model, lib = fake_device(version="11.1.0", built_for="10.3.0")
    assert main(["build", str(model), "--plugin-lib", str(lib)]) != 0
    line = error_line(capsys)
    assert "built against TensorRT 10.3.0 but TensorRT 11.1.0 is installed" in line and "build-plugin" in line


# ---- with TensorRT and a GPU ------------------------------------------------------------------


def random_rois(rng, batch, n, height, width) -> np.ndarray:
    """Ordinary boxes of every FPN level, with empty, inverted and out-of-image ones mixed in."""
    xy = rng.uniform(-0.25, 1.25, (batch, n, 2)) * (width, height)
    wh = np.exp(rng.uniform(np.log(0.5), np.log(4 * max(height, width)), (batch, n, 2)))
    wh[:, ::7] *= -1  # inverted
    wh[:, 3::11] = 0  # empty
    return np.concatenate([xy - wh / 2, xy + wh / 2], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def built_plugin(tmp_path_factory):
    try:
        toolchain = plugin_build.find_toolchain(real_tensorrt_headers())
    except Exception as exc:  # noqa: BLE001 - a UserError saying what is missing
        pytest.skip(str(exc))
    archs = plugin_build.resolve_cuda_archs("auto", toolchain.nvcc)
    lib = tmp_path_factory.mktemp("plugin") / plugin_build.LIBRARY_NAME
    return plugin_build.build_plugin_library(lib, toolchain, archs, use_cmake=False)


def run_engine(engine_path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import tensorrt as trt
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    tensors = {k: torch.from_numpy(v).cuda() for k, v in feeds.items()}
    shape = tuple(engine.get_tensor_shape("pooled"))
    dtype = torch.float16 if engine.get_tensor_dtype("pooled") == trt.DataType.HALF else torch.float32
    tensors["pooled"] = torch.empty(shape, dtype=dtype, device="cuda")
    for name, t in tensors.items():
        context.set_tensor_address(name, t.data_ptr())
    stream = torch.cuda.Stream()
    assert context.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return tensors["pooled"].cpu().numpy()


@pytest.mark.tensorrt
@pytest.mark.parametrize("dtype,out", [(np.float32, 7), (np.float16, 14)])
def test_engine_with_plugin_matches_cpu_build(tmp_path, built_plugin, dtype, out):
    rng = np.random.default_rng(0)
    batch, n, channels, size = 2, 1000, 8, (128, 192)
    model = plugin_onnx(tmp_path / "m.onnx", batch=batch, rois=n, channels=channels, size=size, dtype=dtype, out=out)
    engine_path = tmp_path / "m.engine"
    assert main(["build", str(model), "-o", str(engine_path), "--plugin-lib", str(built_plugin),
                 "--timing-cache", str(tmp_path / "timing.cache"), "--workspace", "1"]) == 0
    meta = read_sidecar(engine_path)
    assert meta["onnx_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert Path(meta["plugin_library"]) == built_plugin.resolve() and meta["tensorrt_version"]
    assert meta["plugin"]["name"] == "MultilevelRoIAlign" and (tmp_path / "timing.cache").is_file()

    rois = random_rois(rng, batch, n, *size)
    feats = [rng.standard_normal((batch, channels, size[0] // s, size[1] // s)).astype(dtype) for s in (4, 8, 16, 32)]
    got = run_engine(engine_path, {"rois": rois, **{f"feature_{i}": f for i, f in enumerate(feats)}})
    want = multilevel_roi_align_host(rois, feats, out, out, 2, 0)
    err = np.abs(got.astype(np.float32) - want.astype(np.float32))
    print(f"TensorRT vs CPU ({np.dtype(dtype).name}, {out}x{out}): max {err.max():.3g}, mean {err.mean():.3g}")
    # GPU float32 differs from the CPU build only by FMA contraction; float16 by one final rounding
    tol = 1e-4 if dtype == np.float32 else np.spacing(np.abs(want).astype(np.float16)).astype(np.float32) + 1e-4
    assert np.all(err <= tol)


@pytest.mark.tensorrt
def test_engine_build_reports_channel_mismatch(tmp_path, built_plugin, capsys):
    model = plugin_onnx(tmp_path / "m.onnx", channels=8, channels_last_level=4)
    engine_path = tmp_path / "m.engine"
    assert main(["build", str(model), "-o", str(engine_path), "--plugin-lib", str(built_plugin),
                 "--no-timing-cache"]) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("mrcnn-edge: error: ") and "channels" in last
    assert not engine_path.exists() and not sidecar_path(engine_path).exists()
    assert files_in(tmp_path) == {"m.onnx"}
