"""``serve deepstream``: the nvinfer config, and the instance-mask parser run on a handcrafted batch.

The parser is compiled with g++ against plugins/deepstream/nvdsinfer_minimal.h (DeepStream's
headers are not public downloads) and driven by plugins/deepstream/tests/parser_harness.cpp, which
calls it the way nvinfer does: once per frame, each layer's buffer advanced by
``numElements * element_size * frame``.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mrcnn_edge.commands.cli import main
from mrcnn_edge.runtime.testing import make_contract_model

DS = Path(__file__).resolve().parents[3] / "plugins" / "deepstream"
NET_W, NET_H = 160, 96          # canvas width != height
K, MH, MW = 4, 3, 5             # mask rows != columns, so a swap shows


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("g++") is None:
        pytest.skip("needs g++ to compile the DeepStream parser")
    d = tmp_path_factory.mktemp("ds")
    lib, exe = d / "libparser.so", d / "harness"
    flags = ["-O1", "-std=c++14", "-Wall", "-Wextra", "-Werror", f"-I{DS}"]
    subprocess.run(["g++", *flags, "-fPIC", "-shared", "-DMRCNN_EDGE_MINIMAL_NVDSINFER", "-o", str(lib),
                    str(DS / "mrcnn_edge_parser.cpp")], check=True)
    subprocess.run(["g++", *flags, "-o", str(exe), str(DS / "tests" / "parser_harness.cpp"), "-ldl"], check=True)
    return lib, exe


def _batch(mask_dtype=np.float32) -> dict[str, np.ndarray]:
    """Two frames with different detections; padding rows as the contract writes them."""
    num = np.array([3, 1], np.int32)
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


def _run(harness, tmp_path: Path, layers: dict[str, np.ndarray], threshold: float = 0.5) -> list[dict]:
    lib, exe = harness
    types = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.int32): 3}
    for name, a in layers.items():
        (tmp_path / f"{name}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
        per_frame = a.shape[1:]
        (tmp_path / f"{name}.dims").write_text(f"{types[a.dtype]} {len(per_frame)} {' '.join(map(str, per_frame))}\n")
    out = subprocess.run([str(exe), str(lib), str(tmp_path), "2", str(NET_W), str(NET_H), "3", str(threshold)],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.parametrize("mask_dtype", [np.float32, np.float16])
def test_parser_layout_per_frame_of_a_batch(harness, tmp_path, mask_dtype):
    layers = _batch(mask_dtype)
    objs = _run(harness, tmp_path, layers)
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
    layers["num_detections"] = np.array([99, -4], np.int32)  # clamped to [0, K]
    layers["classes"][0, 1] = 7                               # >= numClassesConfigured (3): dropped
    objs = _run(harness, tmp_path, layers, threshold=0.0)
    assert [(o["frame"], o["classId"]) for o in objs] == [(0, 1), (0, 1)]


def _ds_model(tmp_path: Path, **meta) -> Path:
    return make_contract_model(tmp_path / "m.onnx", batch=2, metadata=meta)


def test_config_for_equal_std_model(tmp_path, capsys):
    model = _ds_model(tmp_path, mean=[0.5, 0.25, 0.125], std=[0.5, 0.5, 0.5])
    out = tmp_path / "ds"
    assert main(["serve", "deepstream", str(model), "--out", str(out), "--deepstream", str(tmp_path / "none")]) == 0
    text = (out / "config_infer_mrcnn_edge.txt").read_text()
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
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
