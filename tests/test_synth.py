"""The synthetic data generator: determinism, COCO validity, occlusion, atomicity, video, CLI."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mrcnn_edge import synth
from mrcnn_edge.cli import main
from mrcnn_edge.cliutil import parse_hw
from mrcnn_edge.errors import UserError

SIZE = (96, 128)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth.generate_dataset(tmp_path_factory.mktemp("d") / "ds", 12, seed=3, size=SIZE,
                                  progress=False)


def test_api_names():
    assert [c["id"] for c in synth.CATEGORIES] == list(range(1, len(synth.CATEGORIES) + 1))
    assert len(synth.CATEGORIES) >= 4
    assert synth.CLASS_NAMES[0] == "__background__"
    assert synth.CLASS_NAMES[1:] == [c["name"] for c in synth.CATEGORIES]


def test_deterministic(tmp_path, dataset):
    again = synth.generate_dataset(tmp_path / "again", 12, seed=3, size=SIZE, progress=False)
    assert _digest(again) == _digest(dataset)
    other = synth.generate_dataset(tmp_path / "other", 12, seed=4, size=SIZE, progress=False)
    a, b = _digest(other), _digest(dataset)
    assert a["annotations.json"] != b["annotations.json"]
    assert all(a[k] != b[k] for k in a if k.startswith("images/"))


def test_coco_valid_and_matches_render(dataset):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO(str(dataset / "annotations.json"))
    assert len(coco.getImgIds()) == 12
    raw = json.loads((dataset / "annotations.json").read_text())
    assert {c["id"] for c in raw["categories"]} == {c["id"] for c in synth.CATEGORIES}
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == SIZE
        image = cv2.imread(str(dataset / info["file_name"]))
        expected_image, expected = synth.render_sample(synth.image_rng(3, image_id - 1), SIZE)
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
        synth.generate_dataset(tmp_path / "ds", 8, seed=0, size=SIZE, progress=False)
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
