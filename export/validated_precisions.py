"""Which lower precisions a model may run in without being asked: measured, then written into the model.

A CPU engine's ``auto`` precision (``runtime.backends.openvino.choose_precision``) takes bf16 only
where the model's metadata says bf16 was validated for it: the ``validated_precisions`` key
(``contract.OPTIONAL_KEYS``). This module measures it and writes it. ``mrcnn-edge validate
--annotations`` calls :func:`check_cpu_precisions` after its own comparison: the portable model
runs through OpenVINO with its float parts in fp32 (``fp32``; ``int8`` for an INT8 model) and in
bf16 on the annotated images (validation's comparator loop, the runtime's canvas-to-frame step,
COCO mask AP), and bf16 is recorded when its mask AP is within
``contract.VALIDATED_PRECISION_BOUNDS["bf16"]`` of the fp32 float parts'; a record that a new
measurement no longer supports is removed. For an INT8 model the record's ``fp32_mask_AP`` is the
INT8 model's own with its float parts in fp32 (INT8's cost against the float model is
``validate``'s own comparison). ``mrcnn-edge benchmark`` makes the same decision from its own rows
(:func:`bf16_record`), so its "run's default" row is what ``run`` picks after ``validate``.

Only the metadata changes; the file is replaced atomically (``core.atomic``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mrcnn_edge.core.contract import VALIDATED_PRECISION_BOUNDS, validated_drop
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.progress import note

__all__ = ["bf16_record", "write_validated_precisions", "check_cpu_precisions", "check_annotated",
           "PrecisionCheck"]


def bf16_record(fp32_mask_ap: float, bf16_mask_ap: float, images: int, annotations: str,
                engine: str = "openvino") -> dict[str, Any]:
    """The ``validated_precisions["bf16"]`` entry of one measurement (whether it is within the
    bound is :func:`contract.validated_drop`'s to say, for the writer and the reader alike)."""
    return {"engine": engine, "mask_AP": round(float(bf16_mask_ap), 4), "fp32_mask_AP": round(float(fp32_mask_ap), 4),
            "images": int(images), "annotations": str(annotations), "date": time.strftime("%Y-%m-%d")}


def write_validated_precisions(model: str | Path, records: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """Set (a record) or remove (None) each precision's entry in ``model``'s ``validated_precisions``;
    the file is replaced atomically. Returns the new metadata."""
    import onnx

    from mrcnn_edge.core.atomic import atomic_output
    from mrcnn_edge.core.metadata import decode, set_onnx_metadata

    model = Path(model)
    proto = onnx.load(str(model))
    meta = decode({p.key: p.value for p in proto.metadata_props})
    validated = dict(meta.get("validated_precisions") or {})
    for precision, record in records.items():
        if record is None:
            validated.pop(precision, None)
        else:
            validated[precision] = record
    if validated:
        meta["validated_precisions"] = validated
    else:
        meta.pop("validated_precisions", None)
    set_onnx_metadata(proto, meta)
    with atomic_output(model) as tmp:
        onnx.save(proto, str(tmp))
    return meta


@dataclass
class PrecisionCheck:
    """One measurement: mask AP with the float parts in fp32 and in bf16 (of an INT8 model: its
    float parts, ``int8``), and whether bf16 is now recorded in the model."""

    fp32_mask_AP: float
    bf16_mask_AP: float
    images: int
    recorded: bool
    int8: bool = False

    @property
    def line(self) -> str:
        bound = VALIDATED_PRECISION_BOUNDS["bf16"]
        delta = self.bf16_mask_AP - self.fp32_mask_AP
        what, full = ("bf16 float parts of the INT8 model", "its float parts in fp32") if self.int8 else ("bf16", "fp32")
        if self.recorded:
            verdict = f"within {bound}: recorded in the model's metadata, 'run' picks bf16 on CPUs with BF16"
        elif not self.fp32_mask_AP > bound:
            verdict = (f"nothing to judge by ({full} itself is within {bound} of mask AP 0): not recorded, "
                       f"'run' stays with {full}")
        else:
            verdict = f"outside {bound}: not recorded, 'run' stays with {full}"
        return (f"OpenVINO {what} on {self.images} annotated images: mask AP {self.bf16_mask_AP:.4f} vs {full} "
                f"{self.fp32_mask_AP:.4f} ({delta:+.4f}), {verdict}")


def why_not_checked(model: str | Path, metadata: dict[str, Any]) -> str | None:
    """Why bf16 cannot be measured for ``model`` here (None: it can)."""
    import importlib.util

    if Path(model).suffix.lower() != ".onnx" or metadata.get("flavor") != "portable" \
            or metadata.get("precision", "fp32") not in ("fp32", "int8"):
        return "only a portable fp32 or INT8 ONNX model runs in OpenVINO's bf16"
    if importlib.util.find_spec("openvino") is None:
        return "OpenVINO is not installed (pip install 'mrcnn-edge[openvino]')"
    from mrcnn_edge.runtime.backends.openvino import cpu_has_bf16

    import openvino as ov

    if not cpu_has_bf16(ov.Core()):
        return "this CPU has no BF16 instructions"
    from mrcnn_edge.core.atomic import unwritable

    folder = Path(model).resolve().parent
    why = unwritable(folder)
    if why is not None:  # the record goes into the model file, replaced in its folder
        return (f"its record would go into {Path(model).name}, and {folder} cannot be written ({why}); "
                "validate a copy in a writable folder to record bf16")
    return None


def check_cpu_precisions(model: str | Path, items: Sequence[tuple[Any, np.ndarray]], dataset: Any,
                         annotations: str, log: Callable[[str], None] = note) -> PrecisionCheck | None:
    """Measure OpenVINO bf16 against the float parts in fp32 on ``items`` (``[(image_id, BGR frame)]``
    of ``dataset``) and write the result into ``model``: bf16 recorded within its bound, removed
    otherwise, and where the fp32 float parts' own mask AP is within the bound of 0 (nothing to judge by).
    None, with the reason logged, where bf16 cannot be measured here."""
    from mrcnn_edge.core.metadata import read_onnx_metadata
    from mrcnn_edge.data.coco import evaluate_detections
    from mrcnn_edge.runtime.backends.openvino import OpenVinoBackend, full_precision

    from mrcnn_edge.export.validate.loop import Pass, run_passes

    _, meta = read_onnx_metadata(model)
    why = why_not_checked(model, meta)
    if why is not None:
        log(f"[validate] bf16 not measured: {why}")
        return None
    frames = [frame for _, frame in items]
    full = full_precision(meta)  # the float parts in fp32
    ap: dict[str, float] = {}
    for precision in (full, "bf16"):
        log(f"[validate] OpenVINO {precision} on {len(frames)} annotated images")
        with OpenVinoBackend(model, precision=precision) as backend:
            got, _ = run_passes([Pass(precision, backend, frame=True)], frames, meta["mean"], meta["std"])
        rows = [(image_id, r) for (image_id, _), r in zip(items, got[precision].frame)]
        ap[precision] = evaluate_detections(dataset, rows)["mask_AP"]
    entry = bf16_record(ap[full], ap["bf16"], len(frames), annotations)
    within = validated_drop({"validated_precisions": {"bf16": entry}}, "bf16") is not None
    try:
        write_validated_precisions(model, {"bf16": entry if within else None})
    except (UserError, OSError) as exc:  # e.g. a full disk: the validation itself stands
        reason = str(exc) if isinstance(exc, UserError) else (exc.strerror or str(exc))
        log(f"[validate] bf16 measured (mask AP {entry['mask_AP']:.4f} vs {full} {entry['fp32_mask_AP']:.4f}) but "
            f"not recorded: {reason}")
        return None
    # the recorded (rounded) figures, so that the line and the model's own line later say the same
    return PrecisionCheck(entry["fp32_mask_AP"], entry["mask_AP"], len(frames), within, int8=full == "int8")


def check_annotated(model: str | Path, images: str | None, annotations: str, limit: int | None) -> PrecisionCheck | None:
    """:func:`check_cpu_precisions` on the annotated images a passed validation ran (``validate``'s
    ``images``/``annotations``/``limit``), its line noted: what ``validate --annotations`` and
    ``demo`` do after their comparison."""
    from mrcnn_edge.export.validate import collect_images

    items, dataset = collect_images(images, annotations, limit)
    checked = check_cpu_precisions(model, items, dataset, Path(annotations).name)
    if checked is not None:
        note(checked.line)
    return checked
