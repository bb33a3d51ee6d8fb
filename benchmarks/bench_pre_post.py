#!/usr/bin/env python3
"""Pre- and post-processing per frame: CPU reference, GPU path, and the AGX Orin estimate on paper.

    python benchmarks/bench_pre_post.py [--sizes 640x480,1920x1080,3840x2160] [--detections 10,100] [--notes]

For each frame size and detection count (512x512 canvas, 28x28 masks):

- ``cpu``: the numpy reference (``letterbox_into``; ``render`` = instance map + overlay), ms;
- ``gpu``: the stand-in cuda-python (``tests/fakes/fake_cuda.py``, the kernels' host build):
  bytes moved each way, kernel launches and frame-sized CPU copies per frame of ``CudaOps``
  upload + letterbox + render, once as a discrete GPU (frame staged and copied up, drawing copied
  down) and once as an integrated one (Jetson: the frame captured into ``frame_buffer``, the
  drawing written in mapped memory and lent out: no copy); no time (GPU timings: scripts/gpu_check.sh);
- ``orin``: the AGX Orin estimate, every term stated (:func:`orin_estimate`; ``--notes`` prints
  them): what the kernels read and write at the memory bandwidth, the mask tests at the compiled
  kernel's instruction count, the cuda-python calls of a frame, the poll-sleep overshoot, and the
  frame-sized CPU copies (none left on the Jetson path).

Sources of the constants (each is a figure, not a measurement on an Orin, unless it says so):
``ORIN_BYTES_PER_S`` 204.8 GB/s, AGX Orin 64GB LPDDR5 peak (NVIDIA's data sheet), taken as reached;
``ORIN_INSTR_PER_S`` 2048 CUDA cores x 1.3 GHz (data sheet), one instruction per core per clock;
``MASK_TEST_INSTR`` 145: counted in the SASS of ``render_instances`` as the runtime compiles it
(NVRTC, sm_87, ``--fmad=false``; cuobjdump 13.2 on this machine): the per-pixel loop over a tile's
boxes is 151 instructions, 6 of them only on the slow path of the two float divisions; a pixel
outside the box it tests takes the first 21 only (not credited: an upper bound);
``CUDA_CALLS`` cuda-python calls of one segmented and drawn frame on the TensorRT path, counted on
the stand-in (25 discrete, 23 integrated, without the stand-in TensorRT's own), plus one
``cudaEventQuery`` per wait; ``CALL_S`` 10 us per call on an Orin's Cortex-A78AE: an assumption
(the binding alone costs 0.65-1.5 us on this x86 VM without a driver; the driver's part is not
measured here); ``POLL_SLEPT_S`` 0.34 ms slept for ``EVENT_POLL_S`` = 0.2 ms asked, measured on this
VM (``time.sleep``; the kernel's timer slack and scheduling), of which a wait overshoots half on
average: 2 waits per frame (the engine's, the render's); ``CPU_COPY_BYTES_PER_S`` 10 GB/s for a
frame copy by an Orin CPU core: an assumption (np.copyto of 6.2 MB runs at ~12 GB/s on this VM).
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
ORIN_BYTES_PER_S = 204.8e9
ORIN_INSTR_PER_S = 2048 * 1.3e9
MASK_TEST_INSTR = 145   # SASS of render_instances' per-box test, sm_87 (see the module docstring)
CUDA_CALLS = {"discrete": 25, "integrated": 23}  # per frame, counted on the stand-in, + 1 query per wait
WAITS = 2               # per frame: the engine's run, the render
CALL_S = 10e-6          # assumed per cuda-python call on an Orin
POLL_SLEPT_S = 0.34e-3  # what time.sleep(EVENT_POLL_S = 0.2 ms) slept here
CPU_COPY_BYTES_PER_S = 10e9  # assumed frame copy by one Orin CPU core


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


def orin_estimate(hw: tuple[int, int], n: int, boxes: np.ndarray, cpu_copies: int = 0) -> tuple[float, str]:
    """ms of pre/post-processing per frame on an AGX Orin, and every term. Integrated GPU, zero copy:
    the kernels read the captured frame and write the drawing in mapped memory, so the bytes are
    what the kernels touch; ``cpu_copies`` frame-sized copies by the CPU (2 before they were
    removed: the staging, the drawn frame; 0 now) are added at ``CPU_COPY_BYTES_PER_S``."""
    frame = hw[0] * hw[1] * 3
    canvas = 3 * CANVAS[0] * CANVAS[1] * 4
    compact = n * (MASK * MASK * 4 + 16 + 4 + 4 + 3)
    pre = frame + canvas            # letterbox reads the mapped frame, writes the canvas
    post = frame + frame + compact  # render reads the frame and the engine's masks, writes the drawing
    per_tile = tiles_hit(boxes, hw)
    terms = {
        "kernel bytes": (pre + post) / ORIN_BYTES_PER_S,
        "mask tests": hw[0] * hw[1] * per_tile * MASK_TEST_INSTR / ORIN_INSTR_PER_S,
        "cuda-python calls": (CUDA_CALLS["integrated"] + WAITS) * CALL_S,
        "poll overshoot": WAITS * POLL_SLEPT_S / 2,
        "CPU copies": cpu_copies * frame / CPU_COPY_BYTES_PER_S,
    }
    note = "; ".join(f"{k} {1e3 * v:.2f} ms" for k, v in terms.items()) + (
        f" (bytes {pre / 1e6:.1f} MB pre + {post / 1e6:.1f} MB post at 204.8 GB/s; {hw[0]}x{hw[1]} px x "
        f"{per_tile:.2f} boxes/tile x {MASK_TEST_INSTR} instr at 2.66e12/s; "
        f"{CUDA_CALLS['integrated']}+{WAITS} calls x {CALL_S * 1e6:.0f} us; {WAITS} waits x half of "
        f"{POLL_SLEPT_S * 1e3:.2f} ms; {cpu_copies} x {frame / 1e6:.1f} MB at 10 GB/s)")
    return 1e3 * sum(terms.values()), note


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
    """Bytes, launches and frame-sized CPU copies of one capture + upload + letterbox + render on
    the stand-in (the capture itself, the decoder's write, is not counted)."""
    import ctypes
    import dataclasses

    from mrcnn_edge.runtime.gpu.cuda_ops import CudaOps
    from mrcnn_edge.runtime.preprocess import normalization

    mul, add = normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    fake.integrated = zero_copy  # what cudaDevAttrIntegrated reports, from which CudaOps decides
    ops = CudaOps()
    copies = [0]
    plain = np.copyto

    def counting(dst, src, *args, **kwargs):
        copies[0] += np.asarray(dst).nbytes >= frame.nbytes
        return plain(dst, src, *args, **kwargs)

    try:
        dst = int(fake.runtime.cudaMalloc(3 * CANVAS[0] * CANVAS[1] * 4)[1])
        engine_masks = int(fake.runtime.cudaMalloc(masks.nbytes)[1])  # the engine's output buffer
        ctypes.memmove(engine_masks, masks.ctypes.data, masks.nbytes)  # "written by the engine": not bus traffic
        captured = ops.frame_buffer(frame.shape)  # the source reads into it where one is offered
        if captured is not None:
            captured[...] = frame
        image = frame if captured is None else captured
        before = dict(up=fake.stats["htod_bytes"], down=fake.stats["dtoh_bytes"],
                      launches=sum(fake.stats["launches"].values()))
        np.copyto = counting
        try:
            dframe = ops.upload(image)
            ops.letterbox_from(dframe, dst, CANVAS, mul, add, False)
            ops.keep_masks([dframe], engine_masks, len(masks), MASK)
            device = dataclasses.replace(dframe, rows=np.arange(len(masks), dtype=np.int32))
            drawn = ops.render(image, masks, boxes, scores, colours, device=device)
        finally:
            np.copyto = plain
        copies[0] += drawn.base is None  # a drawing handed over as a fresh array was copied out
        up = fake.stats["htod_bytes"] - before["up"]
        down = fake.stats["dtoh_bytes"] - before["down"]
        launches = sum(fake.stats["launches"].values()) - before["launches"]
        del drawn, device, dframe, image, captured
        fake.runtime.cudaFree(engine_masks)
        fake.runtime.cudaFree(dst)
    finally:
        ops.close()
    return f"up {up / 1e6:.3f} MB, down {down / 1e6:.3f} MB, {launches} launches, {copies[0]} CPU copies"


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
              "| Orin est. ms | before (2 CPU copies) |")
        print("|---|---|---|---|---|---|---|---|")
        for hw in sizes:
            for n in counts:
                frame, masks, boxes, scores, colours = case(hw, n)
                pre, post = cpu_ms(frame, masks, boxes, scores, colours, args.repeat)
                gpu = [gpu_counts(frame, masks, boxes, scores, colours, fake, z) if fake else f"n/a ({why})"
                       for z in (False, True)]
                orin, note = orin_estimate(hw, n, boxes)
                before, _ = orin_estimate(hw, n, boxes, cpu_copies=2)
                print(f"| {hw[1]}x{hw[0]} | {n} | {pre:.1f} | {post:.1f} | {gpu[0]} | {gpu[1]} | {orin:.2f} | {before:.2f} |")
                if args.notes:
                    print(f"|  |  | | | | {note} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
