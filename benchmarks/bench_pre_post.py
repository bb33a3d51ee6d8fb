#!/usr/bin/env python3
"""Pre- and post-processing per frame: CPU reference, GPU path, and the AGX Orin estimate on paper.

    python benchmarks/bench_pre_post.py [--sizes 640x480,1920x1080,3840x2160] [--detections 10,100]

For each frame size and detection count (512x512 canvas, 28x28 masks):

- ``cpu``: the numpy reference (``letterbox_into``; ``render`` = instance map + overlay), ms;
- ``gpu``: the stand-in cuda-python (``tests/fakes/fake_cuda.py``, the kernels' host build):
  bytes moved each way and kernel launches per frame of ``CudaOps`` upload + letterbox + render,
  once as a discrete GPU (frame copied up, drawing copied down) and once as an integrated one
  (Jetson: both in mapped pinned memory, no copy); no time (GPU timings: scripts/gpu_check.sh);
- ``orin``: the AGX Orin estimate, from the bytes the kernels touch at 200 GB/s plus the tile-culled
  mask tests at 2048 CUDA cores x 1.3 GHz (arithmetic in :func:`orin_estimate`, printed with --notes).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANVAS = (512, 512)
MASK = 28
ORIN_BYTES_PER_S = 200e9
ORIN_INSTR_PER_S = 2048 * 1.3e9
PASTE_INSTR = 40  # one paste_value: 2 taps, 4 loads, 3 lerps, compare (PTX instructions, rounded up)


def case(hw: tuple[int, int], n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = hw
    frame = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    x0, y0 = rng.uniform(0, w * 0.9, n), rng.uniform(0, h * 0.9, n)
    bw, bh = rng.uniform(w * 0.02, w * 0.1, n), rng.uniform(h * 0.03, h * 0.15, n)
    boxes = np.stack([x0, y0, np.minimum(x0 + bw, w), np.minimum(y0 + bh, h)], 1).astype(np.float32)
    masks = rng.random((n, MASK, MASK)).astype(np.float32)
    scores = np.sort(rng.random(n).astype(np.float32))[::-1]
    colours = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return frame, masks, boxes, scores, colours


def tiles_hit(boxes: np.ndarray, hw: tuple[int, int]) -> float:
    """Mean boxes per 32x8 tile: what each pixel tests after culling."""
    total = 0.0
    for x0, y0, x1, y1 in boxes:
        total += (int(x1) // 32 - int(x0) // 32 + 1) * (int(y1) // 8 - int(y0) // 8 + 1)
    return total / (((hw[1] + 31) // 32) * ((hw[0] + 7) // 8))


def orin_estimate(hw: tuple[int, int], n: int, boxes: np.ndarray) -> tuple[float, str]:
    """ms on an AGX Orin, and the arithmetic. Integrated GPU with zero copy: the kernels read the
    captured frame and write the drawing in mapped pinned memory, so no copy reads and writes DRAM
    again; what remains is what the kernels touch."""
    frame = hw[0] * hw[1] * 3
    canvas = 3 * CANVAS[0] * CANVAS[1] * 4
    compact = n * (MASK * MASK * 4 + 16 + 4 + 4 + 3)
    pre = frame + canvas            # letterbox reads the mapped frame, writes the canvas
    post = frame + frame + compact  # render reads the frame and the engine's masks, writes the drawing
    tests = hw[0] * hw[1] * tiles_hit(boxes, hw) * PASTE_INSTR
    ms = 1e3 * ((pre + post) / ORIN_BYTES_PER_S + tests / ORIN_INSTR_PER_S)
    note = (f"bytes {pre / 1e6:.1f} MB pre + {post / 1e6:.1f} MB post at 200 GB/s = "
            f"{1e3 * (pre + post) / ORIN_BYTES_PER_S:.2f} ms; mask tests {hw[0]}x{hw[1]} px x "
            f"{tiles_hit(boxes, hw):.2f} boxes/tile x {PASTE_INSTR} instr / 2.66e12 instr/s = "
            f"{1e3 * tests / ORIN_INSTR_PER_S:.2f} ms")
    return ms, note


def cpu_ms(frame, masks, boxes, scores, colours, repeat: int) -> tuple[float, float]:
    from mrcnn_edge.runtime.postprocess import ReferenceOps
    from mrcnn_edge.runtime.preprocess import letterbox_into, normalization

    mul, add = normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    out = np.empty((3, *CANVAS), np.float32)
    ops = ReferenceOps()
    pre, post = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        letterbox_into(frame, out, mul, add)
        t1 = time.perf_counter()
        ops.render(frame, masks, boxes, scores, colours)
        post.append(time.perf_counter() - t1)
        pre.append(t1 - t0)
    return 1e3 * min(pre), 1e3 * min(post)


def gpu_counts(frame, masks, boxes, scores, colours, fake, zero_copy: bool) -> str:
    """Bytes and launches of one upload + letterbox + render on the stand-in."""
    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps
    from mrcnn_edge.runtime.preprocess import normalization

    mul, add = normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    fake.integrated = zero_copy  # what cudaDevAttrIntegrated reports, from which CudaOps decides
    ops = CudaOps()
    try:
        dst = int(fake.runtime.cudaMalloc(3 * CANVAS[0] * CANVAS[1] * 4)[1])
        before = dict(up=fake.stats["htod_bytes"], down=fake.stats["dtoh_bytes"],
                      launches=sum(fake.stats["launches"].values()))
        engine_masks = int(fake.runtime.cudaMalloc(masks.nbytes)[1])  # the engine's output buffer
        import ctypes
        ctypes.memmove(engine_masks, masks.ctypes.data, masks.nbytes)  # "written by the engine": not bus traffic
        dframe = ops.upload(frame)
        ops.letterbox_from(dframe, dst, CANVAS, mul, add, False)
        ops.keep_masks([dframe], engine_masks, len(masks), MASK)
        import dataclasses
        device = dataclasses.replace(dframe, rows=np.arange(len(masks), dtype=np.int32))
        ops.render(frame, masks, boxes, scores, colours, device=device)
        fake.runtime.cudaFree(engine_masks)
        up = fake.stats["htod_bytes"] - before["up"]
        down = fake.stats["dtoh_bytes"] - before["down"]
        launches = sum(fake.stats["launches"].values()) - before["launches"]
        fake.runtime.cudaFree(dst)
    finally:
        ops.close()
    return f"up {up / 1e6:.3f} MB, down {down / 1e6:.3f} MB, {launches} launches"


def install_stand_in(build: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    from fakes.fake_cuda import FakeCuda, build_host_library

    from mrcnn_edge.runtime.gpu import cuda_util
    import cuda.bindings.nvrtc as nvrtc  # the real NVRTC: no GPU needed

    fake = FakeCuda(build_host_library(build))
    cuda_util._MODULES = (fake.driver, fake.runtime, nvrtc)
    return fake


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="640x480,1920x1080,3840x2160")
    p.add_argument("--detections", default="10,100")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--notes", action="store_true", help="print the Orin arithmetic per row")
    args = p.parse_args()
    sizes = [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes.split(",")]
    counts = [int(n) for n in args.detections.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        import os

        os.environ.setdefault("MRCNN_EDGE_CACHE", tmp)
        try:
            fake = install_stand_in(Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the table still has the CPU and Orin columns
            fake, why = None, str(exc)
        print("| frame | dets | cpu pre ms | cpu post ms | discrete GPU (stand-in) | Jetson zero copy (stand-in) "
              "| Orin est. ms |")
        print("|---|---|---|---|---|---|---|")
        for hw in sizes:
            for n in counts:
                frame, masks, boxes, scores, colours = case(hw, n)
                pre, post = cpu_ms(frame, masks, boxes, scores, colours, args.repeat)
                gpu = [gpu_counts(frame, masks, boxes, scores, colours, fake, z) if fake else f"n/a ({why})"
                       for z in (False, True)]
                orin, note = orin_estimate(hw, n, boxes)
                print(f"| {hw[1]}x{hw[0]} | {n} | {pre:.1f} | {post:.1f} | {gpu[0]} | {gpu[1]} | {orin:.2f} |")
                if args.notes:
                    print(f"|  |  | | | | {note} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
