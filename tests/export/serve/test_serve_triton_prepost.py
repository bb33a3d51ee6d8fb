"""``serve triton --pre-post server`` on a real ``tritonserver`` (tests/triton_server.py), called over
HTTP with nothing but the standard library, as curl would.

The answer to a JPEG must be the local ``Segmenter``'s on the same JPEG: boxes within 0.5 px, the
same classes, mask IoU >= 0.98 (the server runs its own OpenCV build and, here, ONNX Runtime where
the local side may pick OpenVINO; the masks are decoded with pycocotools, not with our encoder).
"""
from __future__ import annotations

import json
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
mask_api = pytest.importorskip("pycocotools.mask", reason="needs pycocotools ([model] extra) to decode RLE")
pytest.importorskip("onnx")
pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (dev extra)")

from triton_server import TritonServer, server_venv  # noqa: E402

from mrcnn_edge.commands.cli import main  # noqa: E402
from mrcnn_edge.runtime.segmenter import Segmenter  # noqa: E402
from mrcnn_edge.runtime.testing import make_contract_model  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, local model): the [B,1] contract model written with --pre-post server, served."""
    venv = server_venv()
    d = tmp_path_factory.mktemp("prepost")
    model = make_contract_model(d / "edge.onnx", batch=1, mask_size=28)
    repo = d / "repo"
    assert main(["serve", "triton", str(model), "--repo", str(repo), "--name", "edge", "--pre-post", "server"]) == 0
    assert main(["serve", "triton", str(model), "--repo", str(repo), "--name", "strict", "--pre-post", "server",
                 "--score-threshold", "0.99"]) == 0  # the contract model scores below 0.9: nothing passes
    server = TritonServer(repo, venv, d / "tritonserver.log")
    server.start()
    try:
        yield server, model
    finally:
        server.stop()


def _frame(seed: int) -> np.ndarray:
    """A textured BGR frame with bright blobs (the contract model's masks follow brightness)."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 40, (150, 200, 3), dtype=np.uint8)
    cv2.circle(frame, (60, 50), 35, (250, 250, 250), -1)
    cv2.rectangle(frame, (110, 70), (185, 140), (220, 230, 240), -1)
    return frame


def _bytes_element(raw: bytes) -> bytes:
    return struct.pack("<I", len(raw)) + raw


def _masks(rles: list[str]) -> np.ndarray:
    decoded = [mask_api.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in map(json.loads, rles)]
    return np.stack(decoded).astype(bool) if decoded else np.zeros((0, 1, 1), bool)


# pycocotools' decode warns under numpy 2 (its own __array__ call); harmless here
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_a_jpeg_over_http_gets_the_local_segmenters_detections(served, tmp_path):
    server, model = served
    frame = _frame(0)
    jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    out = server.infer_http("edge", {"image": ("BYTES", [1], _bytes_element(jpeg))})
    local_image = tmp_path / "sent.jpg"
    local_image.write_bytes(jpeg)
    with Segmenter.from_path(model) as local:
        expected = local(cv2.imread(str(local_image)))
    n = len(expected)
    assert n > 0
    assert out["boxes"]["shape"] == [n, 4] and out["masks"]["shape"] == [n]
    boxes = np.asarray(out["boxes"]["data"], np.float32).reshape(n, 4)
    assert np.abs(boxes - expected.boxes).max() <= 0.5
    assert out["classes"]["data"] == expected.class_ids.tolist()
    assert out["class_names"]["data"] == expected.class_names
    np.testing.assert_allclose(out["scores"]["data"], expected.scores, atol=1e-3)
    masks = _masks(out["masks"]["data"])
    assert masks.shape == (n, *frame.shape[:2])
    assert all(want.any() for want in expected.masks)
    ious = [(got & want).sum() / (got | want).sum() for got, want in zip(masks, expected.masks)]
    print(f"{n} detections; boxes max |diff| {np.abs(boxes - expected.boxes).max():.3f} px, "
          f"mask IoU min {min(ious):.4f}")
    assert min(ious) >= 0.98, ious


def test_a_raw_frame_is_answered_like_the_same_png(served):
    server, _ = served
    frame = _frame(1)
    png = cv2.imencode(".png", frame)[1].tobytes()  # lossless: the same pixels both ways
    by_png = server.infer_http("edge", {"image": ("BYTES", [1], _bytes_element(png))})
    by_frame = server.infer_http("edge", {"frame": ("UINT8", list(frame.shape), frame.tobytes())})
    assert by_png["boxes"]["shape"][0] > 0
    for name in ("boxes", "scores", "classes", "class_names", "masks"):
        assert by_frame[name]["data"] == by_png[name]["data"], name


def test_no_detection_is_an_empty_answer(served):
    server, _ = served
    png = cv2.imencode(".png", _frame(4))[1].tobytes()
    out = server.infer_http("strict", {"image": ("BYTES", [1], _bytes_element(png))})
    assert out["boxes"]["shape"] == [0, 4]
    assert [out[n]["shape"] for n in ("scores", "classes", "class_names", "masks")] == [[0]] * 4


@pytest.mark.parametrize("inputs, says", [
    ({"image": ("BYTES", [1], _bytes_element(b"not an image"))}, "not an image OpenCV can decode"),
    ({}, "send one input"),
])
def test_a_bad_request_is_answered_with_its_reason(served, inputs, says):
    server, _ = served
    with pytest.raises(urllib.error.HTTPError) as info:
        server.infer_http("edge", inputs)
    assert says in info.value.read().decode()
    # and the model still answers the next one
    png = cv2.imencode(".png", _frame(2))[1].tobytes()
    assert server.infer_http("edge", {"image": ("BYTES", [1], _bytes_element(png))})["boxes"]["shape"][0] > 0


def test_run_triton_refuses_the_pre_post_model_in_one_line(served, tmp_path, capsys):
    server, _ = served
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), _frame(3))
    assert main(["run", server.url("edge"), "--source", str(image), "--no-display"]) != 0
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("mrcnn-edge: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "pre- and post-processing on the server" in errors[0]


def test_the_written_model_file_is_the_packaged_one(served):
    from mrcnn_edge.export.serve import prepost_model

    server, _ = served
    assert (server.repo / "edge" / "1" / "model.py").read_bytes() == Path(prepost_model.__file__).read_bytes()
