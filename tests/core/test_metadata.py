"""The one metadata reader and its one required-key check (``mrcnn_edge.core.metadata``)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mrcnn_edge.core.contract import MODEL_KEYS, REQUIRED_KEYS
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.metadata import encode, read_metadata, read_onnx_metadata, require_keys, sidecar_path

FULL = {"mrcnn_edge_version": "0.1.0", "arch": "x", "num_classes": 2, "class_names": ["__background__", "a"],
        "input_size": [64, 64], "batch": 1, "mean": [0.5] * 3, "std": [0.25] * 3, "channel_order": "RGB",
        "max_detections": 5, "score_threshold": 0.05, "mask_size": 8, "flavor": "portable", "precision": "fp32",
        "plugin": None, "opset": 17}


def test_the_sample_metadata_is_every_model_key():
    assert set(FULL) == set(MODEL_KEYS)  # the cases below rely on it


def test_require_keys_names_the_file_and_the_missing_keys():
    require_keys(FULL, "m.onnx", MODEL_KEYS)  # complete: no error
    partial = {k: v for k, v in FULL.items() if k not in ("mean", "batch")}
    with pytest.raises(UserError) as err:
        require_keys(partial, "some/m.onnx", MODEL_KEYS)
    line = str(err.value)
    assert line.startswith("some/m.onnx lacks the mrcnn-edge metadata batch, mean:") and "\n" not in line
    assert "mrcnn-edge export" in line  # what to do
    with pytest.raises(UserError, match=r"^m.onnx has no mrcnn-edge metadata \(input_size, mean, std, class_names "
                                        r"missing\): quantize"):
        require_keys({"producer": "someone"}, "m.onnx", REQUIRED_KEYS, hint="quantize a model made by ...")
    with pytest.raises(UserError, match=r"mrcnn_edge_version, arch, num_classes, class_names \.\.\. missing"):
        require_keys({}, "m.onnx", MODEL_KEYS)  # the first four keys, then dots


def test_read_metadata_of_an_onnx_model_and_of_an_engine_sidecar(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.helper.set_model_props(model, encode(FULL))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert read_metadata(path, MODEL_KEYS) == FULL
    info, meta = read_onnx_metadata(path)
    assert meta == FULL and ("", "Identity") in info.nodes
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"opaque")
    sidecar_path(engine).write_text(json.dumps(encode({k: FULL[k] for k in REQUIRED_KEYS})))
    assert read_metadata(engine)["input_size"] == [64, 64]
    with pytest.raises(UserError, match="lacks the mrcnn-edge metadata mrcnn_edge_version"):
        read_metadata(engine, MODEL_KEYS)


@pytest.mark.parametrize("name, content, words", [
    ("none.onnx", None, "ONNX model {path} not found"),
    ("junk.onnx", b"\x00garbage\xff" * 10, "cannot read {path} as an ONNX model"),
    ("empty.onnx", b"", "cannot read {path} as an ONNX model: the file is empty"),
    ("none.engine", None, "engine {path} not found"),
    ("lone.engine", b"opaque", "sidecar"),
])
def test_unreadable_models_are_one_line(tmp_path, name, content, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError) as err:
        read_metadata(path)
    assert words.format(path=path) in str(err.value) and "\n" not in str(err.value)


def test_the_reader_imports_neither_torch_nor_onnx():
    code = ("import sys, json; import mrcnn_edge.core.metadata; "
            "print(json.dumps(sorted(m for m in ('torch', 'onnx', 'numpy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout) == []
