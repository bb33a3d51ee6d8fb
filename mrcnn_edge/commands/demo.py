"""``mrcnn-edge demo`` (the whole product on the shipped model) and ``mrcnn-edge benchmark``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mrcnn_edge.core.cliutil import non_negative_int, positive_int
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import note

DESCRIPTION_DEMO = (
    "The whole product on the shipped demo model: export both ONNX flavors, validate them against PyTorch on "
    "annotated images of the demo's validation split (box and mask AP; on a CPU with BF16 also OpenVINO bf16 "
    "against fp32, recorded in the portable model when within 0.01 mask AP, as 'validate --annotations' does), "
    "write a synthetic video and segment it with the runtime (on the CPU: OpenVINO where installed on x86, in "
    "bf16 where recorded, else ONNX Runtime, as 'run --backend auto' picks), then write an annotated "
    "video, a contact sheet and a report. With TensorRT and a GPU it also builds the plugin and an engine, "
    "validates and runs it."
)
DESCRIPTION_BENCHMARK = (
    "Speed and accuracy side by side over a set of frames: torchvision eager (the baseline) and every installed "
    "CPU engine at each precision it offers (ONNX Runtime fp32; OpenVINO fp32 and, on CPUs with BF16, bf16; both "
    "on an INT8 model given with --int8), or the rows given with --row / --backends (EdgeMaskRCNN eager, a "
    "TensorRT engine with --engine). Frames: the images of --annotations, else the demo model's synthetic "
    "validation split, else synthetic scenes. Rows run interleaved frame by frame; per row the mean and median "
    "per frame, the speed-up over torchvision, the floor (the weighted layers' arithmetic at this CPU's GEMM "
    "speed) and the share of it reached, and with annotations box and mask AP. The row 'run' takes on the "
    "portable model without options is marked."
)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="folder for every artefact of the demo")
    p.add_argument("--input-size", default="512x512", help="canvas HxW of the exported models")
    p.add_argument("--frames", type=positive_int, default=90, help="frames of the synthetic video")
    p.add_argument("--validate-images", type=positive_int, default=6, help="images of the demo's validation split for validation")


def _tensorrt_ready() -> str | None:
    """None when TensorRT and a GPU are usable, else why not (the driver is asked, not nvidia-smi)."""
    import importlib.util

    from mrcnn_edge.runtime.gpu.trt_platform import cuda_device_count

    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    devices, why = cuda_device_count()
    return None if devices else why


def run_demo(args) -> int:
    from mrcnn_edge.core.cliutil import parse_canvas

    size = parse_canvas(args.input_size)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    steps: list[tuple[str, float, str]] = []

    def step(name: str) -> float:
        note(f"\n== {name}")
        return time.time()

    from mrcnn_edge import demo_checkpoint
    from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx
    from mrcnn_edge.export.validate import format_report, validate
    from mrcnn_edge.model.checkpoint import load_checkpoint

    ckpt = demo_checkpoint()
    t = step(f"1/5 load the demo model {ckpt.name}")
    loaded = load_checkpoint(ckpt)  # the one load: export and validate take it as it is
    cfg = loaded[1]
    note(f"{cfg.arch}, classes: {', '.join(cfg.class_names[1:])}")
    steps.append(("load", time.time() - t, ""))

    t = step(f"2/5 export both ONNX flavors at {size[0]}x{size[1]}")
    models = {}
    for flavor in ("tensorrt", "portable"):
        path = out / f"demo_{flavor}.onnx"
        rep = export_onnx(*loaded, path, ExportOptions(input_size=size, flavor=flavor))
        models[flavor] = path
        steps.append((f"export {flavor}", rep["seconds"], str(path)))

    from mrcnn_edge.data.dataset import DEMO_VALIDATION_SPLIT, demo_validation_split

    t = step(f"3/5 validate against PyTorch on {args.validate_images} images of {DEMO_VALIDATION_SPLIT}")
    split = demo_validation_split(out / "validation_set", args.validate_images)
    reports = {}
    for flavor, path in models.items():
        rep = validate(str(ckpt), str(path), annotations=str(split), limit=args.validate_images, loaded=loaded)
        text = format_report(rep)
        print(text)
        reports[flavor] = rep
        _write_text(out / f"validation_{flavor}.md", text)
    if reports["portable"].ok:  # as 'validate --annotations' does: bf16 recorded where it keeps the mask AP
        from mrcnn_edge.export.validated_precisions import check_annotated

        check_annotated(models["portable"], None, str(split), args.validate_images)
    steps.append(("validate", time.time() - t, "PASS" if all(r.ok for r in reports.values()) else "FAIL"))

    from mrcnn_edge.data.video import write_video
    from mrcnn_edge.runtime import Segmenter

    t = time.time()
    video = write_video(out / "synthetic.mp4", args.frames, seed=7, size=(480, 640), progress=False)
    annotated = out / "segmented.mp4"
    sheet = out / "contact_sheet.png"
    # one session for the video and the sheet; a file source, so frames queue up, as 'run' opens it
    with Segmenter.from_path(models["portable"], throughput=True) as seg:
        # labelled once the backend is chosen: the step names the one that actually runs
        step(f"4/5 segment a synthetic video ({args.frames} frames) with the runtime: {seg.backend.description}")
        _segment(seg, video, annotated)
        steps.append(("segment video", time.time() - t, f"{annotated} ({seg.backend.description})"))
        t = step("5/5 contact sheet and report")
        _contact_sheet(seg, video, sheet)
    trt_note = _tensorrt_ready()
    if trt_note is None:
        note("TensorRT and a GPU found: building the plugin and the engine")
        reports["tensorrt engine"] = _tensorrt_steps(models["tensorrt"], out, ckpt, loaded, video, args.validate_images,
                                                       split)
    steps.append(("sheet", time.time() - t, str(sheet)))
    total = time.time() - t_start
    _write_report(out / "report.md", cfg, steps, reports, total, trt_note)
    ok = all(r.ok for r in reports.values())
    print(f"\ndemo {'finished' if ok else 'finished with validation FAILURES'} in {total / 60:.1f} min: "
          f"{out}/report.md, {annotated.name}, {sheet.name}"
          + ("" if trt_note is None else f" (TensorRT steps skipped: {trt_note})"))
    return 0 if ok else 1


def _segment(seg: Any, video: Path, output: Path) -> None:
    """The runtime's run assembly, as ``mrcnn-edge run``: ``video`` segmented by ``seg`` into ``output``."""
    from mrcnn_edge.runtime.run import RunOptions, run_sources

    note(f"model: {seg.description}")
    run, = run_sources(seg, [str(video)], [str(output)], RunOptions(announce=note))
    stats = run.stats
    note(stats.summary())
    if stats.frames == 0:
        raise UserError(f"the runtime could not segment {video}: no frame was processed")


def _tensorrt_steps(onnx_path: Path, out: Path, ckpt: Path, loaded: Any, video: Path, n_images: int,
                    split: Path) -> Any:
    """Plugin, engine, validation and a segmented video on the GPU (library calls, as the CLI makes them)."""
    from mrcnn_edge.export.build import plugin_library as pb
    from mrcnn_edge.export.build.engine import build_engine
    from mrcnn_edge.export.validate import format_report, validate

    toolchain = pb.find_toolchain()
    library = pb.build_plugin_library(pb.default_plugin_path(), toolchain, pb.resolve_cuda_archs("auto", toolchain.nvcc))
    engine = out / "demo.engine"
    build_engine(onnx_path, engine, plugin_lib=library)
    rep = validate(str(ckpt), str(engine), annotations=str(split), limit=n_images, loaded=loaded)
    text = format_report(rep)
    print(text)
    _write_text(out / "validation_tensorrt_engine.md", text)
    from mrcnn_edge.runtime import Segmenter

    with Segmenter.from_path(engine) as seg:
        _segment(seg, video, out / "segmented_tensorrt.mp4")
    return rep


def _write_text(path: Path, text: str) -> None:
    from mrcnn_edge.core.atomic import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _contact_sheet(seg: Any, video: Path, path: Path, n: int = 6) -> Path:
    """A grid of video frames with their masks drawn (the runtime's drawing), by ``seg``."""
    import cv2
    import numpy as np

    from mrcnn_edge.core.atomic import atomic_output

    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or n
    picks = set(np.linspace(0, total - 1, n).astype(int).tolist())
    tiles = []
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
    from mrcnn_edge.export.validate import format_report

    for flavor, rep in reports.items():
        lines += [f"## Validation, {flavor}" + ("" if flavor.startswith("tensorrt ") else " flavor"), "",
                  format_report(rep)]
    lines += ["", "TensorRT: " + ("engine built, validated and run" if trt_note is None else f"skipped ({trt_note})."),
              "", "![contact sheet](contact_sheet.png)"]
    _write_text(path, "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------- benchmark


def add_benchmark_arguments(p: argparse.ArgumentParser) -> None:
    from mrcnn_edge.commands.benchmark import DEFAULT_FRAMES, ROW_HELP
    from mrcnn_edge.runtime.backends import BACKENDS

    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint (.pth); default: the shipped demo model. A portable ONNX is exported for ONNX rows")
    p.add_argument("--onnx", default=None, help="use this ONNX (either flavor) instead of exporting a portable one")
    p.add_argument("--engine", default=None, help="also time this TensorRT engine")
    p.add_argument("--int8", default=None, metavar="MODEL",
                   help="also time this INT8 model (mrcnn-edge quantize) on every CPU engine")
    p.add_argument("--input-size", default=None,
                   help="canvas HxW of the exported and torchvision rows (default: --onnx's own, else 512x512)")
    p.add_argument("--frames", type=positive_int, default=DEFAULT_FRAMES, metavar="N",
                   help="frames to time: the first N of --annotations, or N of the demo's validation split / N "
                        "synthetic scenes")
    p.add_argument("--runs", type=positive_int, default=1, help="passes over the frames (interleaved row by row)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed frames per row first")
    p.add_argument("--gemm-limits", default=None, metavar="P=GFLOPS,...",
                   help="this CPU's GEMM throughput per precision for the floors, e.g. fp32=139,bf16=392,int8=548 "
                        "(default: measured with OpenVINO before the rows)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset of torchvision, edge, onnx (ONNX Runtime), tensorrt (with "
                        "--engine), instead of the default rows")
    p.add_argument("--row", action="append", default=None, metavar="SPEC", help=ROW_HELP.format(backends=", ".join(BACKENDS)))
    p.add_argument("--annotations", default=None, metavar="DIR",
                   help="a dataset folder (annotations.json + images/, as 'mrcnn-edge synth' writes): its images are "
                        "the frames, and box and mask AP of every row on them go beside its speed")
    p.add_argument("--rpn-post-nms-top-n", type=positive_int, default=None, help="proposals kept (all rows)")
    p.add_argument("--max-detections", type=positive_int, default=None, help="detections kept (all rows)")
    p.add_argument("--json", default=None, help="write the results as JSON")
    p.add_argument("--markdown", default=None, help="write the table as markdown")


def run_benchmark(args) -> int:
    from mrcnn_edge.commands.benchmark import run_benchmark as bench

    return bench(args)
