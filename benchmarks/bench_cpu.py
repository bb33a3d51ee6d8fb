"""CPU engines against torchvision eager: speed (interleaved) and mask AP, on the demo model (issue 12).

    python benchmarks/bench_cpu.py [--work DIR] [--runs 15] [--size 512] [--val-images 100]

Speed rows run frame -> detections with masks pasted at frame size, one call of each row in turn
(interleaved, so that a neighbour's load hits all rows alike), on a synthetic ``size x size`` frame
with the demo model's canvas set to that size (torchvision's ``transform`` too). Accuracy: box and
mask AP of each row on the demo model's validation split (``mrcnn-edge synth --images 100 --seed 2
--size 320x320``) at a 320x320 canvas; INT8 models are calibrated on another split (seed 5).
Rows whose extra is not installed are skipped with a note. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

# (label, backend, model variant, options); variants: "static" / "dets" exports, "int8" = quantized dets
ROWS = [
    ("onnxruntime fp32", "onnxruntime", "static", {"device": "cpu"}),
    ("onnxruntime fp32, mask head on detections", "onnxruntime", "dets", {"device": "cpu"}),
    ("onnxruntime int8", "onnxruntime", "int8", {"device": "cpu"}),
    ("openvino fp32", "openvino", "dets", {"precision": "fp32"}),
    ("openvino bf16", "openvino", "dets", {"precision": "bf16"}),
    ("openvino int8", "openvino", "int8", {"precision": "fp32"}),
]


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "mrcnn_edge", *args], check=True, stdout=subprocess.DEVNULL)


def _models(work: Path, size: int, loaded: Any) -> dict[str, Path]:
    """Portable exports of the demo model at ``size`` (static and detections-only mask head) + INT8."""
    from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
    from mrcnn_edge.export.quantize import quantize_model

    out = {}
    for variant, head in (("static", "static"), ("dets", "detections")):
        p = work / f"demo-{size}-{variant}.onnx"
        if not p.is_file():
            export_onnx(*loaded, p, ExportOptions(input_size=(size, size), flavor="portable", mask_head=head),
                        log=lambda s: None)
        out[variant] = p
    cal = work / f"cal-{size}"
    if not cal.is_dir():
        _cli("synth", "--out", str(cal), "--images", "32", "--seed", "5", "--size", f"{size}x{size}", "--quiet")
    p = work / f"demo-{size}-int8.onnx"
    if not p.is_file():
        quantize_model(out["dets"], cal, p, log=lambda s: None)
    out["int8"] = p
    return out


def _torchvision(model: Any, size: int) -> Callable[[np.ndarray], list[dict]]:
    """torchvision eager as a CPU user runs it: frame -> model([tensor]) with masks pasted."""
    import torch

    model.transform.min_size, model.transform.max_size = (size,), size

    def run(frame: np.ndarray) -> Any:
        t = torch.from_numpy(np.ascontiguousarray(frame[:, :, ::-1])).permute(2, 0, 1).float().div_(255)
        with torch.inference_mode():
            return model([t])[0]
    return run


def _segmenter(path: Path, backend: str, options: dict) -> Any:
    from mrcnn_edge.runtime.backends import open_backend
    from mrcnn_edge.runtime.segmenter import Segmenter

    return Segmenter(open_backend(path, backend, **options), score_threshold=0.05)


def _coco_ap(dataset: Any, results: list[dict]) -> dict[str, float]:
    import contextlib
    import io
    import json

    from pycocotools.cocoeval import COCOeval

    stats = {}
    for iou_type, key in (("bbox", "box_AP"), ("segm", "mask_AP")):
        if not results:
            stats[key] = 0.0
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(dataset.coco, dataset.coco.loadRes(json.loads(json.dumps(results))), iou_type)
            ev.params.imgIds = list(dataset.image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats[key] = float(ev.stats[0])
    return stats


def accuracy(work: Path, loaded: Any, n_images: int) -> dict[str, dict[str, float]]:
    """Box and mask AP of torchvision eager and of every row on the validation split (320x320)."""
    import copy

    from mrcnn_edge.data.coco import encode_masks, load_dataset

    val = work / "val"
    if not val.is_dir():
        _cli("synth", "--out", str(val), "--images", str(n_images), "--seed", "2", "--size", "320x320", "--quiet")
    ds = load_dataset(val)
    frames = {i: ds.read_image(i) for i in ds.image_ids}
    models = _models(work, 320, loaded)
    tv = _torchvision(copy.deepcopy(loaded[0]).eval(), 320)
    res: list[dict] = []
    for i, f in frames.items():
        d = tv(f)
        masks = (d["masks"][:, 0] > 0.5).numpy()
        rles = encode_masks(masks) if len(masks) else []
        for k in range(len(d["scores"])):
            x1, y1, x2, y2 = (float(v) for v in d["boxes"][k])
            res.append({"image_id": i, "category_id": int(d["labels"][k]), "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": float(d["scores"][k]), "segmentation": rles[k]})
    out = {"torchvision eager": _coco_ap(ds, res)}
    for label, backend, variant, options in ROWS:
        try:
            seg = _segmenter(models[variant], backend, options)
        except Exception as exc:  # noqa: BLE001 - a row that cannot open here is skipped, said once
            print(f"skipping {label}: {exc}", file=sys.stderr)
            continue
        with seg:
            res = [r for i, f in frames.items() for r in seg(f).to_coco(i)]
        out[label] = _coco_ap(ds, res)
    return out


def speed(work: Path, loaded: Any, size: int, runs: int) -> dict[str, list[float]]:
    """Seconds per frame of each row, interleaved."""
    import copy

    from mrcnn_edge.data.shapes import image_rng, render_sample

    frame = render_sample(image_rng(777, 0), (size, size))[0]
    models = _models(work, size, loaded)
    rows: dict[str, Callable[[], Any]] = {"torchvision eager": (lambda tv=_torchvision(copy.deepcopy(loaded[0]).eval(), size): tv(frame))}
    open_segs = []
    for label, backend, variant, options in ROWS:
        try:
            seg = _segmenter(models[variant], backend, options)
        except Exception as exc:  # noqa: BLE001
            print(f"skipping {label}: {exc}", file=sys.stderr)
            continue
        open_segs.append(seg)
        rows[label] = lambda seg=seg: seg(frame).masks  # masks pasted, as torchvision does
    for fn in rows.values():  # warm-up: first-call allocations and kernel selection
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(runs):
        for label, fn in rows.items():
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    for seg in open_segs:
        seg.close()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="bench-cpu-work", help="folder for exports and datasets (reused)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    import mrcnn_edge
    from mrcnn_edge.model.checkpoint import load_checkpoint

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_checkpoint(mrcnn_edge.demo_checkpoint())
    times = speed(work, loaded, args.size, args.runs)
    acc = {} if args.skip_accuracy else accuracy(work, loaded, args.val_images)
    base = statistics.median(times["torchvision eager"])
    print(f"\n{args.size}x{args.size}, {args.runs} interleaved runs; AP on {args.val_images} validation images at 320x320\n")
    print("| row | median ms | speed-up | box AP | mask AP | mask AP - fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = acc.get("onnxruntime fp32", {}).get("mask_AP")
    for label, t in times.items():
        med = statistics.median(t)
        a = acc.get(label, {})
        delta = f"{a['mask_AP'] - ref:+.4f}" if a and ref is not None else ""
        print(f"| {label} | {med * 1e3:.1f} | {base / med:.2f}x | {a.get('box_AP', float('nan')):.4f} | "
              f"{a.get('mask_AP', float('nan')):.4f} | {delta} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
