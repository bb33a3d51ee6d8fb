"""``mrcnn-edge benchmark``: speed and accuracy of runners side by side, over a set of frames.

A row is ``(label, backend, model, options)``: any runner of the table
:data:`mrcnn_edge.export.validate.runners.RUNNERS`: torchvision eager or ``EdgeMaskRCNN`` eager on
the checkpoint, or any backend of the runtime's table (ONNX Runtime, OpenVINO, TensorRT, ...) on a
model file. Without rows given, every installed CPU engine at each precision it offers: ONNX
Runtime fp32, OpenVINO fp32 and (CPUs with BF16) bf16, and with ``--int8 MODEL`` both on that INT8
model (OpenVINO with its float parts in fp32, and in bf16 on CPUs with BF16), beside torchvision
eager, the baseline.

The frames: the images of ``--annotations`` (the first ``--frames``), else, for the shipped demo
model, ``--frames`` images of its synthetic validation split (``mrcnn-edge synth --seed 2 --size
320x320``, annotated), else ``--frames`` synthetic scenes. Every row runs validation's comparator
loop (:mod:`mrcnn_edge.export.validate.loop`) on one frame, then the next row on the same frame
(interleaved, so that a neighbour's load hits all rows alike), timed in the pipeline's stages:

* ``pre``: the runtime's reference letterbox (frame to the runner's input);
* ``infer``: ``runner.infer`` and nothing else (the TensorRT row included);
* ``post``: the runtime's canvas-to-frame step (``rows_to_frame``) and the masks pasted at frame size.

Per row: mean and median per frame, the speed-up over torchvision (of the means), with annotations
box and mask AP of the detections of the first pass (every detection the graph returned, as COCO
evaluation wants), and for ONNX rows the floor (:mod:`mrcnn_edge.commands.floors`: the weighted
ops' arithmetic at this CPU's GEMM speed for the row's precision) and the share of it the row's
``infer`` reaches. The row ``run`` would take on the portable model without options is marked, and
with ``--int8`` the one it would take on the INT8 model: the backend table's automatic choice, and
for OpenVINO the precision ``auto`` picks (``choose_precision``), bf16 counting as validated when
these frames say so by the rule ``mrcnn-edge validate`` records it by (``export.validated_precisions``).

torchvision's row starts after its ``transform`` (the same letterboxed tensor as every other row)
and pastes its masks with the runtime's paste, so its numbers compare with the others stage by stage.
Over 450 lines on purpose: rows, frames, the interleaved loop and the default-row rule are one
command (the floors are in ``floors.py``, the loop itself in ``export/validate/loop.py``).
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import Progress, note

__all__ = ["Row", "Timing", "RowResult", "parse_row", "default_rows", "run_benchmark", "format_table",
           "ROW_HELP", "DEFAULT_FRAMES"]

ROW_HELP = (
    "a row to time: [LABEL=]BACKEND[:MODEL][:KEY=VALUE,...]; BACKEND is torchvision or edge (MODEL: a "
    "checkpoint, default the benchmark's) or a runtime backend ({backends}; MODEL: its model file, default for "
    "ONNX backends the portable ONNX of the benchmark's checkpoint); KEY=VALUE options go to the backend, e.g. "
    "'ov-bf16=openvino:model.onnx:precision=bf16', 'onnxruntime::threads=1', 'tensorrt:model.engine'. Repeatable"
)
DEFAULT_FRAMES = 50
BASELINE = "torchvision"
# the CPU engines and the precisions each offers (backend options), the rows timed without --row
CPU_PRECISIONS: dict[str, dict[str, dict[str, Any]]] = {
    "onnxruntime": {"fp32": {"device": "cpu"}},
    "openvino": {"fp32": {"precision": "fp32"}, "bf16": {"precision": "bf16"}},
}
# the rows of an INT8 model (--int8): label -> (backend, options). OpenVINO runs the layers Q/DQ makes
# INT8 in INT8 whatever the hint; the hint sets the float parts between them (ROIAlign, NMS, the heads'
# edges): fp32 ('int8'), bf16 (CPUs with BF16; skipped elsewhere)
INT8_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "onnxruntime int8": ("onnxruntime", {"device": "cpu"}),
    "openvino int8": ("openvino", {"precision": "int8"}),
    "openvino int8 bf16": ("openvino", {"precision": "bf16"}),
}


@dataclass(frozen=True)
class Row:
    """One runner to time: a label for the table, a backend name, a model (None: the default one), options."""

    label: str
    backend: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    implicit: bool = False  # a default row: skipped with a note when its backend cannot open


@dataclass(frozen=True)
class Timing:
    mean: float
    median: float
    p90: float
    min: float

    @classmethod
    def of(cls, ms: Sequence[float]) -> "Timing":
        a = np.asarray(ms)
        return cls(float(a.mean()), float(np.median(a)), float(np.percentile(a, 90)), float(a.min()))


@dataclass
class RowResult:
    """A row's timings per frame in milliseconds (``stages_ms``: pre, infer, post), the detection rows
    per frame, with annotations its AP, for ONNX rows its floor (ms) and the share of it ``infer``
    reaches, and whether it is what ``run`` takes on the model without options."""

    label: str
    backend: str
    model: str
    total_ms: Timing
    stages_ms: dict[str, Timing]
    fps: float
    rows_per_frame: float = 0.0
    mask_AP: float | None = None
    box_AP: float | None = None
    floor_ms: float | None = None
    floor_share: float | None = None
    run_default: str = ""  # "" or the model 'run' takes this row on without options ("portable", "INT8")


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _is_options(text: str) -> bool:
    items = [s for s in text.split(",") if s.strip()]
    return bool(items) and all("=" in s and "/" not in s for s in items)


def parse_row(text: str) -> Row:
    """``[LABEL=]BACKEND[:MODEL][:KEY=VALUE,...]`` -> :class:`Row` (UserError when malformed).

    The part after the last ``:`` is options when it is ``KEY=VALUE`` pairs, so model paths and
    URLs with colons (``triton://host:8001/model``) stay whole; ``BACKEND::KEY=VALUE`` keeps the
    default model."""
    from mrcnn_edge.export.validate.runners import RUNNERS

    head, _, rest = text.strip().partition(":")
    label = None
    if "=" in head:
        label, head = (s.strip() for s in head.split("=", 1))
    head = head.strip()
    by_label = {e.label: e.name for e in RUNNERS.values()}  # the short names of --backends ("onnx")
    backend = head if head in RUNNERS else by_label.get(head, head)
    if backend not in RUNNERS:
        raise UserError(f"--row {text!r}: unknown backend {head!r}; choose from {', '.join(RUNNERS)}")
    base, colon, last = rest.rpartition(":")
    if colon and _is_options(last):
        model, opts_text = base, last
    elif not colon and _is_options(rest):
        model, opts_text = "", rest
    else:
        model, opts_text = rest, ""
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in opts_text.split(","))):
        key, _, value = item.partition("=")
        if not key.strip():
            raise UserError(f"--row {text!r}: option {item!r} is not KEY=VALUE")
        options[key.strip()] = _value(value.strip())
    return Row(label or head, backend, model.strip() or None, options)


def default_rows(onnx_ok: bool, engine: str | None, int8: str | None = None) -> list[Row]:
    """torchvision, then every CPU engine at each precision it offers (:data:`CPU_PRECISIONS`) on the
    portable export, both on ``int8`` when given, and TensorRT on ``engine``. Rows of backends or
    precisions this machine lacks are skipped, with a note, when they fail to open; ONNX Runtime, the
    one every install has, is not."""
    from mrcnn_edge.export.validate.runners import RUNNERS

    rows = [Row(BASELINE, BASELINE)]
    if onnx_ok:
        for backend, precisions in CPU_PRECISIONS.items():
            rows += [Row(f"{backend} {p}", backend, None, dict(o), implicit=backend != "onnxruntime")
                     for p, o in precisions.items()]
        if int8:
            rows += [Row(label, b, int8, dict(o), implicit=b != "onnxruntime") for label, (b, o) in INT8_ROWS.items()]
    if engine:
        rows.append(Row("tensorrt", "tensorrt", engine))
    return [r for r in rows if r.backend in RUNNERS]


def _rows_from_args(args: Any) -> list[Row]:
    if args.row:
        if args.backends:
            raise UserError("give either --row or --backends, not both")
        return [parse_row(r) for r in args.row]
    if args.backends is None:
        return default_rows(True, args.engine, args.int8)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(wanted) - {"torchvision", "edge", "onnx", "tensorrt"}
    if unknown:
        raise UserError(f"unknown backends {sorted(unknown)}; choose from torchvision, edge, onnx, tensorrt")
    rows = [Row(BASELINE, BASELINE)] if "torchvision" in wanted else []
    rows += [Row("edge", "edge")] if "edge" in wanted else []
    rows += [Row("onnx", "onnxruntime", None, {"device": "cpu"})] if "onnx" in wanted else []
    rows += [Row("tensorrt", "tensorrt", args.engine)] if "tensorrt" in wanted and args.engine else []
    return rows


def format_table(results: list[RowResult], baseline: str = BASELINE) -> str:
    """The markdown table: per frame mean, median and p90, the infer stage, the speed-up over the
    baseline (of the means), the floor and its share, and with annotations box and mask AP and the
    mask AP change against the fp32 reference row (OpenVINO's, else ONNX Runtime's)."""
    base = next((r.total_ms.mean for r in results if r.label == baseline), None)
    with_ap = any(r.mask_AP is not None for r in results)
    ref = next((r.mask_AP for name in ("openvino fp32", "onnxruntime fp32", "onnx", baseline)
                for r in results if r.label == name and r.mask_AP is not None), None)
    lines = ["| backend | mean ms | median ms | p90 ms | infer ms | speed-up vs torchvision | floor ms | share of floor |"
             + (" box AP | mask AP | mask AP vs fp32 |" if with_ap else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if with_ap else "")]
    for r in results:
        t = r.total_ms
        label = f"**{r.label}** ({_DEFAULT_MARK[r.run_default]})" if r.run_default else r.label
        speed = f"{base / t.mean:.2f}x" if base else "-"
        floor = (f"{r.floor_ms:.1f} | {100 * r.floor_share:.0f}%" if r.floor_ms is not None and r.floor_share is not None
                 else "- | -")
        line = (f"| {label} | {t.mean:.1f} | {t.median:.1f} | {t.p90:.1f} | {r.stages_ms['infer'].mean:.1f} | {speed} | "
                f"{floor} |")
        if with_ap:
            if r.mask_AP is None or r.box_AP is None:
                line += " - | - | - |"
            else:
                delta = f"{r.mask_AP - ref:+.4f}" if ref is not None else "-"
                line += f" {r.box_AP:.4f} | {r.mask_AP:.4f} | {delta} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


class _Bench:
    """What every row shares: the checkpoint (loaded once), the canvas, the frame, a portable ONNX on demand."""

    def __init__(self, args: Any, model: Any, cfg: Any, canvas: tuple[int, int]) -> None:
        self.args, self.model, self.cfg, self.canvas = args, model, cfg, canvas
        self._onnx: str | None = args.onnx
        self._tmp: tempfile.TemporaryDirectory | None = None

    def portable_onnx(self) -> str:
        if self._onnx is None:
            from mrcnn_edge.export.onnx_export import ExportOptions, export_onnx

            self._tmp = tempfile.TemporaryDirectory(prefix="mrcnn-edge-bench-")
            self._onnx = str(Path(self._tmp.name) / "portable.onnx")
            export_onnx(self.model, self.cfg, self._onnx,
                        ExportOptions(input_size=self.canvas, flavor="portable", max_detections=self.args.max_detections,
                                      rpn_post_nms_top_n=self.args.rpn_post_nms_top_n))
        return self._onnx

    def open(self, row: Row) -> Any:
        """The runner of ``row`` from the runner table (UserError with the row's label when it cannot open)."""
        from mrcnn_edge.export.onnx_export import ExportOptions
        from mrcnn_edge.export.validate.runners import RUNNERS, TorchSource, open_runner

        entry = RUNNERS[row.backend]
        target: Any
        if entry.takes == "checkpoint":
            model, cfg = self.model, self.cfg
            if row.model:
                from mrcnn_edge.model.checkpoint import load_checkpoint

                model, cfg = load_checkpoint(row.model)
                _settings(model, self.args)
            target = TorchSource(model, cfg, row.model or row.backend, ExportOptions(
                input_size=self.canvas, max_detections=self.args.max_detections,
                rpn_post_nms_top_n=self.args.rpn_post_nms_top_n))
        elif row.model is not None:
            target = row.model
        elif ".onnx" in entry.suffixes:
            target = self.portable_onnx()
        else:
            raise UserError(f"row {row.label}: the {row.backend} backend needs a model (--row {row.backend}:MODEL)")
        try:
            return open_runner(row.backend, target, **row.options)
        except UserError as exc:
            raise UserError(f"row {row.label}: {exc}") from exc

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _settings(model: Any, args: Any) -> None:
    if args.max_detections:
        model.roi_heads.detections_per_img = args.max_detections
    if args.rpn_post_nms_top_n:
        model.rpn._post_nms_top_n["testing"] = args.rpn_post_nms_top_n


def _frames(args: Any, demo: bool, canvas: tuple[int, int], workdir: Path) -> tuple[list[tuple[Any, np.ndarray]], Any, str]:
    """``[(image id, BGR frame)]``, the COCO dataset they come from (None: no AP), and what they are."""
    from mrcnn_edge.export.validate import collect_images

    n = args.frames
    if args.annotations:
        items, dataset = collect_images(None, args.annotations, n)
        return items, dataset, f"{len(items)} images of {Path(args.annotations).name}"
    if demo:  # the demo model's own validation split: synthetic scenes with their annotations
        from mrcnn_edge.data.dataset import DEMO_VALIDATION_SPLIT, demo_validation_split

        folder = demo_validation_split(workdir / "val", n)
        items, dataset = collect_images(None, str(folder), n)
        return items, dataset, f"{n} images of {DEMO_VALIDATION_SPLIT}"
    from mrcnn_edge.data.shapes import image_rng, render_sample

    note("[benchmark] no --annotations: timing on synthetic scenes, no AP")
    items = [(f"synthetic-{i}", render_sample(image_rng(2024, i), canvas)[0]) for i in range(n)]
    return items, None, f"{n} synthetic scenes of {canvas[0]}x{canvas[1]}"


_DEFAULT_MARK = {"portable": "run's default", "INT8": "run's default on the INT8 model"}


def _run_defaults(bench: _Bench, runners: dict[str, tuple[Row, Any]], results: dict[str, RowResult],
                  frames: int, int8: str | None) -> dict[str, tuple[str, str]]:
    """For the portable model (and the ``--int8`` model), the label of the row ``run`` takes on it
    without options, with the reason: ``{"portable": (label, why), "INT8": ...}``, a model left out
    when no timed row is that one. bf16 counts as validated when the model says so, or when these
    frames' rows say so by the rule ``validate`` records it by (against the model's float parts in fp32)."""
    from mrcnn_edge.runtime.backends import backend_for

    out: dict[str, tuple[str, str]] = {}
    model = bench.portable_onnx()
    entry = backend_for(model)
    if entry.name != "openvino":
        label = next((k for k, (r, _) in runners.items() if r.backend == entry.name and r.model is None), None)
        if label:
            out["portable"] = (label, f"the backend table's automatic choice for {Path(model).name} here")
        return out
    portable = _openvino_default(model, results, "openvino fp32", "openvino bf16", frames)
    if portable:
        out["portable"] = portable
    if int8 and backend_for(int8).name == "openvino":
        quantized = _openvino_default(int8, results, "openvino int8", "openvino int8 bf16", frames)
        if quantized:
            out["INT8"] = quantized
    return out


def _openvino_default(model: str | Path, results: dict[str, RowResult], full: str, bf16: str,
                      frames: int) -> tuple[str, str] | None:
    """The row (``full``: float parts in fp32, or ``bf16``) OpenVINO's ``auto`` takes on ``model``."""
    from mrcnn_edge.core.contract import validated_drop
    from mrcnn_edge.core.metadata import read_onnx_metadata
    from mrcnn_edge.export.validated_precisions import bf16_record
    from mrcnn_edge.runtime.backends.openvino import choose_precision, cpu_has_bf16

    import openvino as ov

    meta = dict(read_onnx_metadata(model)[1])
    a, b = results.get(full), results.get(bf16)
    measured = ""
    if validated_drop(meta, "bf16") is None and a and b and a.mask_AP is not None and b.mask_AP is not None:
        meta["validated_precisions"] = {"bf16": bf16_record(a.mask_AP, b.mask_AP, frames, "benchmark")}
        measured = " (bf16 judged on these frames as 'mrcnn-edge validate --annotations' would record it)"
    choice = choose_precision("auto", meta, cpu_has_bf16(ov.Core()))
    label = bf16 if choice.precision == "bf16" else full
    return (label, choice.why + measured) if label in results else None


def run_benchmark(args: Any) -> int:
    import contextlib

    import torch

    from mrcnn_edge import demo_checkpoint
    from mrcnn_edge.core.atomic import atomic_output, check_writable
    from mrcnn_edge.core.cliutil import parse_canvas
    from mrcnn_edge.model.checkpoint import load_checkpoint

    from mrcnn_edge.commands.floors import gemm_limits, parse_gemm_limits

    H, W = parse_canvas(args.input_size or _canvas_of(args.onnx) or "512x512")
    rows = _rows_from_args(args)
    if len({r.label for r in rows}) != len(rows):
        raise UserError(f"two rows have the same label: {', '.join(r.label for r in rows)}; name them LABEL=...")
    for out in (args.json, args.markdown):
        if out:
            check_writable(out)
    given_limits = parse_gemm_limits(args.gemm_limits) if args.gemm_limits else None
    ckpt = Path(args.model) if args.model else demo_checkpoint()
    model, cfg = load_checkpoint(ckpt)
    _settings(model, args)
    bench = _Bench(args, model, cfg, (H, W))
    results: dict[str, RowResult] = {}
    with contextlib.ExitStack() as stack:
        stack.callback(bench.close)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mrcnn-edge-bench-frames-")))
        items, dataset, what = _frames(args, args.model is None, (H, W), work)
        runners: dict[str, tuple[Row, Any]] = {}
        for row in rows:
            try:
                runners[row.label] = (row, stack.enter_context(bench.open(row)))
            except UserError as exc:
                if not row.implicit:
                    raise
                note(f"[benchmark] skipping {row.label}: {exc}")
        onnx_rows = {k for k, (r, runner) in runners.items() if str(getattr(runner, "path", "")).endswith(".onnx")}
        limits = given_limits or (gemm_limits() if onnx_rows and _openvino_here() else {})
        note(f"[benchmark] {', '.join(runners)}; canvas {H}x{W}; {what}, {args.runs} pass(es) after {args.warmup} "
             f"warm-up frame(s) per row; torch threads {torch.get_num_threads()}"
             + (f"; GEMM limits {', '.join(f'{k} {v:.0f}' for k, v in limits.items())} GFLOP/s" if limits else ""))
        samples, kept = _time_rows(runners, items, cfg, args.runs, args.warmup)
        for label, (row, runner) in runners.items():
            results[label] = _result(label, row, runner, samples[label], kept[label], items, dataset, limits)
        portable_rows = any(r.backend in CPU_PRECISIONS and r.model is None for r, _ in runners.values())
        # while the portable model is still here
        defaults = _run_defaults(bench, runners, results, len(items), args.int8) if portable_rows else {}
    for which, (label, _) in defaults.items():
        results[label].run_default = which
    table = format_table(list(results.values()))
    print(table)
    for which, (label, why) in defaults.items():
        r, base = results[label], results.get(BASELINE)
        speed = f", {base.total_ms.mean / r.total_ms.mean:.2f}x torchvision" if base else ""
        note(f"[benchmark] run's default on the {which} model: {label}{speed} ({why})")
    from mrcnn_edge.export.validate.compare import as_json

    meta = {"checkpoint": str(ckpt), "canvas": [H, W], "frames": what, "runs": args.runs, "warmup": args.warmup,
            "torch_threads": torch.get_num_threads(), "rpn_post_nms_top_n": args.rpn_post_nms_top_n or 1000,
            "max_detections": args.max_detections or 100, "date": time.strftime("%Y-%m-%d"), "gemm_limits": limits,
            "rows": [as_json(r) for r in rows], "results": {k: as_json(r) for k, r in results.items()}}
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
    if args.markdown:
        with atomic_output(args.markdown) as tmp:
            tmp.write_text(table)
    return 0


def _canvas_of(model: str | None) -> str | None:
    """``HxW`` of an exported model's canvas (its metadata), so that torchvision sees the same."""
    if not model:
        return None
    from mrcnn_edge.core.metadata import read_metadata

    h, w = read_metadata(model, ("input_size",))["input_size"]
    return f"{h}x{w}"


def _openvino_here() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _time_rows(runners: dict[str, tuple[Row, Any]], items: list[tuple[Any, np.ndarray]], cfg: Any, runs: int,
               warmup: int) -> tuple[dict[str, list[dict[str, float]]], dict[str, list[Any]]]:
    """Every row on every frame, row after row on the same frame (interleaved), ``runs`` passes after
    ``warmup`` untimed frames per row: per row its stage times per step and the first pass's
    per-frame detections (frame pixels, masks as the model returned them)."""
    from mrcnn_edge.export.validate.loop import step

    mean, std = cfg.image_mean, cfg.image_std
    for k in range(warmup):
        for _, runner in runners.values():
            step(runner, [items[k % len(items)][1]], mean, std, canvas=False, paste=True)
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in runners}
    kept: dict[str, list[Any]] = {k: [] for k in runners}
    bar = Progress("[benchmark]", runs * len(items), "frames")
    for r in range(runs):
        for i, (_, frame) in enumerate(items):
            for label, (_, runner) in runners.items():
                got = step(runner, [frame], mean, std, canvas=False, frame=True, paste=True)
                samples[label].append({**got.ms, "rows": float(len(got.frame[0].rows))})
                if r == 0:
                    kept[label].append(got.frame[0])
            bar.update(r * len(items) + i + 1)
    bar.close()
    return samples, kept


def _result(label: str, row: Row, runner: Any, samples: list[dict[str, float]], kept: list[Any],
            items: list[tuple[Any, np.ndarray]], dataset: Any, limits: dict[str, float]) -> RowResult:
    from mrcnn_edge.export.validate.loop import STAGES

    stages = {s: Timing.of([x[s] for x in samples]) for s in STAGES}
    total = Timing.of([sum(x[s] for s in STAGES) for x in samples])
    path = str(getattr(runner, "path", ""))
    res = RowResult(label, row.backend, path, total, stages, 1000.0 / total.mean,
                    rows_per_frame=float(np.mean([x["rows"] for x in samples])))
    if dataset is not None:
        from mrcnn_edge.data.coco import evaluate_detections

        stats = evaluate_detections(dataset, [(image_id, rows) for (image_id, _), rows in zip(items, kept)])
        res.box_AP, res.mask_AP = stats["box_AP"], stats["mask_AP"]
    if path.endswith(".onnx") and limits:
        from mrcnn_edge.commands.floors import model_floor_ms

        # float ops run in what OpenVINO chose (others: fp32); the mean detections size a mask head on them
        res.floor_ms = model_floor_ms(path, runner.float_precision, res.rows_per_frame, limits)
        res.floor_share = None if res.floor_ms is None else res.floor_ms / stages["infer"].mean
    return res
