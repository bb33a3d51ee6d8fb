"""Side-by-side latency of torchvision eager, EdgeMaskRCNN eager, ONNX Runtime and TensorRT.

Same weights, same 3-channel input frame, same proposal and detection settings; one timed run of
each backend in turn (interleaved) so that machine drift hits all alike. Stages: ``pre`` (frame to
model input), ``model``, ``post`` (boxes to frame pixels, masks pasted at frame size). torchvision
resizes, normalises and pastes inside its own forward, so its ``model`` stage holds all three.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mrcnn_edge.core.errors import UserError

__all__ = ["run_benchmark", "time_backends", "format_table"]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _stats(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "min": float(a.min())}


def time_backends(backends: dict[str, Callable[[], dict[str, float]]], runs: int, warmup: int) -> dict[str, Any]:
    """Each backend is a callable returning its stage times in ms; called ``warmup + runs`` times, interleaved."""
    for _ in range(warmup):
        for fn in backends.values():
            fn()
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in backends}
    for r in range(runs):
        for name, fn in backends.items():
            samples[name].append(fn())
        _log(f"[benchmark] run {r + 1}/{runs}")
    out = {}
    for name, rows in samples.items():
        stages = {s: _stats([row[s] for row in rows]) for s in rows[0]}
        total = _stats([sum(row.values()) for row in rows])
        out[name] = {"total_ms": total, "stages_ms": stages, "fps": 1000.0 / total["median"]}
    return out


def format_table(res: dict[str, Any], baseline: str = "torchvision") -> str:
    base = res.get(baseline, {}).get("total_ms", {}).get("median")
    lines = ["| backend | median ms | p90 ms | min ms | FPS | pre ms | model ms | post ms | speed-up vs torchvision |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        t, s = r["total_ms"], r["stages_ms"]
        sp = f"{base / t['median']:.2f}x" if base else "-"
        lines.append(f"| {name} | {t['median']:.1f} | {t['p90']:.1f} | {t['min']:.1f} | {r['fps']:.2f} | "
                     f"{s.get('pre', {}).get('median', 0):.1f} | {s['model']['median']:.1f} | "
                     f"{s.get('post', {}).get('median', 0):.1f} | {sp} |")
    return "\n".join(lines) + "\n"


def run_benchmark(args) -> int:
    import torch

    from mrcnn_edge import demo_checkpoint
    from mrcnn_edge.model.checkpoint import load_checkpoint
    from mrcnn_edge.commands.cliutil import parse_hw
    from mrcnn_edge.model.edge import OUTPUT_NAMES, EdgeMaskRCNN
    from mrcnn_edge.runtime.postprocess import paste_masks
    from mrcnn_edge.runtime.preprocess import letterbox
    from mrcnn_edge.data.shapes import image_rng, render_sample

    H, W = parse_hw(args.input_size, multiple_of=32, minimum=32)
    if args.runs < 1 or args.warmup < 0:
        raise UserError("--runs must be >= 1 and --warmup >= 0")
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(wanted) - {"torchvision", "edge", "onnx", "tensorrt"}
    if unknown:
        raise UserError(f"unknown backends {sorted(unknown)}; choose from torchvision, edge, onnx, tensorrt")
    ckpt = Path(args.model) if args.model else demo_checkpoint()
    model, cfg = load_checkpoint(ckpt)
    rh = model.roi_heads
    if args.max_detections:
        rh.detections_per_img = args.max_detections
    if args.rpn_post_nms_top_n:
        model.rpn._post_nms_top_n["testing"] = args.rpn_post_nms_top_n
    model.transform.min_size, model.transform.max_size = (min(H, W),), max(H, W)  # same resize as the canvas
    frame = render_sample(image_rng(2024, 0), (H, W))[0]  # a canvas-sized frame: every backend sees H x W pixels
    threads = torch.get_num_threads()
    backends: dict[str, Callable[[], dict[str, float]]] = {}

    if "torchvision" in wanted:
        def tv() -> dict[str, float]:
            t0 = time.perf_counter()
            x = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1])).permute(2, 0, 1).float() / 255.0
            t1 = time.perf_counter()
            with torch.inference_mode():
                o = model([x])[0]
                _ = (o["masks"] > 0.5)
            t2 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "post": 0.0}
        backends["torchvision"] = tv

    def post(out: dict[str, np.ndarray], lb) -> None:
        n = int(out["num_detections"][0])
        boxes = lb.boxes_to_frame(out["boxes"][0, :n])
        paste_masks(out["masks"][0, :n].astype(np.float32), boxes, (lb.frame_h, lb.frame_w))

    def graph_backend(infer: Callable[[np.ndarray], dict[str, np.ndarray]]) -> Callable[[], dict[str, float]]:
        def fn() -> dict[str, float]:
            t0 = time.perf_counter()
            x, lb = letterbox(frame, (H, W), cfg.image_mean, cfg.image_std)
            t1 = time.perf_counter()
            out = infer(x[None])
            t2 = time.perf_counter()
            post(out, lb)
            t3 = time.perf_counter()
            return {"pre": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "post": (t3 - t2) * 1e3}
        return fn

    if "edge" in wanted:
        edge = EdgeMaskRCNN(model, (H, W), 1, max_detections=args.max_detections, rpn_post_nms_top_n=args.rpn_post_nms_top_n)
        def edge_infer(x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                return {k: v.numpy() for k, v in zip(OUTPUT_NAMES, edge(torch.from_numpy(x)))}
        backends["edge"] = graph_backend(edge_infer)

    tmp = None
    if "onnx" in wanted:
        onnx_path = args.onnx
        if onnx_path is None:
            from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx

            tmp = tempfile.TemporaryDirectory(prefix="mrcnn-edge-bench-")
            onnx_path = str(Path(tmp.name) / "portable.onnx")
            export_onnx(None, onnx_path, ExportOptions(input_size=(H, W), flavor="portable",
                                                        max_detections=args.max_detections,
                                                        rpn_post_nms_top_n=args.rpn_post_nms_top_n),
                        model_and_config=(model, cfg), log=_log)
        from mrcnn_edge.export.ort_custom import make_session

        sess = make_session(onnx_path)
        out_names = [o.name for o in sess.get_outputs()]
        backends["onnx"] = graph_backend(lambda x: dict(zip(out_names, sess.run(None, {"images": x}))))
    if "tensorrt" in wanted and args.engine:
        from mrcnn_edge.runtime import Segmenter

        seg = Segmenter.from_path(args.engine)

        def trt() -> dict[str, float]:
            t0 = time.perf_counter()
            seg(frame)
            return {"model": (time.perf_counter() - t0) * 1e3}
        backends["tensorrt"] = trt

    _log(f"[benchmark] {', '.join(backends)}; canvas {H}x{W}; {args.runs} runs after {args.warmup} warm-up; "
         f"torch threads {threads}")
    res = time_backends(backends, args.runs, args.warmup)
    table = format_table(res)
    print(table)
    meta = {"checkpoint": str(ckpt), "canvas": [H, W], "runs": args.runs, "warmup": args.warmup, "torch_threads": threads,
            "rpn_post_nms_top_n": args.rpn_post_nms_top_n or 1000, "max_detections": args.max_detections or 100,
            "date": time.strftime("%Y-%m-%d"), "results": res}
    if args.json:
        Path(args.json).write_text(json.dumps(meta, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    if tmp is not None:
        tmp.cleanup()
    return 0
