"""Checkpoints in, torchvision ``MaskRCNN`` out: architecture and dimensions read from the tensors.

Accepted files (always ``torch.load(weights_only=True)``):

* a torchvision state dict (``model.state_dict()``),
* a torchvision training-reference checkpoint ``{"model": state_dict, "optimizer": ..., ...}``,
* the project's own format ``{"model": state_dict, "config": ModelConfig.to_dict()}``.

Without a config, the architecture, class count, FPN width, head sizes and the backbone stages
feeding the FPN are all read from tensor names and shapes; anchors and input normalisation then
take torchvision's defaults for that architecture.

Each architecture is one row of ``core.config.ARCHS``; ``BACKBONES`` says, per family of rows, how
its trunk is built and recognised from the tensors, so that nothing here branches on a name.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torchvision.models import mobilenet_v3_large, resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from mrcnn_edge.core.config import ARCHS, Arch, ModelConfig
from mrcnn_edge.core.errors import UserError

__all__ = [
    "ARCHS",
    "BACKBONES",
    "ModelConfig",
    "build_model",
    "infer_config",
    "load_checkpoint",
    "save_checkpoint",
    "read_class_names",
]

# --------------------------------------------------------------------------- the backbone families


@dataclasses.dataclass(frozen=True)
class Backbone:
    """How one family of ``core.config.ARCHS`` rows is built and recognised (torch side).

    ``stages(arch)``: stage index -> output channels, the stages ``returned_layers`` may name;
    ``build(arch, cfg, norm)``: the trunk module and ``{trunk module name: stage index}`` of its stages;
    ``present(sd)``: whether the state dict holds this family's trunk; ``fits(sd, arch)``: whether it
    is this row's trunk; ``unrecognised(sd)``: the one-line reason when no row fits."""

    name: str
    stages: Callable[[Arch], dict[int, int]]
    build: Callable[[Arch, ModelConfig, Callable[..., nn.Module]], tuple[nn.Module, dict[int, str]]]
    present: Callable[[Mapping[str, torch.Tensor]], bool]
    fits: Callable[[Mapping[str, torch.Tensor], Arch], bool]
    unrecognised: Callable[[Mapping[str, torch.Tensor]], str]


def _resnet_stages(arch: Arch) -> dict[int, int]:
    base = 256 if arch.bottleneck else 64  # trunk.inplanes // 8, as torchvision's extractor computes it
    return {k: base * 2 ** (k - 1) for k in range(1, 5)}


def _resnet_build(arch: Arch, cfg: ModelConfig, norm: Callable[..., nn.Module]) -> tuple[nn.Module, dict[int, str]]:
    block = resnet.Bottleneck if arch.bottleneck else resnet.BasicBlock
    return resnet.ResNet(block, list(arch.blocks), norm_layer=norm), {k: f"layer{k}" for k in range(1, 5)}


def _resnet_blocks(sd: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    return tuple(_count(sd, f"backbone.body.layer{k}.") for k in range(1, 5))


def _resnet_fits(sd: Mapping[str, torch.Tensor], arch: Arch) -> bool:
    bottleneck = "backbone.body.layer1.0.conv3.weight" in sd
    return bottleneck == arch.bottleneck and _resnet_blocks(sd) == arch.blocks


def _resnet_unrecognised(sd: Mapping[str, torch.Tensor]) -> str:
    bottleneck = "backbone.body.layer1.0.conv3.weight" in sd
    return f"unrecognised ResNet backbone ({list(_resnet_blocks(sd))} blocks per stage, bottleneck={bottleneck})"


_MOBILENET_STAGE_CHANNELS = (16, 24, 40, 80, 160, 960)  # outputs of mobilenet_v3_large's stages


def _mobilenet_build(arch: Arch, cfg: ModelConfig,
                     norm: Callable[..., nn.Module]) -> tuple[nn.Module, dict[int, str]]:
    features = mobilenet_v3_large(weights=None, norm_layer=norm).features
    # stage ends as torchvision's mobilenet_backbone finds them: the first block, every block that
    # reduces resolution (_is_cn), the last block
    ends = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    return features, {k: str(i) for k, i in enumerate(ends)}


BACKBONES: dict[str, Backbone] = {
    "resnet": Backbone("ResNet", _resnet_stages, _resnet_build,
                       present=lambda sd: "backbone.body.layer1.0.conv1.weight" in sd,
                       fits=_resnet_fits, unrecognised=_resnet_unrecognised),
    "mobilenet": Backbone("MobileNetV3-Large", lambda arch: dict(enumerate(_MOBILENET_STAGE_CHANNELS)),
                          _mobilenet_build, present=lambda sd: "backbone.body.0.0.weight" in sd,
                          fits=lambda sd, arch: True,
                          unrecognised=lambda sd: "unrecognised MobileNetV3-Large backbone"),
}
"""Family (``Arch.family``) -> how its backbone is built and recognised."""


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")


def build_model(cfg: ModelConfig) -> MaskRCNN:
    """A randomly initialised torchvision ``MaskRCNN`` for ``cfg`` (eval mode)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    _check_arch(cfg.arch)
    arch = ARCHS[cfg.arch]
    family = BACKBONES[arch.family]
    returned = cfg.resolved_returned_layers()
    stages = family.stages(arch)
    if not set(returned) <= set(stages):
        raise UserError(f"returned_layers {returned} out of range {min(stages)}..{max(stages)} for {cfg.arch}")
    # v2 trains its BatchNorm; v1 checkpoints hold frozen statistics unless trained from scratch
    norm = nn.BatchNorm2d if (cfg.batch_norm or arch.v2) else FrozenBatchNorm2d
    trunk, stage_modules = family.build(arch, cfg, norm)
    backbone = BackboneWithFPN(
        trunk,
        {stage_modules[k]: str(v) for v, k in enumerate(returned)},
        [stages[k] for k in returned],
        cfg.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=nn.BatchNorm2d if arch.v2 else None,
    )
    anchors = AnchorGenerator(
        tuple(tuple(s) for s in cfg.default_anchor_sizes()),
        tuple(tuple(cfg.aspect_ratios) for _ in cfg.default_anchor_sizes()),
    )
    c = cfg.fpn_channels
    heads = _v2_heads(c, cfg, anchors) if arch.v2 else _v1_heads(c, cfg, anchors)
    return MaskRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, min_size=cfg.min_size,
                    max_size=cfg.max_size, image_mean=cfg.image_mean, image_std=cfg.image_std,
                    mask_predictor=MaskRCNNPredictor(cfg.mask_layers[-1], cfg.mask_dim_reduced, cfg.num_classes),
                    **heads).eval()


def _v1_heads(c: int, cfg: ModelConfig, anchors: AnchorGenerator) -> dict[str, nn.Module]:
    """torchvision's original heads: one-conv RPN head, two-layer MLP box head."""
    return {
        "rpn_head": RPNHead(c, anchors.num_anchors_per_location()[0]),
        "box_head": TwoMLPHead(c * 7 * 7, cfg.representation_size),
        "mask_head": MaskRCNNHeads(c, cfg.mask_layers, 1),
        "box_predictor": FastRCNNPredictor(cfg.representation_size, cfg.num_classes),
    }


def _v2_heads(c: int, cfg: ModelConfig, anchors: AnchorGenerator) -> dict[str, nn.Module]:
    """torchvision's v2 heads (maskrcnn_resnet50_fpn_v2): two-conv RPN head, conv box head, BatchNorm."""
    return {
        "rpn_head": RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2),
        "box_head": FastRCNNConvFCHead((c, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d),
        "mask_head": MaskRCNNHeads(c, cfg.mask_layers, 1, norm_layer=nn.BatchNorm2d),
        "box_predictor": FastRCNNPredictor(1024, cfg.num_classes),
    }


# --------------------------------------------------------------------------- recognising tensors


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    """Number of consecutive integer-indexed children under ``prefix`` (``prefix0.``, ``prefix1.`` ...)."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def _recognise(sd: Mapping[str, torch.Tensor]) -> str:
    """The ``ARCHS`` name whose trunk and heads these tensors are; one line when none is."""
    families = [f for f, b in BACKBONES.items() if b.present(sd)]
    if not families:
        kinds = " or ".join(b.name for b in BACKBONES.values())
        raise UserError(f"unrecognised backbone: expected a torchvision {kinds} FPN backbone")
    family = BACKBONES[families[0]]
    fitting = [name for name, a in ARCHS.items() if BACKBONES[a.family] is family and family.fits(sd, a)]
    if not fitting:
        raise UserError(family.unrecognised(sd))
    v2 = "roi_heads.box_head.0.0.weight" in sd  # the conv box head of the v2 recipe
    rows = [name for name in fitting if ARCHS[name].v2 == v2]
    if not rows:
        raise UserError(f"unrecognised checkpoint: a {'v2 (conv)' if v2 else 'v1 (MLP)'} box head on the backbone "
                        f"of {fitting[0]}, which has no such variant")
    return rows[0]


def infer_config(sd: Mapping[str, torch.Tensor], check_anchors: bool = True) -> ModelConfig:
    """Read architecture and dimensions of a Mask R-CNN from its state dict.

    Anchor sizes cannot be read from tensors; with ``check_anchors`` the RPN's anchor count must
    match torchvision's default anchors for the architecture.
    """
    if "roi_heads.mask_predictor.mask_fcn_logits.weight" not in sd:
        sample = ", ".join(list(sd)[:3])
        hint = " (a Faster R-CNN: it has no mask head)" if "roi_heads.box_predictor.cls_score.weight" in sd else ""
        raise UserError(
            f"not a Mask R-CNN checkpoint{hint}: no 'roi_heads.mask_predictor' weights (first keys: {sample})"
        )
    num_classes = int(sd["roi_heads.box_predictor.cls_score.weight"].shape[0])
    fpn_channels = int(sd["backbone.fpn.layer_blocks.0.0.weight"].shape[0])
    in_channels = [int(sd[f"backbone.fpn.inner_blocks.{i}.0.weight"].shape[1]) for i in range(_count(sd, "backbone.fpn.inner_blocks."))]
    mask_layers = [int(sd[f"roi_heads.mask_head.{i}.0.weight"].shape[0]) for i in range(_count(sd, "roi_heads.mask_head."))]
    if not mask_layers:  # checkpoints written before torchvision 0.13 name the convs mask_fcn1..4
        mask_layers = [int(sd[f"roi_heads.mask_head.mask_fcn{i}.weight"].shape[0]) for i in range(1, 5) if f"roi_heads.mask_head.mask_fcn{i}.weight" in sd]
    batch_norm = any(k.endswith("num_batches_tracked") and k.startswith("backbone.body.") for k in sd)
    arch = _recognise(sd)
    stages = BACKBONES[ARCHS[arch].family].stages(ARCHS[arch])
    returned = [k for c in in_channels for k, ch in stages.items() if ch == c]
    if len(returned) != len(in_channels):
        raise UserError(f"unrecognised FPN inputs {in_channels} for {arch}")
    cfg = ModelConfig(arch=arch, num_classes=num_classes, fpn_channels=fpn_channels, mask_layers=mask_layers, batch_norm=batch_norm)
    if returned != cfg.resolved_returned_layers():
        cfg.returned_layers = returned
    cfg.mask_dim_reduced = int(sd["roi_heads.mask_predictor.conv5_mask.weight"].shape[1])
    if "roi_heads.box_head.fc6.weight" in sd:
        cfg.representation_size = int(sd["roi_heads.box_head.fc6.weight"].shape[0])
    n_anchor = int(sd["rpn.head.cls_logits.weight"].shape[0])
    if check_anchors and n_anchor != len(cfg.default_anchor_sizes()[0]) * len(cfg.aspect_ratios):
        raise UserError(f"the RPN predicts {n_anchor} anchors per location; pass the project config with its anchors")
    return cfg


# --------------------------------------------------------------------------- loading


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name a line; a leading ``__background__`` is added when missing."""
    p = Path(path)
    try:
        names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise UserError(f"cannot read class names from {p}: {exc.strerror}") from exc
    if names and names[0] != "__background__":
        names = ["__background__", *names]
    return names


def _coco_names() -> list[str]:
    from torchvision.models._meta import _COCO_CATEGORIES

    return ["__background__" if n == "__background__" else n for n in _COCO_CATEGORIES]


def _read_file(path: Path) -> Any:
    if not path.exists():
        raise UserError(f"checkpoint {path} not found")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):  # weights_only met a class: a pickled object, not tensors
            raise UserError(
                f"{path} holds a pickled Python object (a whole model?), not weights; mrcnn-edge loads with "
                "weights_only=True because unpickling runs arbitrary code: re-save it with "
                "torch.save(model.state_dict(), path)"
            ) from exc
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a PyTorch file") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch file ({first})") from exc


def load_checkpoint(
    path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | str | os.PathLike | None = None,
) -> tuple[MaskRCNN, ModelConfig]:
    """Load a Mask R-CNN checkpoint into a torchvision ``MaskRCNN`` in eval mode.

    ``arch`` and ``num_classes``, when given, must agree with the tensors; ``class_names`` is a
    list or a text file with one name a line. Returns ``(model, config)``.
    """
    path = Path(path)
    obj = _read_file(path)
    if isinstance(obj, nn.Module):  # pragma: no cover - weights_only refuses modules already
        raise UserError(f"{path} holds a whole model object; save its state_dict() instead")
    stored_cfg = None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
        if isinstance(obj.get("config"), Mapping):
            stored_cfg = ModelConfig.from_dict(obj["config"])
    elif isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    elif isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise UserError(f"{path} is not a state dict or a {{'model': state_dict}} checkpoint")
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path} has no tensors: not a model checkpoint")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # DataParallel / DDP prefixes

    inferred = infer_config(sd, check_anchors=stored_cfg is None)
    cfg = stored_cfg or inferred
    if arch is not None:
        _check_arch(arch)
        if arch != inferred.arch:
            raise UserError(f"--arch {arch} contradicts the checkpoint, whose tensors are those of {inferred.arch}")
    if num_classes is not None and num_classes != inferred.num_classes:
        raise UserError(
            f"num_classes={num_classes} contradicts the checkpoint: its box predictor has {inferred.num_classes} "
            "classes (background included)"
        )
    if class_names is not None:
        names = read_class_names(class_names) if isinstance(class_names, (str, os.PathLike)) else list(class_names)
        if names and names[0] != "__background__":
            names = ["__background__", *names]
        cfg.class_names = names
    if cfg.class_names is None and cfg.num_classes == 91:
        cfg.class_names = _coco_names()
    if cfg.class_names is None:
        cfg.class_names = ["__background__", *[f"class_{i}" for i in range(1, cfg.num_classes)]]
    if len(cfg.class_names) != cfg.num_classes:
        raise UserError(
            f"{len(cfg.class_names)} class names (background included) for a model of {cfg.num_classes} classes"
        )

    model = build_model(cfg)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # fp16-stored weights
    result = model.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise UserError(f"checkpoint {path} does not fit {cfg.arch}: {'; '.join(parts)}")
    return model.eval(), cfg


def save_checkpoint(
    model: MaskRCNN, cfg: ModelConfig, path: str | os.PathLike, half: bool = False, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write the project format ``{"model", "config", ...}`` atomically; ``half`` stores weights in float16."""
    from mrcnn_edge.core.atomic import atomic_output

    sd = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"model": sd, "config": cfg.to_dict(), "format": "mrcnn-edge/1"}
    if extra:
        payload.update(extra)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
