"""How fast the plugin's CPU build (the reference implementation) pools: prints, asserts nothing.

    python benchmarks/bench_plugin_host.py [--rois 1000] [--channels 256] [--size 7] [--repeat 5]

The box head of one 512x512 image (1000 ROIs x 256 channels at 7x7) is the default case; the
number is informative (validation of the ``tensorrt`` flavor runs through this code), not a test.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from mrcnn_edge.export.plugin_host import multilevel_roi_align_host


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=256)
    ap.add_argument("--size", type=int, default=7, help="output bins per side")
    ap.add_argument("--canvas", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n = args.canvas
    feats = [rng.standard_normal((1, args.channels, n // s, n // s)).astype(np.float32) for s in (4, 8, 16, 32)]
    xy = rng.uniform(0, n, (args.rois, 2))
    wh = np.exp(rng.uniform(np.log(4), np.log(n), (args.rois, 2)))
    rois = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)[None]
    multilevel_roi_align_host(rois[:, :10], feats, args.size, args.size)  # build / load outside the timing
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        multilevel_roi_align_host(rois, feats, args.size, args.size)
        times.append(time.perf_counter() - t0)
    print(f"{args.rois} ROIs x {args.channels} ch at {args.size}x{args.size} on a {n}x{n} canvas: "
          f"median {np.median(times) * 1000:.0f} ms, best {min(times) * 1000:.0f} ms over {args.repeat} runs")


if __name__ == "__main__":
    main()
