"""``mrcnn-edge demo`` (the whole product on the shipped model) and ``mrcnn-edge benchmark``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mrcnn_edge.commands.cliutil import non_negative_int, positive_int
from mrcnn_edge.core.errors import UserError

DESCRIPTION_DEMO = (
    "The whole product on the shipped demo model: export both ONNX flavors, validate them against PyTorch, "
    "write a synthetic video and segment it with the runtime (ONNX Runtime on the CPU), then write an annotated "
    "video, a contact sheet and a report. With TensorRT and a GPU it also builds the plugin and an engine, "
    "validates and runs it."
)
DESCRIPTION_BENCHMARK = (
    "Latency (median, p90, min after warm-up) and throughput of torchvision eager, EdgeMaskRCNN eager, ONNX Runtime "
    "(portable flavor) and a TensorRT engine when available: same weights, input and settings, runs interleaved, "
    "with a pre-process / model / post-process breakdown."
)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="folder for every artefact of the demo")
    p.add_argument("--input-size", default="512x512", help="canvas HxW of the exported models")
    p.add_argument("--frames", type=positive_int, default=90, help="frames of the synthetic video")
    p.add_argument("--validate-images", type=positive_int, default=6, help="synthetic images for validation")


def _tensorrt_ready() -> str | None:
    """None when TensorRT and a GPU are usable, else why not (the driver is asked, not nvidia-smi)."""
    import importlib.util

    from mrcnn_edge.runtime.trt_platform import cuda_device_count

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    devices, why = cuda_device_count()
    return None if devices else why


def run_demo(args) -> int:
    from mrcnn_edge.commands.cliutil import parse_hw

    size = parse_hw(args.input_size, multiple_of=32, minimum=32)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    steps: list[tuple[str, float, str]] = []

    def step(name: str):
        _log(f"\n== {name}")
        return time.time()

    from mrcnn_edge import demo_checkpoint
    from mrcnn_edge.model.checkpoint import load_checkpoint
    from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
    from mrcnn_edge.export.validate import format_report, validate

    ckpt = demo_checkpoint()
    t = step(f"1/5 load the demo model {ckpt.name}")
    loaded = load_checkpoint(ckpt)
    cfg = loaded[1]
    _log(f"{cfg.arch}, classes: {', '.join(cfg.class_names[1:])}")
    steps.append(("load", time.time() - t, ""))

    t = step(f"2/5 export both ONNX flavors at {size[0]}x{size[1]}")
    models = {}
    for flavor in ("tensorrt", "portable"):
        path = out / f"demo_{flavor}.onnx"
        rep = export_onnx(None, path, ExportOptions(input_size=size, flavor=flavor), model_and_config=loaded, log=_log)
        models[flavor] = path
        steps.append((f"export {flavor}", rep["seconds"], str(path)))

    t = step(f"3/5 validate against PyTorch on {args.validate_images} synthetic images")
    reports = {}
    for flavor, path in models.items():
        rep = validate(str(ckpt), str(path), limit=args.validate_images, log=_log)
        text = format_report(rep)
        print(text)
        reports[flavor] = rep
        _write_text(out / f"validation_{flavor}.md", text)
    steps.append(("validate", time.time() - t, "PASS" if all(r["ok"] for r in reports.values()) else "FAIL"))

    t = step(f"4/5 segment a synthetic video ({args.frames} frames) with the runtime (ONNX Runtime, CPU)")
    from mrcnn_edge.data.video import write_video

    video = write_video(out / "synthetic.mp4", args.frames, seed=7, size=(480, 640), progress=False)
    from mrcnn_edge.commands.cli import main as cli_main

    annotated = out / "segmented.mp4"
    code = cli_main(["run", str(models["portable"]), "--source", str(video), "--output", str(annotated), "--no-display"])
    if code != 0:
        raise UserError("the runtime could not segment the demo video (see above)")
    steps.append(("segment video", time.time() - t, str(annotated)))

    t = step("5/5 contact sheet and report")
    sheet = _contact_sheet(models["portable"], video, out / "contact_sheet.png")
    trt_note = _tensorrt_ready()
    if trt_note is None:
        _log("TensorRT and a GPU found: building the plugin and the engine")
        engine = out / "demo.engine"
        for cmd in (["build-plugin"], ["build", str(models["tensorrt"]), "-o", str(engine)],
                    ["validate", "--checkpoint", str(ckpt), "--model", str(engine), "--limit", str(args.validate_images)],
                    ["run", str(engine), "--source", str(video), "--output", str(out / "segmented_tensorrt.mp4"), "--no-display"]):
            if cli_main(cmd) != 0:
                raise UserError(f"'mrcnn-edge {' '.join(cmd)}' failed (see above)")
    steps.append(("sheet", time.time() - t, str(sheet)))
    total = time.time() - t_start
    _write_report(out / "report.md", cfg, steps, reports, total, trt_note)
    ok = all(r["ok"] for r in reports.values())
    print(f"\ndemo {'finished' if ok else 'finished with validation FAILURES'} in {total / 60:.1f} min: "
          f"{out}/report.md, {annotated.name}, {sheet.name}"
          + ("" if trt_note is None else f" (TensorRT steps skipped: {trt_note})"))
    return 0 if ok else 1


def _write_text(path: Path, text: str) -> None:
    from mrcnn_edge.core.atomic import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _contact_sheet(model: Path, video: Path, path: Path, n: int = 6) -> Path:
    """A grid of video frames with their masks drawn (runtime reference drawing)."""
    import cv2
    import numpy as np

    from mrcnn_edge.core.atomic import atomic_output
    from mrcnn_edge.runtime import Segmenter

    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or n
    picks = set(np.linspace(0, total - 1, n).astype(int).tolist())
    tiles = []
    with Segmenter.from_path(model) as seg:
        i = 0
        while len(tiles) < n:
            ok, frame = cap.read()
            if not ok:
                break
            if i in picks:
                dets = seg(frame)
                tile = dets.draw(frame)
                cv2.putText(tile, f"frame {i}: {len(dets)} shapes", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
                tiles.append(cv2.resize(tile, (320, 240), interpolation=cv2.INTER_AREA))
            i += 1
    cap.release()
    if not tiles:
        raise UserError(f"no frames could be read back from {video}")
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[k: k + 3]) for k in range(0, len(tiles), 3)]
    with atomic_output(path) as tmp:
        cv2.imwrite(str(tmp), np.vstack(rows))
    return path


def _write_report(path: Path, cfg, steps, reports, total: float, trt_note: str | None) -> None:
    lines = ["# mrcnn-edge demo", "", f"Model: {cfg.arch}, {cfg.num_classes - 1} classes ({', '.join(cfg.class_names[1:])})", "",
             "| step | seconds | result |", "|---|---|---|"]
    lines += [f"| {name} | {sec:.1f} | {res} |" for name, sec, res in steps]
    lines += ["", f"Total: {total / 60:.1f} min.", ""]
    for flavor, rep in reports.items():
        from mrcnn_edge.export.validate import format_report

        lines += [f"## Validation, {flavor} flavor", "", format_report(rep)]
    lines += ["", "TensorRT: " + ("engine built, validated and run" if trt_note is None else f"skipped ({trt_note})."),
              "", "![contact sheet](contact_sheet.png)"]
    _write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------- benchmark


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint (.pth); default: the shipped demo model. A portable ONNX is exported for ORT")
    p.add_argument("--onnx", default=None, help="use this portable ONNX instead of exporting one")
    p.add_argument("--engine", default=None, help="also time this TensorRT engine")
    p.add_argument("--input-size", default="512x512", help="canvas HxW; torchvision is set to the same resize")
    p.add_argument("--runs", type=positive_int, default=10, help="timed runs per backend (interleaved)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed runs per backend first")
    p.add_argument("--backends", default="torchvision,edge,onnx,tensorrt", help="comma-separated subset")
    p.add_argument("--rpn-post-nms-top-n", type=positive_int, default=None, help="proposals kept (all backends)")
    p.add_argument("--max-detections", type=positive_int, default=None, help="detections kept (all backends)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.add_argument("--markdown", default=None, help="write the table as markdown")


def run_benchmark(args) -> int:
    from mrcnn_edge.commands.benchmark import run_benchmark as bench

    return bench(args)
