"""``mrcnn-edge synth`` and ``mrcnn-edge synth-video``: synthetic data for training and demos."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mrcnn_edge.core.cliutil import parse_hw, positive_float, positive_int
from mrcnn_edge.core.errors import UserError

__all__ = [
    "add_synth_arguments",
    "run_synth",
    "add_synth_video_arguments",
    "run_synth_video",
    "DESCRIPTION_SYNTH",
    "DESCRIPTION_SYNTH_VIDEO",
]

MIN_SIDE = 32

DESCRIPTION_SYNTH = (
    "Write a synthetic COCO instance-segmentation dataset: coloured circles, squares, triangles, "
    "stars and crosses (2-8 per image, 8 px to half the image side, overlapping) on textured, noisy "
    "backgrounds. Layout: DIR/images/000000.png ... and DIR/annotations.json with RLE masks of the "
    "visible part of each shape. The same --seed gives byte-identical output; use different seeds "
    "for the training and validation splits. The folder is replaced only once complete."
)
DESCRIPTION_SYNTH_VIDEO = (
    "Write a video of the synthetic shapes moving, spinning, overlapping, bouncing off the edges "
    "and entering and leaving the frame, with the look of 'mrcnn-edge synth' datasets. "
    ".mp4 uses the mp4v codec, .avi MJPG. The same --seed gives the same frames."
)


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output dataset folder")
    parser.add_argument("--images", type=positive_int, default=200, metavar="N", help="number of images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", default="320x320", metavar="HxW", help="image height x width")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run_synth(args: argparse.Namespace) -> int:
    from mrcnn_edge.data.coco import load_dataset
    from mrcnn_edge.data.dataset import generate_dataset, summarize_dataset

    size = parse_hw(args.size, minimum=MIN_SIDE)
    n = args.images
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    t0 = time.perf_counter()
    generate_dataset(out, n, args.seed, size=size, progress=not args.quiet)
    dt = time.perf_counter() - t0
    st = summarize_dataset(load_dataset(out).coco.dataset)
    classes = ", ".join(f"{k} {v}" for k, v in st["per_class"].items())
    print(f"wrote {out}: {st['images']} images {size[0]}x{size[1]} in {dt:.1f} s "
          f"({st['images'] / max(dt, 1e-9):.0f} images/s)")
    print(f"  {st['instances']} instances ({st['instances'] / max(st['images'], 1):.1f} per image): {classes}")
    print(f"  object size sqrt(area) {st['size_min']:.0f}-{st['size_max']:.0f} px, "
          f"median {st['size_median']:.0f}; COCO small/medium/large "
          f"{st['small']}/{st['medium']}/{st['large']}")
    return 0


def add_synth_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FILE", help="output video (.mp4 or .avi)")
    parser.add_argument("--frames", type=positive_int, default=150, metavar="N", help="number of frames")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--size", default="480x640", metavar="HxW", help="frame height x width")
    parser.add_argument("--fps", type=positive_float, default=15.0, help="frames per second")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run_synth_video(args: argparse.Namespace) -> int:
    from mrcnn_edge.data.video import VIDEO_SUFFIXES, write_video

    size = parse_hw(args.size, minimum=MIN_SIDE)
    n = args.frames
    out = Path(args.out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"--out must end in .mp4 or .avi, got '{out.name}'")
    t0 = time.perf_counter()
    write_video(out, n, args.seed, size=size, fps=args.fps, progress=not args.quiet)
    dt = time.perf_counter() - t0
    print(f"wrote {out}: {n} frames {size[0]}x{size[1]} at {args.fps:g} fps in {dt:.1f} s")
    return 0
