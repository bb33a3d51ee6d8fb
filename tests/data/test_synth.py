"""The synthetic data (mrcnn_edge.data): determinism, COCO validity, occlusion, atomicity, video, CLI."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mrcnn_edge.data import shapes, video
from mrcnn_edge.data.coco import load_dataset
from mrcnn_edge.data.dataset import generate_dataset
from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.cliutil import parse_hw
from mrcnn_edge.core.errors import UserError

SIZE = (96, 128)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("d") / "ds", 12, seed=3, size=SIZE,
                                  progress=False)


def test_api_names():
    assert [c["id"] for c in shapes.CATEGORIES] == list(range(1, len(shapes.CATEGORIES) + 1))
    assert len(shapes.CATEGORIES) >= 4
    assert shapes.CLASS_NAMES[0] == "__background__"
    assert shapes.CLASS_NAMES[1:] == [c["name"] for c in shapes.CATEGORIES]


def test_deterministic(tmp_path, dataset):
    again = generate_dataset(tmp_path / "again", 12, seed=3, size=SIZE, progress=False)
    assert _digest(again) == _digest(dataset)
    other = generate_dataset(tmp_path / "other", 12, seed=4, size=SIZE, progress=False)
    a, b = _digest(other), _digest(dataset)
    assert a["annotations.json"] != b["annotations.json"]
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_coco_valid_and_matches_render(dataset):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "annotations.json"))
    assert len(coco.getImgIds()) == 12
    raw = json.loads((dataset / "annotations.json").read_text())
    assert {c["id"] for c in raw["categories"]} == {c["id"] for c in shapes.CATEGORIES}
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == SIZE
        image = cv2.imread(str(dataset / info["file_name"]))
        expected_image, expected = shapes.render_sample(shapes.image_rng(3, image_id - 1), SIZE)
        assert np.array_equal(image, expected_image)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert len(anns) == len(expected)
        for ann, (category_id, mask) in zip(anns, expected):
            assert ann["category_id"] == category_id and ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"]["counts"], str)
            decoded = coco.annToMask(ann).astype(bool)
            assert np.array_equal(decoded, mask)
            assert ann["area"] == mask.sum() == mask_utils.area(ann["segmentation"])
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_atomic_on_failure(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = cv2.imwrite

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(cv2, "imwrite", flaky)
    with pytest.raises(OSError):
        generate_dataset(tmp_path / "ds", 8, seed=0, size=SIZE, progress=False)
    assert calls["n"] == 4
    assert list(tmp_path.iterdir()) == []


def test_parse_hw():
    assert parse_hw("480x640") == (480, 640)
    assert parse_hw("320") == (320, 320)
    assert parse_hw("64X96", multiple_of=32) == (64, 96)
    for bad in ("abc", "0x10", "-5x10", "10x", "33x64"):
        with pytest.raises(UserError):
            parse_hw(bad, multiple_of=32 if bad == "33x64" else None)
    with pytest.raises(UserError):
        parse_hw("16x64", minimum=32)


def test_categories_sizes_and_occlusion():
    """Over a small dataset: every class, small and large objects, real occlusion, no overlap."""
    size = (160, 160)
    seen: set[int] = set()
    extents = []
    occluded = 0
    for i in range(40):
        image, instances = shapes.render_sample(shapes.image_rng(11, i), size)
        assert image.shape == (*size, 3) and image.dtype == np.uint8
        assert len(instances) <= 8
        cover = np.zeros(size, np.int32)
        for category_id, mask in instances:
            assert mask.shape == size and mask.dtype == bool
            assert mask.sum() >= shapes.MIN_VISIBLE_PIXELS
            seen.add(category_id)
            ys, xs = np.nonzero(mask)
            extents.append(max(np.ptp(xs), np.ptp(ys)) + 1)
            cover += mask
        assert cover.max() <= 1, "visible masks overlap"
    # occlusion: shapes drawn over earlier ones, and kept masks cut by the shapes on top
    cut = 0
    real_shape_patch = shapes._shape_patch
    for i in range(40):
        drawn: list[np.ndarray] = []

        def spy(s):
            patch, x0, y0 = real_shape_patch(s)
            m = np.zeros(size, bool)
            cl = shapes._clip(patch, x0, y0, *size)
            if cl:
                m[cl[0]] = patch[cl[1]].astype(bool)
            drawn.append(m)
            return patch, x0, y0

        shapes._shape_patch = spy
        try:
            _, instances = shapes.render_sample(shapes.image_rng(11, i), size)
        finally:
            shapes._shape_patch = real_shape_patch
        later_union = np.zeros(size, bool)
        for m in reversed(drawn):
            occluded += bool((m & later_union).any())
            later_union |= m
        for _, mask in instances:
            whole = next(m for m in drawn if not (mask & ~m).any())
            cut += whole.sum() > mask.sum()
    assert seen == {c["id"] for c in shapes.CATEGORIES}
    extents = np.array(extents)
    assert extents.min() < 16 and extents.max() > 50, (extents.min(), extents.max())
    assert occluded >= 5 and cut >= 5, (occluded, cut)


def test_masks_are_the_painted_pixels(monkeypatch):
    """On a black, noise-free canvas the painted pixels are exactly the shapes' pixels."""
    monkeypatch.setattr(shapes, "_background", lambda rng, h, w: np.zeros((h, w, 3), np.float32))
    monkeypatch.setattr(shapes, "_add_noise", lambda rng, img, sigma: img.clip(0, 255).astype(np.uint8))
    patches = []
    real_shape_patch = shapes._shape_patch

    def record(s):
        out = real_shape_patch(s)
        patches.append(out)
        return out

    monkeypatch.setattr(shapes, "_shape_patch", record)
    for i in range(10):
        patches.clear()
        image, instances = shapes.render_sample(shapes.image_rng(5, i), SIZE)
        drawn = np.zeros(SIZE, bool)
        for patch, x0, y0 in patches:
            cl = shapes._clip(patch, x0, y0, *SIZE)
            if cl:
                drawn[cl[0]] |= patch[cl[1]].astype(bool)
        assert np.array_equal(image.any(2), drawn)
        union = np.zeros(SIZE, bool)
        for _, mask in instances:
            assert image[mask].any(1).all()
            union |= mask
        assert not (union & ~drawn).any()


def test_video_frames(tmp_path):
    frames = list(video.render_video_frames(12, seed=2, size=(64, 96)))
    again = list(video.render_video_frames(12, seed=2, size=(64, 96)))
    assert len(frames) == 12 and all(f.shape == (64, 96, 3) and f.dtype == np.uint8 for f in frames)
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))
    moved = np.abs(frames[0].astype(int) - frames[-1].astype(int)).max(2) > 60
    assert moved.sum() > 20, "shapes do not move"
    out = video.write_video(tmp_path / "v.mp4", 12, seed=2, size=(64, 96), progress=False)
    cap = cv2.VideoCapture(str(out))
    try:
        read = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            read.append(frame)
    finally:
        cap.release()
    assert len(read) == 12
    assert all(f.shape == (64, 96, 3) for f in read)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_load_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="no COCO annotations"):
        load_dataset(tmp_path)
    (tmp_path / "annotations.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid COCO"):
        load_dataset(tmp_path)
    (tmp_path / "annotations.json").write_text('{"images": []}')
    with pytest.raises(UserError, match="lists no images"):
        load_dataset(tmp_path)


def test_load_dataset(dataset):
    ds = load_dataset(dataset)
    assert len(ds.image_ids) == 12
    assert ds.class_names == shapes.CLASS_NAMES
    assert all(ds.image_path(i).is_file() for i in ds.image_ids)
    assert ds.read_image(ds.image_ids[0]).shape == (*SIZE, 3)
    boxes, labels, masks = ds.targets(ds.image_ids[0])
    assert len(boxes) == len(labels) == len(masks) > 0


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "ds"), "--images", "3", "--size", "64x80",
                 "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    assert "3 images 64x80" in out and "instances" in out and "circle" in out
    assert "[synth] 3/3 images" in err
    coco = load_dataset(tmp_path / "ds").coco.dataset
    assert {(im["height"], im["width"]) for im in coco["images"]} == {(64, 80)}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["synth", "--size", "abc"], "not HxW"),
        (["synth", "--size", "0x64"], "at least 32"),
        (["synth", "--size", "16x64"], "at least 32"),
        (["synth", "--images", "0"], "at least 1"),
        (["synth", "--out", "{file}/sub"], "file.txt is a file, not a folder"),  # names what is in the way
        (["synth", "--out", "{file}"], "not a folder"),
        (["synth-video", "--out", "{tmp}/v.mov"], ".mp4 or .avi"),
        (["synth-video", "--frames", "0"], "at least 1"),
        (["synth-video", "--size", "20x20"], "at least 32"),
        (["synth-video", "--fps", "0"], "positive"),
        (["synth-video", "--out", "{file}/v.mp4"], "cannot create folder"),
    ],
)
def test_cli_bad_input(tmp_path, capsys, argv, message):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = [a.format(file=blocker, tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / ("v.mp4" if argv[0] == "synth-video" else "ds"))]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrcnn-edge: error:"), err
    assert message in lines[0] and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
