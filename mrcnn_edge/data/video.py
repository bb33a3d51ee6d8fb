"""Videos of synthetic shapes moving over a textured background (the demo's camera stand-in)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from mrcnn_edge.core.atomic import atomic_output, check_writable
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import Progress
from .shapes import _Shape, _add_noise, _background, _new_shape, _paint, _pick_colour, _sample_size, _shape_patch

__all__ = ["VIDEO_SUFFIXES", "render_video_frames", "write_video"]

#: video container suffix -> fourcc
VIDEO_SUFFIXES: dict[str, str] = {".mp4": "mp4v", ".avi": "MJPG"}


@dataclass
class _Mover:
    shape: _Shape
    vx: float
    vy: float
    spin: float
    bounces: int  # edge bounces left; then it leaves the frame and is replaced


def _spawn(rng: np.random.Generator, h: int, w: int, img: np.ndarray, inside: bool) -> _Mover:
    scale = min(h, w) / 320.0
    speed = float(rng.uniform(0.8, 4.0)) * scale
    direction = float(rng.uniform(0, 2 * np.pi))
    vx, vy = speed * math.cos(direction), speed * math.sin(direction)
    if inside:
        cx, cy = float(rng.uniform(0, w)), float(rng.uniform(0, h))
    else:  # enter from an edge, moving inwards
        s0 = _sample_size(rng, h, w)
        edge = int(rng.integers(4))
        off = s0 / 2 + 1
        if edge == 0:
            cx, cy, vx = -off, float(rng.uniform(0, h)), abs(vx)
        elif edge == 1:
            cx, cy, vx = w + off, float(rng.uniform(0, h)), -abs(vx)
        elif edge == 2:
            cx, cy, vy = float(rng.uniform(0, w)), -off, abs(vy)
        else:
            cx, cy, vy = float(rng.uniform(0, w)), h + off, -abs(vy)
    s = _new_shape(rng, h, w, cx, cy)
    patch, x0, y0 = _shape_patch(s)
    s.colour = _pick_colour(rng, img, patch, x0, y0)
    spin = float(rng.normal(0, 0.03)) if s.category_id != 1 else 0.0
    return _Mover(s, vx, vy, spin, int(rng.integers(0, 5)))


def _step(m: _Mover, h: int, w: int) -> bool:
    """Move one frame; bounce off the edges while bounces are left. False once fully gone."""
    s = m.shape
    s.cx += m.vx
    s.cy += m.vy
    s.angle += m.spin
    r = s.size / 2
    if m.bounces > 0:
        if (s.cx < 0 and m.vx < 0) or (s.cx > w - 1 and m.vx > 0):
            m.vx, m.bounces = -m.vx, m.bounces - 1
        if (s.cy < 0 and m.vy < 0) or (s.cy > h - 1 and m.vy > 0):
            m.vy, m.bounces = -m.vy, m.bounces - 1
    return -r - 2 <= s.cx <= w + r + 2 and -r - 2 <= s.cy <= h + r + 2


def render_video_frames(
    n_frames: int, seed: int, size: tuple[int, int] = (480, 640)
) -> Iterator[np.ndarray]:
    """Yield ``n_frames`` BGR uint8[H, W, 3] frames of shapes moving over one textured background.

    Shapes move with constant velocities and spin, bounce off the edges a few times, then leave
    and are replaced by new shapes entering from an edge. Same classes and look as the dataset.
    """
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    bg = _background(rng, h, w)
    sigma = float(rng.uniform(2, 8))
    movers = [_spawn(rng, h, w, bg, inside=True) for _ in range(int(rng.integers(4, 9)))]
    for _ in range(int(n_frames)):
        img = bg.copy()
        for m in movers:
            patch, x0, y0 = _shape_patch(m.shape)
            _paint(img, None, m.shape, 0, patch, x0, y0)
        yield _add_noise(rng, img, sigma)
        alive = [m for m in movers if _step(m, h, w)]
        while len(alive) < len(movers):
            alive.append(_spawn(rng, h, w, bg, inside=False))
        movers = alive


def write_video(
    path: str | os.PathLike,
    n_frames: int,
    seed: int,
    size: tuple[int, int] = (480, 640),
    fps: float = 15.0,
    progress: bool = True,
) -> Path:
    """Write :func:`render_video_frames` to ``path`` (.mp4 with fourcc mp4v, or .avi with MJPG).

    Written under a temporary name and renamed when complete.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise UserError(f"video output must end in {' or '.join(VIDEO_SUFFIXES)}, got '{path.name}'")
    if int(n_frames) < 1:
        raise UserError(f"number of frames must be at least 1, got {n_frames}")
    if not fps > 0:
        raise UserError(f"fps must be positive, got {fps}")
    h, w = int(size[0]), int(size[1])
    if path.parent.exists() and not path.parent.is_dir():  # check_writable takes a file for a folder
        raise UserError(f"cannot create folder {path.parent}: a file of that name exists")
    check_writable(path)
    bar = Progress("[synth-video]", int(n_frames), "frames", enabled=progress)
    with atomic_output(path, suffix=suffix) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*VIDEO_SUFFIXES[suffix]), float(fps), (w, h))
        if not writer.isOpened():
            raise UserError(
                f"OpenCV cannot write {suffix} video ({VIDEO_SUFFIXES[suffix]}) to {path}; try .avi"
            )
        try:
            for i, frame in enumerate(render_video_frames(n_frames, seed, (h, w))):
                writer.write(frame)
                bar.update(i + 1)
        finally:
            writer.release()
    bar.close()
    return path
