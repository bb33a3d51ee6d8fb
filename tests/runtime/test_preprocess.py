"""Reference pre-processing against torchvision, and frame conversion of bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.runtime.frames import as_bgr8
from mrcnn_edge.runtime.preprocess import Letterbox, bilinear_taps, letterbox, normalization

torch = pytest.importorskip("torch")
F = torch.nn.functional

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOL = 1e-4  # after normalisation


def _torch_reference(frame: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """torchvision's transform, spelled out: /255, normalise, resize by scale_factor, pad with 0."""
    h, w = frame.shape[:2]
    scale = min(canvas[0] / h, canvas[1] / w)
    x = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1])).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    x = F.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                      align_corners=False)[0]
    out = torch.zeros(3, *canvas)
    out[:, : x.shape[1], : x.shape[2]] = x
    return out.numpy()


@pytest.mark.parametrize("hw,canvas", [
    ((480, 640), (512, 512)), ((480, 640), (384, 640)), ((37, 53), (128, 160)), ((720, 1280), (256, 320)),
    ((1, 1), (64, 64)), ((8000, 100), (256, 256)), ((100, 8000), (256, 256)), ((240, 320), (480, 640)),
])
def test_letterbox_equals_torch_interpolate(hw, canvas):
    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    frame = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    ours, box = letterbox(frame, canvas, MEAN, STD)
    ref = _torch_reference(frame, canvas)
    diff = np.abs(ours - ref)
    print(f"{hw}->{canvas}: resized {box.resized_h}x{box.resized_w}, max {diff.max():.2e} mean {diff.mean():.2e}")
    assert diff.max() <= TOL
    # the padding is exactly 0 in the normalised tensor
    assert not ours[:, box.resized_h:, :].any() and not ours[:, :, box.resized_w:].any()


def test_letterbox_equals_torchvision_transform():
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    rng = np.random.default_rng(0)
    canvas = 320
    tf = GeneralizedRCNNTransform(min_size=canvas, max_size=canvas, image_mean=list(MEAN), image_std=list(STD)).eval()
    for hw in [(480, 640), (300, 200), (123, 321)]:
        frame = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
        image = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1])).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            batch, _ = tf([image])
        rh, rw = batch.image_sizes[0]
        ours, box = letterbox(frame, (canvas, canvas), MEAN, STD)
        assert (box.resized_h, box.resized_w) == (rh, rw)
        ref = batch.tensors[0].numpy()
        assert np.abs(ours[:, : ref.shape[1], : ref.shape[2]] - ref).max() <= TOL


def test_letterbox_geometry_is_torchvisions_floor():
    box = Letterbox.fit((480, 640), (512, 512))
    assert (box.scale, box.resized_h, box.resized_w) == (0.8, 384, 512)
    for h, w in [(7, 3), (999, 1001), (8000, 100), (1, 1), (100, 8000)]:
        box = Letterbox.fit((h, w), (320, 256))
        scale = min(320 / h, 256 / w)
        assert box.resized_h == max(1, min(320, math.floor(h * scale)))
        assert box.resized_w == max(1, min(256, math.floor(w * scale)))
    # a sliver never becomes 0 pixels wide
    assert Letterbox.fit((100000, 1), (64, 64)).resized_w == 1


def test_boxes_to_frame_matches_torchvision_resize_and_clip():
    from torchvision.models.detection.transform import resize_boxes
    from torchvision.ops import clip_boxes_to_image

    box = Letterbox.fit((480, 641), (256, 256))
    rng = np.random.default_rng(1)
    canvas_boxes = rng.uniform(-20, 280, size=(50, 4)).astype(np.float32)
    ours = box.boxes_to_frame(canvas_boxes)
    ref = clip_boxes_to_image(torch.from_numpy(canvas_boxes), (box.resized_h, box.resized_w))
    ref = resize_boxes(ref, [box.resized_h, box.resized_w], [480, 641]).numpy()
    assert np.array_equal(ours, ref)


def test_taps_are_torch_bilinear():
    # weights through a 1-D interpolation of a ramp equal torch's
    for n_in, n_out in [(10, 3), (3, 10), (28 + 2, 57), (640, 512)]:
        src = np.arange(n_in, dtype=np.float32) ** 1.5
        t = bilinear_taps(n_in, n_out)
        ours = src[t.i0] * (1 - t.w1) + src[t.i1] * t.w1
        ref = F.interpolate(torch.from_numpy(src)[None, None, None], size=(1, n_out), mode="bilinear",
                            align_corners=False)[0, 0, 0].numpy()
        assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, float(src.max()))


def test_fp16_output_is_the_rounded_fp32_result():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, size=(90, 70, 3), dtype=np.uint8)
    full, _ = letterbox(frame, (64, 64), MEAN, STD)
    half, _ = letterbox(frame, (64, 64), MEAN, STD, dtype=np.float16)
    assert half.dtype == np.float16 and np.array_equal(half, full.astype(np.float16))


def test_normalization_folds_mean_and_std():
    mul, add = normalization(MEAN, STD)
    x = np.arange(256, dtype=np.float32)
    for c in range(3):
        assert np.allclose(x * mul[c] + add[c], (x / 255 - MEAN[c]) / STD[c], atol=1e-6)


# -- frame conversion (bad input) ---------------------------------------------------------------
def test_valid_frame_passes_through_untouched():
    frame = np.zeros((4, 5, 3), np.uint8)
    assert as_bgr8(frame) is frame


@pytest.mark.parametrize("make,expect", [
    (lambda: np.full((4, 5), 7, np.uint8), np.full((4, 5, 3), 7, np.uint8)),            # gray 2-D
    (lambda: np.full((4, 5, 1), 9, np.uint8), np.full((4, 5, 3), 9, np.uint8)),         # gray H×W×1
    (lambda: np.dstack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3, 200)]),         # BGRA: alpha dropped
     np.dstack([np.full((2, 2), v, np.uint8) for v in (1, 2, 3)])),
    (lambda: np.full((3, 3, 3), 0xABCD, np.uint16), np.full((3, 3, 3), 0xAB, np.uint8)),  # 16-bit: >> 8
    (lambda: np.full((3, 3, 3), 0.5, np.float32), np.full((3, 3, 3), 128, np.uint8)),    # float [0,1]
    (lambda: np.ones((3, 3, 3), np.float64), np.full((3, 3, 3), 255, np.uint8)),
    (lambda: np.zeros((3, 3), np.float16), np.zeros((3, 3, 3), np.uint8)),
    (lambda: np.full((3, 3, 4), 65535, np.uint16), np.full((3, 3, 3), 255, np.uint8)),
])
def test_frames_are_converted(make, expect):
    out = as_bgr8(make())
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, expect)


def test_non_contiguous_frames_become_contiguous():
    frame = np.zeros((10, 10, 3), np.uint8)[:, ::2]
    assert as_bgr8(frame).flags.c_contiguous


@pytest.mark.parametrize("bad,words", [
    (np.zeros((0, 0, 3), np.uint8), "empty frame"),
    (np.zeros((5, 0, 3), np.uint8), "empty frame"),
    (np.zeros((0,), np.uint8), "empty frame"),
    (np.zeros((4, 5, 2), np.uint8), "unsupported frame layout"),
    (np.zeros((2, 4, 5, 3), np.uint8), "segmenter.batch"),
    (np.zeros((5,), np.uint8), "unsupported frame layout"),
    (np.zeros((4, 5, 3), np.int32), "unsupported frame dtype"),
    (np.zeros((4, 5, 3), bool), "unsupported frame dtype"),
    (np.full((4, 5, 3), 2.0, np.float32), "[0, 1]"),
    (np.full((4, 5, 3), np.nan, np.float32), "NaN"),
    (None, "no frame"),
    ("not an image", "numeric"),
])
def test_bad_frames_are_refused_with_one_line(bad, words):
    with pytest.raises(UserError) as err:
        as_bgr8(bad)
    assert words in str(err.value) and "\n" not in str(err.value)
