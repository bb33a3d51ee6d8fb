"""Synthetic scenes: coloured shapes on textured, noisy backgrounds (images and their masks).

Every shape is drawn as a binary mask first (``cv2.fillPoly`` / ``cv2.circle``, no antialiasing)
and the image is coloured through that mask, so image and mask agree pixel for pixel. Later shapes
are drawn on top of earlier ones; an instance's mask is its *visible* part. The dataset writer
(:mod:`.dataset`) and the video writer (:mod:`.video`) both draw with this module, so a model
trained on the dataset sees the same look in the video. Only numpy and OpenCV are imported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CATEGORIES", "CLASS_NAMES", "GENERATOR_VERSION", "render_sample", "image_rng"]

#: COCO categories; ids are torchvision label ids (0 is the background).
CATEGORIES: list[dict] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
    {"id": 5, "name": "cross", "supercategory": "shape"},
]
#: ``CLASS_NAMES[label_id]``; index 0 is the background, as in torchvision.
CLASS_NAMES: list[str] = ["__background__"] + [c["name"] for c in CATEGORIES]

GENERATOR_VERSION = 1  # bump when the look or the random stream changes

# An instance is kept only if this much of it stays visible after occlusion.
MIN_VISIBLE_PIXELS = 20
MIN_VISIBLE_FRACTION = 0.15

_SHIFT = 4  # fixed-point bits for OpenCV drawing: sub-pixel vertices, still no antialiasing
_ONE = 1 << _SHIFT


def _unit_polygon(name: str) -> np.ndarray:
    """Vertices (float32[N, 2]) of a shape with circumradius 1, centred on 0, unrotated."""
    if name == "square":
        a = np.deg2rad(45.0 + 90.0 * np.arange(4))
        return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)
    if name == "triangle":
        a = np.deg2rad(-90.0 + 120.0 * np.arange(3))
        return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)
    if name == "star":
        a = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1).astype(np.float32)
    if name == "cross":
        t = 0.32  # arm half-width relative to the arm length
        p = np.array(
            [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t],
             [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]],
            np.float32,
        )
        return p / np.float32(math.hypot(1.0, t))
    raise ValueError(name)


_POLYGONS = {c["name"]: _unit_polygon(c["name"]) for c in CATEGORIES if c["name"] != "circle"}


@dataclass
class _Shape:
    """One shape to draw. ``size`` is the circumscribed diameter in pixels."""

    category_id: int
    cx: float
    cy: float
    size: float
    angle: float  # radians
    colour: np.ndarray  # float32[3], BGR
    shade: np.ndarray  # float32[2], brightness gradient per unit radius along x, y
    outline: int  # outline width in pixels, 0 for none


def _shape_patch(s: _Shape) -> tuple[np.ndarray, int, int]:
    """Draw ``s`` as a uint8 {0,1} mask on a small patch; returns (patch, x0, y0) in image pixels.

    The patch holds the whole shape, also where it lies outside the image.
    """
    r = s.size / 2.0
    half = int(math.ceil(r)) + 1
    x0, y0 = int(math.floor(s.cx)) - half, int(math.floor(s.cy)) - half
    n = 2 * half + 2
    patch = np.zeros((n, n), np.uint8)
    px, py = s.cx - x0, s.cy - y0
    name = CLASS_NAMES[s.category_id]
    if name == "circle":
        cv2.circle(patch, (round(px * _ONE), round(py * _ONE)), round(r * _ONE), 1, -1,
                   lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        c, si = math.cos(s.angle), math.sin(s.angle)
        rot = np.array([[c, si], [-si, c]], np.float32) * np.float32(r)
        pts = _POLYGONS[name] @ rot + np.array([px, py], np.float32)
        cv2.fillPoly(patch, [np.round(pts * _ONE).astype(np.int32)], 1,
                     lineType=cv2.LINE_8, shift=_SHIFT)
    return patch, x0, y0


def _clip(patch: np.ndarray, x0: int, y0: int, h: int, w: int):
    """Image slices and patch slices of the part of a patch that lies inside an h x w image."""
    ph, pw = patch.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + pw, w), min(y0 + ph, h)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    return (slice(iy0, iy1), slice(ix0, ix1)), (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))


def _paint(image: np.ndarray, ids: np.ndarray | None, s: _Shape, index: int,
           patch: np.ndarray, x0: int, y0: int) -> None:
    """Colour ``image`` through the shape's mask (and write ``index`` into ``ids``)."""
    h, w = image.shape[:2]
    cl = _clip(patch, x0, y0, h, w)
    if cl is None:
        return
    (isl, psl) = cl
    m = patch[psl].astype(bool)
    ph, pw = m.shape
    # Brightness shading across the shape, so fills are not flat.
    ys = (np.arange(psl[0].start, psl[0].stop, dtype=np.float32) + (y0 - s.cy)) / max(s.size / 2, 1)
    xs = (np.arange(psl[1].start, psl[1].stop, dtype=np.float32) + (x0 - s.cx)) / max(s.size / 2, 1)
    shade = xs[None, :] * s.shade[0] + ys[:, None] * s.shade[1]
    fill = s.colour[None, None, :] + shade[:, :, None]
    if s.outline:
        k = 2 * s.outline + 1
        inner = cv2.erode(patch, np.ones((k, k), np.uint8), borderType=cv2.BORDER_CONSTANT,
                          borderValue=0)[psl].astype(bool)
        edge = m & ~inner
        fill[edge] = s.colour * 0.45
    view = image[isl]
    view[m] = np.clip(fill[m], 0, 255).astype(np.uint8)
    if ids is not None:
        ids[isl][m] = index


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32[h, w, 3] BGR: random base colour, a linear gradient and low-frequency blobs.

    Everything here is smooth, so it is composed at 1/8 resolution and upsampled once.
    """
    lh, lw = max(2, -(-h // 8)), max(2, -(-w // 8))
    base = rng.uniform(40, 215, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp_x = np.linspace(-1, 1, lw, dtype=np.float32) * np.float32(math.cos(theta))
    ramp_y = np.linspace(-1, 1, lh, dtype=np.float32) * np.float32(math.sin(theta))
    delta = rng.normal(0, 35, 3).astype(np.float32)
    low = base + (ramp_y[:, None, None] + ramp_x[None, :, None]) * delta
    for cells, amp in ((rng.integers(2, 6), rng.uniform(15, 45)), (rng.integers(8, 20), rng.uniform(5, 20))):
        gh, gw = max(2, int(cells * h / max(h, w))), max(2, int(cells * w / max(h, w)))
        blobs = rng.normal(0, amp, (gh, gw, 3)).astype(np.float32)
        low += cv2.resize(blobs, (lw, lh), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)


def _sample_size(rng: np.random.Generator, h: int, w: int) -> float:
    """Circumscribed diameter: log-normal, median 50 px at 320 px, within [8, side/2] (scaled).

    About 8% of shapes come out under 16 px and 75% between 20 and 120 px.
    """
    side = min(h, w)
    scale = side / 320.0
    lo, hi = max(8.0, 8.0 * scale), side / 2.0
    for _ in range(20):
        d = float(np.exp(rng.normal(math.log(50.0 * scale), 0.8)))
        if lo <= d <= hi:
            return d
    return float(np.clip(d, lo, hi))


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random BGR colour at least ~100 away (L2) from ``under``, the mean colour beneath."""
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3).astype(np.float32)
        d = float(np.linalg.norm(c - under))
        if d >= 100:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _new_shape(rng: np.random.Generator, h: int, w: int, cx: float, cy: float) -> _Shape:
    category_id = int(rng.integers(1, len(CATEGORIES) + 1))
    size = _sample_size(rng, h, w)
    outline = 0
    if size >= 16 and rng.random() < 0.25:
        outline = 1 if size < 60 else 2
    shade = rng.normal(0, 18, 2).astype(np.float32) if rng.random() < 0.6 else np.zeros(2, np.float32)
    return _Shape(category_id, cx, cy, size, float(rng.uniform(0, 2 * np.pi)),
                  np.zeros(3, np.float32), shade, outline)


def _pick_colour(rng: np.random.Generator, image: np.ndarray, patch, x0, y0) -> np.ndarray:
    h, w = image.shape[:2]
    cl = _clip(patch, x0, y0, h, w)
    if cl is None:
        under = image.reshape(-1, 3).mean(0)
    else:
        m = patch[cl[1]].astype(bool)
        under = image[cl[0]][m].mean(0) if m.any() else image[cl[0]].reshape(-1, 3).mean(0)
    return _contrasting_colour(rng, under.astype(np.float32))


_NORMAL_TABLE: np.ndarray | None = None


def _normal_table() -> np.ndarray:
    """float32[65536]: standard normal quantiles, so noise costs one uint16 draw per value."""
    global _NORMAL_TABLE
    if _NORMAL_TABLE is None:
        from statistics import NormalDist

        inv = NormalDist().inv_cdf
        _NORMAL_TABLE = np.array([inv((k + 0.5) / 65536) for k in range(65536)], np.float32)
    return _NORMAL_TABLE


def _add_noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 image: ``img`` (float32) plus gaussian noise of std ``sigma``, rounded and clipped."""
    table = np.round(_normal_table() * np.float32(sigma)).astype(np.int16)
    noise = table[rng.integers(0, 65536, img.size, dtype=np.uint16)].reshape(img.shape)
    return cv2.add(img.astype(np.int16), noise).clip(0, 255).astype(np.uint8)


def render_sample(
    rng: np.random.Generator, size: tuple[int, int] = (320, 320)
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One synthetic image and its instances.

    Returns ``image`` (uint8[H, W, 3], BGR) and a list of ``(category_id, mask)`` with ``mask``
    (bool[H, W]) the visible pixels of each instance, in drawing order (later ones on top). Masks
    never overlap. Instances left with fewer than ``MIN_VISIBLE_PIXELS`` visible pixels or less than
    ``MIN_VISIBLE_FRACTION`` of their full area are dropped (their pixels stay in the image).
    """
    h, w = int(size[0]), int(size[1])
    img = _background(rng, h, w)
    ids = np.zeros((h, w), np.uint8)  # 0 = background, i+1 = shape i
    n = int(rng.integers(2, 9))
    full_area: list[int] = []
    cats: list[int] = []
    for i in range(n):
        s = _new_shape(rng, h, w, float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        patch, x0, y0 = _shape_patch(s)
        s.colour = _pick_colour(rng, img, patch, x0, y0)
        _paint(img, ids, s, i + 1, patch, x0, y0)
        full_area.append(int(patch.sum()))
        cats.append(s.category_id)
    image = _add_noise(rng, img, float(rng.uniform(2, 10)))
    instances: list[tuple[int, np.ndarray]] = []
    for i in range(n):
        mask = ids == i + 1
        visible = int(np.count_nonzero(mask))
        if visible >= MIN_VISIBLE_PIXELS and visible >= MIN_VISIBLE_FRACTION * full_area[i]:
            instances.append((cats[i], mask))
    return image, instances


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` of the dataset with ``seed`` (images are independent)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
