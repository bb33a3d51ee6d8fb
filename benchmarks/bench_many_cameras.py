#!/usr/bin/env python3
"""Many cameras, one model (issue 21): four cameras on one batch-4 model against four separate pipelines.

    python benchmarks/bench_many_cameras.py [--work DIR] [--seconds 30] [--rounds 2] [--fps 10]

Model: a ResNet-50-FPN Mask R-CNN, 91 classes, random weights (seed 0) made here, exported with the
``portable`` flavor, fp32, static mask head, at a 320x320 canvas, batch 1 and batch 4 (cached in
``--work``). Random weights score nothing above the threshold, but every row costs what a trained
model's does: the graph is static (1000 proposals, 100 detection rows, 100 masks per image).
Sources: synthetic live cameras, 640x480 moving squares paced at ``--fps`` each (newest frame wins;
no sinks, so nothing is drawn or written). Setups, each run in a fresh process (peak resident memory
is per process: VmHWM, which includes loading and warming up the models):

- ``1 source``: one batch-1 model, one pipeline: the memory baseline;
- ``4 separate``: four batch-1 models, four pipelines in threads: what ``run`` did before issue 21;
- ``4 batched``: one batch-4 model, ``runtime/batcher.py``: what ``run`` does now;
- ``4 in turn``: one batch-1 model, ``runtime/batcher.py`` serving the cameras one frame at a time
  (what ``run`` does with a batch-1 model and several sources).

Rows are interleaved (each round runs every backend and setup once, so that a neighbour's load
hits all alike); the table gives medians over the rounds. Aggregate FPS is frames processed per
second over all cameras; latency is capture to the end of post-processing, per camera, p50/p95
(medians over cameras and rounds). The goals (issue 21): peak memory of ``4 batched`` at most 1.3x
``1 source``'s, aggregate FPS at least ``4 separate``'s.

``--orin`` adds the on-paper TensorRT estimate for an AGX Orin: device memory of one batch-4 engine
against four batch-1 engines, from the weights (parameters counted in the model) and the
activations (peak of the tensors alive at once, walked in the ONNX graph's order with its
inferred shapes; each term printed with its source).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

SETUPS = ("1 source", "4 separate", "4 batched", "4 in turn")
BACKENDS = ("openvino", "onnxruntime")
CANVAS = (320, 320)


def _models(work: Path) -> tuple[dict[int, Path], int]:
    """The batch-1 and batch-4 exports (made once) and the model's parameter count."""
    import torch

    from mrcnn_edge.core.config import preset_config
    from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
    from mrcnn_edge.model.checkpoint import build_model

    torch.manual_seed(0)
    names = ["__background__"] + [f"class{i}" for i in range(1, 91)]
    cfg = preset_config("resnet50_fpn", names)
    model = build_model(cfg)
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    out = {}
    for batch in (1, 4):
        path = work / f"resnet50_fpn-91-{CANVAS[0]}x{CANVAS[1]}-b{batch}.onnx"
        if not path.is_file():
            print(f"exporting {path.name} ...", file=sys.stderr, flush=True)
            export_onnx(model, cfg, path, ExportOptions(input_size=CANVAS, batch=batch, flavor="portable"),
                        log=lambda s: None)
        out[batch] = path
    return out, params


# -- one setup, in a child process ---------------------------------------------------------------
def _camera(fps: float, seed: int) -> Any:
    """A live source delivering 640x480 frames at ``fps`` on a fixed schedule (as a camera does)."""
    import numpy as np

    from mrcnn_edge.runtime.io.sources import ArraySource
    from mrcnn_edge.runtime.testing import moving_squares

    frames = [np.ascontiguousarray(f) for f in moving_squares(30, hw=(480, 640), seed=seed)]

    def paced() -> Iterator[Any]:
        start = time.perf_counter()
        for i in range(10 ** 9):
            delay = start + i / fps - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            yield frames[i % len(frames)]

    source = ArraySource(paced(), live=True, description=f"camera {seed}")
    source.fps = fps
    return source


def child(backend: str, setup: str, models: dict[int, Path], seconds: float, fps: float) -> dict[str, Any]:
    from mrcnn_edge.runtime.batcher import Batcher, resident_mib
    from mrcnn_edge.runtime.pipeline import Pipeline
    from mrcnn_edge.runtime.segmenter import Segmenter

    sources = 1 if setup == "1 source" else 4
    batched = setup in ("4 batched", "4 in turn")
    start_mib = resident_mib()
    segs = [Segmenter.from_path(models[4 if setup == "4 batched" else 1], backend=backend)
            for _ in range(4 if setup == "4 separate" else 1)]
    loaded_mib = resident_mib()
    for seg in segs:
        seg.warmup(1)
    cams = [_camera(fps, i) for i in range(sources)]
    if batched:
        runners: list[Any] = [Batcher(segs[0], cams)]
    else:
        runners = [Pipeline(seg, cam) for seg, cam in zip(segs, cams)]
    results: list[Any] = [None] * len(runners)

    def run(i: int) -> None:
        got = runners[i].run()
        results[i] = got if isinstance(got, list) else [got]

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(runners))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    for r in runners:
        r.stop(drain=True)
    for t in threads:
        t.join(120)
    wall = time.perf_counter() - t0
    stats = [s for group in results for s in group]
    for seg in segs:
        seg.close()
    return {
        "backend": backend, "setup": setup, "models": len(segs),
        "start_mib": start_mib, "loaded_mib": loaded_mib, "peak_mib": resident_mib(peak=True),
        "fps": sum(s.frames for s in stats) / wall,
        "frames": [s.frames for s in stats], "dropped": [s.dropped for s in stats],
        "latency_ms": [s.latency_ms() for s in stats],
        "fill": runners[0].stats.fill if batched else 1.0,
    }


# -- the table ------------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| backend | setup | models loaded | peak resident MiB | vs 1 source | aggregate FPS | vs 4 separate "
           "| latency p50 / p95 ms (per camera) | frames per inference |",
           "|---|---|---|---|---|---|---|---|---|"]
    for backend in BACKENDS:
        by = {s: [r for r in rows if r["backend"] == backend and r["setup"] == s] for s in SETUPS}
        if not by["1 source"]:
            continue
        base_mib = _median([r["peak_mib"] for r in by["1 source"]])
        sep_fps = _median([r["fps"] for r in by["4 separate"]])
        for setup in SETUPS:
            rs = by[setup]
            if not rs:
                continue
            peak, fps = _median([r["peak_mib"] for r in rs]), _median([r["fps"] for r in rs])
            lat = [x for r in rs for x in r["latency_ms"] if x]
            p50, p95 = _median([x[0] for x in lat]), _median([x[1] for x in lat])
            vs_fps = f"{fps / sep_fps:.2f}x" if setup != "1 source" else "-"
            out.append(f"| {backend} | {setup} | {rs[0]['models']} | {peak:.0f} | {peak / base_mib:.2f}x | "
                       f"{fps:.2f} | {vs_fps} | {p50:.0f} / {p95:.0f} | {_median([r['fill'] for r in rs]):.2f} |")
    return out


# -- TensorRT on an AGX Orin, on paper ------------------------------------------------------------
def activation_peak_bytes(path: Path) -> tuple[int, int]:
    """(bytes, data-dependent tensors): the largest sum of activation tensors alive at once when the
    graph's nodes run in their stored order (weights not counted). Sizes from ONNX shape inference;
    the tensors whose size depends on the data (per-level ROI pieces, NMS results) are measured in
    one ONNX Runtime run on a synthetic frame (each image's proposals are always 1000 in all: only
    their split over the levels varies)."""
    import math

    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    sizes: dict[str, int] = {}
    unknown = []
    keep = {o.name for o in g.output}  # the model's outputs stay alive to the end
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not t.elem_type:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if None in dims:
            unknown.append(vi)
        else:
            sizes[vi.name] = math.prod(dims) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    if unknown:
        g.output.extend(unknown)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        image = session.get_inputs()[0]
        frame = np.random.default_rng(0).uniform(0, 1, [int(d) for d in image.shape]).astype(np.float32)
        got = session.run([vi.name for vi in unknown], {image.name: frame})
        sizes.update({vi.name: value.nbytes for vi, value in zip(unknown, got)})
    last: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            last[name] = i
    alive = {i.name for i in g.input}
    live = peak = sum(sizes.get(n, 0) for n in alive)
    for i, node in enumerate(g.node):
        for name in node.output:
            if name in sizes and name not in alive:
                alive.add(name)
                live += sizes[name]
        peak = max(peak, live)
        for name in node.input:
            if last.get(name) == i and name in alive and name not in keep:
                alive.discard(name)
                live -= sizes[name]
    return peak, len(unknown)


def orin_estimate(models: dict[int, Path], params: int) -> list[str]:
    mib = 1 / 2 ** 20
    act = {b: activation_peak_bytes(p) for b, p in models.items()}
    lines = ["| TensorRT on AGX Orin (on paper) | weights MiB | activations MiB | total MiB |", "|---|---|---|---|"]
    for precision, item in (("fp32", 4), ("fp16", 2)):
        w, a1, a4 = params * item, act[1][0] * item / 4, act[4][0] * item / 4
        lines.append(f"| 4 engines, batch 1, {precision} | 4 x {w * mib:.0f} | 4 x {a1 * mib:.0f} | "
                     f"{4 * (w + a1) * mib:.0f} |")
        lines.append(f"| 1 engine, batch 4, {precision} | {w * mib:.0f} | {a4 * mib:.0f} | {(w + a4) * mib:.0f} |")
    lines += [
        "",
        f"Terms: weights = {params / 1e6:.1f} M parameters and buffers (counted in the torchvision model) x 4 bytes "
        "(fp32) or 2 (fp16); an engine holds its own copy, so four engines deserialised hold four. "
        "Activations = the peak of the tensors alive at once, walking the portable ONNX graph in its order "
        f"(batch 1: {act[1][0] * mib:.0f} MiB, batch 4: {act[4][0] * mib:.0f} MiB in fp32; shapes from ONNX shape "
        f"inference, the {act[1][1]} data-dependent ones from one ONNX Runtime run), about halved for fp16 (its "
        "anchors, box decoding and NMS stay float32). Each execution context has its own activation memory "
        "(TensorRT's device_memory_size: it reuses memory at least as well as this walk but adds tactic "
        "scratch, so this is an estimate, not a bound). Not counted, equal in both: the CUDA context and the "
        "TensorRT/cuDNN/cuBLAS code of the one process, and the runtime's frame slots (batch x 4 in flight: "
        "16 for one batch-4 engine, 4 x 4 for four batch-1 engines).",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("bench_many_cameras"), help="exports are cached here")
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per setup (after warm-up)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--fps", type=float, default=10.0, help="frames per second of each camera")
    p.add_argument("--backends", default=",".join(BACKENDS))
    p.add_argument("--orin", action="store_true", help="also print the TensorRT estimate for an AGX Orin")
    p.add_argument("--child", nargs=2, metavar=("BACKEND", "SETUP"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        models = {b: args.work / f"resnet50_fpn-91-{CANVAS[0]}x{CANVAS[1]}-b{b}.onnx" for b in (1, 4)}
        print(json.dumps(child(*args.child, models, args.seconds, args.fps)), flush=True)
        return 0
    models, params = _models(args.work)
    rows = []
    for r in range(args.rounds):
        for backend in args.backends.split(","):
            for setup in SETUPS:
                cmd = [sys.executable, __file__, "--work", str(args.work), "--seconds", str(args.seconds),
                       "--fps", str(args.fps), "--child", backend, setup]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if done.returncode != 0:
                    print(f"{backend} {setup}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"round {r + 1} {backend} {setup}: peak {row['peak_mib']:.0f} MiB, {row['fps']:.2f} fps, "
                      f"frames {row['frames']}, dropped {row['dropped']}", file=sys.stderr, flush=True)
    print("\n".join(table(rows)))
    if args.orin:
        print()
        print("\n".join(orin_estimate(models, params)))
    (args.work / "rows.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
