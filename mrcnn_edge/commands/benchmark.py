"""Side-by-side latency (and, on a validation split, mask AP) of runners: a comparator over runners.

A row is ``(label, backend, model, options)``: any runner of the table
:data:`mrcnn_edge.export.validate.runners.RUNNERS`: torchvision eager or ``EdgeMaskRCNN`` eager on
the checkpoint, or any backend of the runtime's table (ONNX Runtime, TensorRT, OpenVINO, ...) on a
model file. Every row runs validation's comparator loop (:mod:`mrcnn_edge.export.validate.loop`) on
the same frame, one run of each row in turn (interleaved) so that machine drift hits all alike,
timed in the pipeline's stages:

* ``pre``: the runtime's reference letterbox (frame to the runner's input);
* ``infer``: ``runner.infer`` and nothing else (the TensorRT row included);
* ``post``: the runtime's canvas-to-frame step (``rows_to_frame``) and the masks pasted at frame size.

torchvision's row starts after its ``transform`` (the same letterboxed tensor as every other row)
and pastes its masks with the runtime's paste, so its numbers compare with the others stage by stage.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import Progress, note

__all__ = ["Row", "Timing", "RowResult", "parse_row", "default_rows", "run_benchmark", "time_rows", "format_table",
           "ROW_HELP"]

ROW_HELP = (
    "a row to time: [LABEL=]BACKEND[:MODEL][:KEY=VALUE,...]; BACKEND is torchvision or edge (MODEL: a "
    "checkpoint, default the benchmark's) or a runtime backend ({backends}; MODEL: its model file, default for "
    "ONNX backends the portable ONNX of the benchmark's checkpoint); KEY=VALUE options go to the backend, e.g. "
    "'ov-bf16=openvino:model.onnx:precision=bf16', 'onnxruntime::threads=1', 'tensorrt:model.engine'. Repeatable"
)


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
    median: float
    p90: float
    min: float

    @classmethod
    def of(cls, ms: list[float]) -> "Timing":
        a = np.asarray(ms)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), float(a.min()))


@dataclass
class RowResult:
    """A row's timings in milliseconds (``stages_ms``: pre, infer, post) and, with annotations, its AP."""

    label: str
    backend: str
    model: str
    total_ms: Timing
    stages_ms: dict[str, Timing]
    fps: float
    mask_AP: float | None = None
    box_AP: float | None = None


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


def default_rows(onnx_ok: bool, engine: str | None) -> list[Row]:
    """torchvision, edge, then every runtime backend that runs ONNX (on the portable export) and,
    given ``--engine``, TensorRT. Rows of backends not installed are skipped when they open."""
    from mrcnn_edge.export.validate.runners import RUNNERS

    rows = [Row(e.label, e.name) for e in RUNNERS.values() if e.takes == "checkpoint"]
    if onnx_ok:  # ONNX Runtime is the one every install has: the others are skipped where missing
        rows += [Row(e.label, e.name, implicit=e.name != "onnxruntime")
                 for e in RUNNERS.values() if e.takes == "model" and ".onnx" in e.suffixes]
    if engine:
        rows.append(Row("tensorrt", "tensorrt", engine))
    return rows


def time_rows(rows: dict[str, Callable[[], dict[str, float]]], runs: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Each row is a callable returning its stage times in ms; called ``warmup + runs`` times, interleaved."""
    for _ in range(warmup):
        for fn in rows.values():
            fn()
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in rows}
    bar = Progress("[benchmark]", runs, "runs")
    for r in range(runs):
        for name, fn in rows.items():
            for stage, ms in fn().items():
                samples[name].setdefault(stage, []).append(ms)
        bar.update(r + 1)
    bar.close()
    return samples


def format_table(results: list[RowResult], baseline: str = "torchvision") -> str:
    base = next((r.total_ms.median for r in results if r.label == baseline), None)
    with_ap = any(r.mask_AP is not None for r in results)
    lines = ["| backend | median ms | p90 ms | min ms | FPS | pre ms | infer ms | post ms | speed-up vs torchvision |"
             + (" box AP | mask AP |" if with_ap else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if with_ap else "")]
    for r in results:
        t, s = r.total_ms, r.stages_ms
        sp = f"{base / t.median:.2f}x" if base else "-"
        ap = f" {r.box_AP:.4f} | {r.mask_AP:.4f} |" if with_ap and r.mask_AP is not None else (" - | - |" if with_ap else "")
        lines.append(f"| {r.label} | {t.median:.1f} | {t.p90:.1f} | {t.min:.1f} | {r.fps:.2f} | {s['pre'].median:.1f} | "
                     f"{s['infer'].median:.1f} | {s['post'].median:.1f} | {sp} |" + ap)
    return "\n".join(lines) + "\n"


def _rows_from_args(args: Any) -> list[Row]:
    if args.row:
        if args.backends:
            raise UserError("give either --row or --backends, not both")
        return [parse_row(r) for r in args.row]
    if args.backends is None:
        return default_rows(True, args.engine)
    wanted = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(wanted) - {"torchvision", "edge", "onnx", "tensorrt"}
    if unknown:
        raise UserError(f"unknown backends {sorted(unknown)}; choose from torchvision, edge, onnx, tensorrt")
    rows = [r for r in default_rows("onnx" in wanted, args.engine if "tensorrt" in wanted else None)
            if r.label in wanted]
    return rows


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


def _timed(runner: Any, frame: np.ndarray, mean: Any, std: Any) -> Callable[[], dict[str, float]]:
    """One timed step of the comparator loop: the frame in, its detections in frame pixels with
    their masks pasted (what a user of the runtime gets) out."""
    from mrcnn_edge.export.validate.loop import step

    return lambda: step(runner, [frame], mean, std, canvas=False, paste=True).ms


def _row_ap(runner: Any, items: list, dataset: Any, mean: Any, std: Any) -> tuple[float, float]:
    """Box and mask AP of one runner on the validation split, frames as the runtime makes them."""
    from mrcnn_edge.data.coco import evaluate_detections
    from mrcnn_edge.export.validate.loop import Pass, run_passes

    results, _ = run_passes([Pass("ap", runner, frame=True)], [frame for _, frame in items], mean, std)
    stats = evaluate_detections(dataset, [(image_id, rows) for (image_id, _), rows in zip(items, results["ap"].frame)])
    return stats["box_AP"], stats["mask_AP"]


def run_benchmark(args: Any) -> int:
    import contextlib

    import torch

    from mrcnn_edge import demo_checkpoint
    from mrcnn_edge.core.cliutil import parse_canvas
    from mrcnn_edge.core.atomic import atomic_output, check_writable
    from mrcnn_edge.data.shapes import image_rng, render_sample
    from mrcnn_edge.model.checkpoint import load_checkpoint

    H, W = parse_canvas(args.input_size)
    rows = _rows_from_args(args)
    if len({r.label for r in rows}) != len(rows):
        raise UserError(f"two rows have the same label: {', '.join(r.label for r in rows)}; name them LABEL=...")
    for out in (args.json, args.markdown):
        if out:
            check_writable(out)
    items, dataset = [], None
    if args.annotations:
        from mrcnn_edge.export.validate import collect_images

        items, dataset = collect_images(None, args.annotations, args.ap_images)
    ckpt = Path(args.model) if args.model else demo_checkpoint()
    model, cfg = load_checkpoint(ckpt)
    _settings(model, args)
    frame = render_sample(image_rng(2024, 0), (H, W))[0]  # a canvas-sized frame: every row sees H x W pixels
    bench = _Bench(args, model, cfg, (H, W))
    results: list[RowResult] = []
    with contextlib.ExitStack() as stack:
        stack.callback(bench.close)
        runners: dict[str, tuple[Row, Any]] = {}
        for row in rows:
            try:
                runners[row.label] = (row, stack.enter_context(bench.open(row)))
            except UserError as exc:
                if not row.implicit:
                    raise
                note(f"[benchmark] skipping {row.label}: {exc}")
        note(f"[benchmark] {', '.join(runners)}; canvas {H}x{W}; {args.runs} runs after {args.warmup} warm-up; "
             f"torch threads {torch.get_num_threads()}")
        samples = time_rows({k: _timed(r, frame, cfg.image_mean, cfg.image_std) for k, (_, r) in runners.items()},
                            args.runs, args.warmup)
        for label, (row, runner) in runners.items():
            stages = {s: Timing.of(v) for s, v in samples[label].items()}
            total = Timing.of([sum(x) for x in zip(*samples[label].values())])
            res = RowResult(label, row.backend, str(getattr(runner, "path", "")), total, stages, 1000.0 / total.median)
            if dataset is not None:
                note(f"[benchmark] AP of {label} on {len(items)} images")
                res.box_AP, res.mask_AP = _row_ap(runner, items, dataset, cfg.image_mean, cfg.image_std)
            results.append(res)
    table = format_table(results)
    print(table)
    from mrcnn_edge.export.validate.compare import as_json

    meta = {"checkpoint": str(ckpt), "canvas": [H, W], "runs": args.runs, "warmup": args.warmup,
            "torch_threads": torch.get_num_threads(), "rpn_post_nms_top_n": args.rpn_post_nms_top_n or 1000,
            "max_detections": args.max_detections or 100, "date": time.strftime("%Y-%m-%d"),
            "rows": [as_json(r) for r in rows], "results": {r.label: as_json(r) for r in results}}
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
    if args.markdown:
        with atomic_output(args.markdown) as tmp:
            tmp.write_text(table)
    return 0

