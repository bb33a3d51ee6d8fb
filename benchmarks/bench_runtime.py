#!/usr/bin/env python3
"""Per-stage time and resident memory of the runtime on a video.

    python benchmarks/bench_runtime.py --model model.onnx --video clip_640x480.mp4 --frames 2000

Stages per frame: ``pre`` (letterbox into the model input), ``infer`` (the backend),
``post`` = ``finish`` (boxes back to the frame, threshold) + ``paste`` (masks into an instance
map at frame size) + ``overlay`` (coloured masks, boxes and labels drawn). Resident memory (VmRSS)
is sampled before loading the model, after loading, after warm-up and every ``--rss-every`` frames;
the growth after warm-up is what a long camera run would show.

Without ``--video`` the frames are synthetic 640x480 moving squares; without ``--model`` a tiny
contract model (``mrcnn_edge.runtime.testing``, needs onnx) stands in: a plumbing check only, its
inference time means nothing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import numpy as np


def rss_mib() -> float:
    """Current resident set size (VmRSS) in MiB; peak RSS where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def frames_from(video: str | None, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Frames forever: the video looped, or synthetic moving squares of ``size`` (h, w)."""
    from mrcnn_edge.runtime.testing import moving_squares

    if video is None:
        while True:
            yield from moving_squares(500, hw=size)
    from mrcnn_edge.runtime.io.sources import open_source

    while True:
        count = 0
        with open_source(video) as source:
            for frame in source:
                if frame.image is not None:
                    count += 1
                    yield frame.image
        if count == 0:
            raise SystemExit(f"no readable frame in {video}")


def stats_ms(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {"median": statistics.median(ms), "mean": statistics.fmean(ms), "p90": ms[int(0.9 * (len(ms) - 1))]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model.onnx or model.engine (default: a tiny contract model, plumbing only)")
    p.add_argument("--video", help="video file (default: synthetic frames)")
    p.add_argument("--size", default="480x640", help="synthetic frame size HxW (default 480x640)")
    p.add_argument("--frames", type=int, default=300, help="frames measured after warm-up")
    p.add_argument("--warmup", type=int, default=10, help="frames run before measuring")
    p.add_argument("--backend", default=None, help="auto, onnxruntime or tensorrt")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--providers", default=None, help="ONNX Runtime providers, comma-separated")
    p.add_argument("--score-threshold", type=float, default=0.5)
    p.add_argument("--rss-every", type=int, default=100, help="sample memory every N frames")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args(argv)

    from mrcnn_edge.runtime.segmenter import Segmenter

    rss = {"start": rss_mib()}
    tmp = None
    model = args.model
    if model is None:
        from mrcnn_edge.runtime.testing import make_contract_model

        tmp = tempfile.TemporaryDirectory()
        model = str(make_contract_model(Path(tmp.name) / "contract_512.onnx", canvas_hw=(512, 512), mask_size=28,
                                        boxes=[(32, 32, 256, 256), (200, 100, 480, 400), (0, 0, 512, 384)]))
        print("no --model: using a tiny contract model (plumbing only; its inference time means nothing)")
    h, w = (int(v) for v in args.size.lower().split("x"))
    providers = args.providers.split(",") if args.providers else None
    seg = Segmenter.from_path(model, backend=args.backend, providers=providers, device=args.device,
                              score_threshold=args.score_threshold)
    rss["loaded"] = rss_mib()
    print(seg.description)
    source = frames_from(args.video, (h, w))
    times: dict[str, list[float]] = {k: [] for k in ("pre", "infer", "finish", "paste", "overlay")}
    samples: list[tuple[int, float]] = []
    detections = 0
    total = args.warmup + args.frames
    t_start = time.perf_counter()
    for i in range(total):
        if i == args.warmup:
            rss["warm"] = rss_mib()
            times = {k: [] for k in times}
            detections = 0
            t_start = time.perf_counter()
        frame = next(source)
        t0 = time.perf_counter()
        work = seg.prepare([frame])
        t1 = time.perf_counter()
        seg.infer(work)
        t2 = time.perf_counter()
        dets = seg.finish(work)[0]
        t3 = time.perf_counter()
        dets.instance_map()
        t4 = time.perf_counter()
        dets.draw(frame)
        t5 = time.perf_counter()
        for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[key].append(dt)
        detections += len(dets)
        done = i + 1 - args.warmup
        if done > 0 and (done % args.rss_every == 0 or done == args.frames):
            samples.append((done, rss_mib()))
    wall = time.perf_counter() - t_start
    rss["end"] = rss_mib()
    seg.close()
    frame_shape = frame.shape

    stages = {k: stats_ms(v) for k, v in times.items()}
    per_frame = {k: statistics.fmean(v) * 1000 for k, v in times.items()}
    total_ms = sum(per_frame.values())
    prepost = per_frame["pre"] + per_frame["finish"] + per_frame["paste"] + per_frame["overlay"]
    growth = 100 * (rss["end"] - rss["warm"]) / rss["warm"]
    print(f"\n{args.frames} frames of {frame_shape[1]}x{frame_shape[0]} after {args.warmup} warm-up, "
          f"{wall:.1f} s ({args.frames / wall:.2f} fps sequential), {detections / args.frames:.1f} detections/frame")
    print(f"{'stage':<10}{'median ms':>11}{'mean ms':>10}{'p90 ms':>9}{'share':>8}")
    for name, s in stages.items():
        print(f"{name:<10}{s['median']:>11.2f}{s['mean']:>10.2f}{s['p90']:>9.2f}{100 * per_frame[name] / total_ms:>7.1f}%")
    print(f"pre + post (finish, paste, overlay): {prepost:.2f} ms of {total_ms:.2f} ms = {100 * prepost / total_ms:.1f}% "
          f"of per-frame time")
    print(f"RSS MiB: start {rss['start']:.0f}, model loaded {rss['loaded']:.0f}, after warm-up {rss['warm']:.0f}, "
          f"after {args.frames} frames {rss['end']:.0f} ({growth:+.1f}% since warm-up)")
    print("RSS during the run: " + ", ".join(f"{n}:{m:.0f}" for n, m in samples))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": str(model), "video": args.video, "frames": args.frames, "frame_shape": list(frame_shape),
            "stages_ms": stages, "prepost_share": prepost / total_ms, "rss_mib": rss,
            "rss_growth_after_warmup_pct": growth, "rss_samples": samples, "description": seg.description,
        }, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
