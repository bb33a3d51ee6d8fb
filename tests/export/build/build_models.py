"""What the tests of ``mrcnn-edge build`` and ``build-plugin`` share: a private cache, a one-node
MultilevelRoIAlign model with mrcnn-edge metadata, TensorRT headers found here, and the checks of a
one-line error and of what is left on disk. Test support, imported by the test files of this folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mrcnn_edge.core.metadata import MODEL_KEYS, encode
from mrcnn_edge.export.build import plugin_library as plugin_build

SCALES = [0.25, 0.125, 0.0625, 0.03125]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own mrcnn-edge cache: no default plugin library, no timing cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(cache))
    return cache


def model_metadata(**over) -> dict:
    """mrcnn-edge metadata of a tensorrt-flavor model, ``over`` replacing keys."""
    meta = {
        "mrcnn_edge_version": "0.1.0", "arch": "test", "num_classes": 2, "class_names": ["bg", "thing"],
        "input_size": [64, 96], "batch": 1, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB", "max_detections": 10, "score_threshold": 0.05, "mask_size": 28,
        "flavor": "tensorrt", "precision": "fp32", "opset": 18,
        "plugin": {"name": "MultilevelRoIAlign", "version": "1", "namespace": "mrcnn_edge"},
    }
    meta.update(over)
    assert set(MODEL_KEYS) <= set(meta)
    return meta


def plugin_onnx(path: Path, *, batch=1, rois=64, channels=8, size=(64, 96), dtype=np.float32, out=7,
                attrs: dict | None = None, channels_last_level: int | None = None, metadata=True) -> Path:
    """A one-node model: MultilevelRoIAlign(rois, P2..P5) -> pooled, with mrcnn-edge metadata."""
    import onnx
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    h, w = size
    inputs = [helper.make_tensor_value_info("rois", TensorProto.FLOAT, [batch, rois, 4])]
    for level, stride in enumerate((4, 8, 16, 32)):
        c = channels_last_level if (level == 3 and channels_last_level) else channels
        inputs.append(helper.make_tensor_value_info(f"feature_{level}", elem, [batch, c, h // stride, w // stride]))
    attributes = dict(output_height=out, output_width=out, sampling_ratio=2, aligned=0, spatial_scales=SCALES,
                      canonical_scale=224.0, canonical_level=4, plugin_version="1", plugin_namespace="mrcnn_edge")
    attributes.update(attrs or {})
    attributes = {k: v for k, v in attributes.items() if v is not None}
    node = helper.make_node("MultilevelRoIAlign", [i.name for i in inputs], ["pooled"], name="roi_pool",
                            domain="mrcnn_edge", **attributes)
    output = helper.make_tensor_value_info("pooled", elem, [batch, rois, channels, out, out])
    graph = helper.make_graph([node], "roi_align_only", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mrcnn_edge", 1)])
    model.ir_version = 8  # opset 18's IR version: every TensorRT >= 10.3 parser knows it
    if metadata:
        helper.set_model_props(model, encode(model_metadata(batch=batch, input_size=list(size))))
    onnx.save(model, str(path))
    return path


def error_line(capsys) -> str:
    """The one stderr line of a failed command (and that it is one line)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mrcnn-edge: error: ")
    return err[0]


def files_in(folder: Path) -> set[str]:
    """Everything under ``folder`` (relative names), the private cache excepted."""
    if not folder.exists():
        return set()
    names = {str(p.relative_to(folder)) for p in folder.rglob("*")}
    return {n for n in names if n != "cache" and not n.startswith("cache" + os.sep)}


def real_tensorrt_headers() -> Path | None:
    """A folder of TensorRT headers on this machine: ``$MRCNN_EDGE_TENSORRT_INCLUDE``, the newest set of
    ``$MRCNN_EDGE_TRT_HEADERS`` (scripts/test.sh exports it), else an installed TensorRT's."""
    for d in os.environ.get("MRCNN_EDGE_TENSORRT_INCLUDE", "").split(os.pathsep):
        if d and plugin_build.find_tensorrt_include(d):
            return Path(d)
    sets = os.environ.get("MRCNN_EDGE_TRT_HEADERS")
    if sets:
        for d in (Path(sets) / v / "include" for v in ("11.1", "10.16", "10.3")):
            if plugin_build.find_tensorrt_include(d):
                return d
    return plugin_build.find_tensorrt_include()
