"""A torchvision Mask R-CNN -> ``EdgeMaskRCNN`` -> ``torch.export`` -> ONNX (dynamo exporter), with
metadata and checks.

The variants are the contract's tables (``FLAVORS``: how the custom ops become ONNX, see
``translations``; ``PRECISIONS``; ``MASK_HEADS``); the checks a file passes before it is written are
``checks.check_model``'s.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mrcnn_edge.core.contract import (
    DEFAULT_MASK_HEAD, FLAVORS, INPUT_NAME, MASK_HEADS, OUTPUT_NAMES, PLUGIN_DOMAIN, PRECISIONS, canvas_problem, plugin_identity,
)
from mrcnn_edge.core.errors import UserError

__all__ = ["ExportOptions", "export_onnx", "build_edge", "metadata_for"]


@dataclass
class ExportOptions:
    input_size: tuple[int, int] = (512, 512)
    batch: int = 1
    flavor: str = "tensorrt"
    precision: str = "fp32"
    max_detections: int | None = None
    score_threshold: float | None = None
    rpn_pre_nms_top_n: int | None = None
    rpn_post_nms_top_n: int | None = None
    opset: int = 18
    normalize_in_graph: bool = False   # 0-255 RGB input, mean/std folded into the graph (DeepStream)
    mask_head: str | None = None       # None: the flavor's default (contract.DEFAULT_MASK_HEAD)
    extra_metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def chosen_mask_head(self) -> str:
        """``mask_head`` as given, else the flavor's default: static for ``tensorrt``, the real
        detections for ``portable``."""
        return self.mask_head or DEFAULT_MASK_HEAD.get(self.flavor, "static")

    def validate(self) -> None:
        h, w = self.input_size
        why = canvas_problem(h, w)
        if why:
            raise UserError(f"input size {h}x{w}: {why} (e.g. 512x512)")
        if self.batch < 1:
            raise UserError(f"batch {self.batch}: must be >= 1")
        if self.flavor not in FLAVORS:
            raise UserError(f"unknown flavor {self.flavor!r}; choose one of: {', '.join(FLAVORS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.chosen_mask_head not in MASK_HEADS:
            raise UserError(f"unknown mask head {self.mask_head!r}; choose one of: {', '.join(MASK_HEADS)}")
        if self.chosen_mask_head != "static" and self.flavor != "portable":
            raise UserError(f"--mask-head {self.chosen_mask_head} makes a data-dependent shape that TensorRT engines do not "
                            "take: use it with --flavor portable (CPU engines), or keep --mask-head static")
        if self.max_detections is not None and self.max_detections < 1:
            raise UserError("--max-detections must be >= 1")
        if self.score_threshold is not None and not (0.0 <= self.score_threshold < 1.0):
            raise UserError("--score-threshold must be in [0, 1)")
        for name in ("rpn_pre_nms_top_n", "rpn_post_nms_top_n"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")


def build_edge(model, cfg, opts: ExportOptions):
    """The ``EdgeMaskRCNN`` for these options (ValueError from the graph becomes a UserError)."""
    from mrcnn_edge.model.edge import EdgeMaskRCNN

    try:
        return EdgeMaskRCNN(
            model, opts.input_size, opts.batch, rpn_pre_nms_top_n=opts.rpn_pre_nms_top_n,
            rpn_post_nms_top_n=opts.rpn_post_nms_top_n, score_threshold=opts.score_threshold,
            max_detections=opts.max_detections, precision=opts.precision,
            normalize_in_graph=opts.normalize_in_graph, mask_head=opts.chosen_mask_head,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def metadata_for(edge, cfg, opts: ExportOptions) -> dict[str, Any]:
    from mrcnn_edge import __version__

    return {
        "mrcnn_edge_version": __version__,
        "arch": cfg.arch,
        "num_classes": cfg.num_classes,
        "class_names": cfg.class_names,
        "input_size": [edge.H, edge.W],
        "batch": edge.B,
        "mean": list(cfg.image_mean),
        "std": list(cfg.image_std),
        "channel_order": "RGB",
        "max_detections": edge.max_detections,
        "score_threshold": edge.score_threshold,
        "mask_size": edge.mask_size,
        "flavor": opts.flavor,
        "precision": opts.precision,
        "plugin": plugin_identity() if opts.flavor == "tensorrt" else None,
        "opset": opts.opset,
        # optional keys (contract.OPTIONAL_KEYS): written only where they differ from the default
        **({"input_normalization": "in_graph"} if opts.normalize_in_graph else {}),
        **({"mask_head": opts.chosen_mask_head} if opts.chosen_mask_head != "static" else {}),
        **opts.extra_metadata,
    }


def export_onnx(
    model: Any,
    cfg: Any,
    out: str | os.PathLike,
    opts: ExportOptions,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Export ``model`` (a torchvision ``MaskRCNN``, e.g. from ``model.checkpoint.load_checkpoint``)
    described by ``cfg`` (its ``ModelConfig``) to ``out``.

    The file appears at ``out`` only when every check passed. Returns a report: ``path``,
    ``seconds``, ``metadata``, ``bytes`` and ``check_model``'s ``nodes`` and ``outputs``."""
    import onnx
    import torch

    from mrcnn_edge.core.atomic import atomic_output, check_writable
    from mrcnn_edge.core.metadata import set_onnx_metadata

    from mrcnn_edge.export.checks import check_model, register_schema
    from mrcnn_edge.export.translations import translation_table

    opts.validate()
    out = check_writable(out)
    t0 = time.time()
    edge = build_edge(model, cfg, opts)
    x = torch.zeros(opts.batch, 3, *opts.input_size)
    log(f"[export] torch.export of the {opts.input_size[0]}x{opts.input_size[1]} batch-{opts.batch} graph ({opts.precision})")
    with torch.no_grad():
        exported = torch.export.export(edge, (x,), strict=False)
    register_schema()
    log(f"[export] ONNX translation ({opts.flavor} flavor, opset {opts.opset})")
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        program = torch.onnx.export(
            exported, (x,), None, dynamo=True, custom_translation_table=translation_table(opts.flavor),
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=opts.opset, optimize=True, verify=False,
        )
        proto = program.model_proto  # serialising warns about the plugin node's untyped output
    meta = metadata_for(edge, cfg, opts)
    set_onnx_metadata(proto, meta)
    if opts.flavor == "tensorrt" and not any(o.domain == PLUGIN_DOMAIN for o in proto.opset_import):
        proto.opset_import.add(domain=PLUGIN_DOMAIN, version=1)
    log("[export] checking: onnx.checker, shape inference, I/O contract, TensorRT compatibility")
    report = check_model(proto, meta)
    with atomic_output(out) as tmp:
        onnx.save(proto, str(tmp))
    report.update({"path": str(out), "seconds": round(time.time() - t0, 1), "metadata": meta,
                   "bytes": Path(out).stat().st_size})
    log(f"[export] wrote {out} ({report['bytes'] / 1e6:.1f} MB, {report['nodes']} nodes) in {report['seconds']} s")
    return report
