"""What a Mask R-CNN is made of, without torch: architectures, the model config, training presets.

A :class:`ModelConfig` travels inside mrcnn-edge checkpoints and is read back from plain
torchvision state dicts (``mrcnn_edge.model.checkpoint.infer_config``); the command line lists the
architectures and presets from here without importing torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

from mrcnn_edge.core.errors import UserError

__all__ = ["Arch", "ARCHS", "ModelConfig", "PRESETS", "preset_config"]


@dataclasses.dataclass(frozen=True)
class Arch:
    """One row of the architecture table: what torchvision builds under a name, and the defaults a
    checkpoint without a config gets for it. A new architecture is one row of ``ARCHS``.

    ``family`` names the backbone builder and recogniser (``mrcnn_edge.model.checkpoint.BACKBONES``:
    "resnet" or "mobilenet"); ``blocks`` and ``bottleneck`` are a ResNet's blocks per stage and block
    kind; ``v2`` is torchvision's v2 recipe (BatchNorm in the FPN and the heads, a conv box head, a
    two-conv RPN head); ``returned_layers`` are the backbone stages that feed the FPN by default;
    ``anchor_sizes`` are the anchor sizes on every map, or ``()`` for torchvision's FPN default of one
    size per map (32, 64, 128, ...).
    """

    family: str
    returned_layers: tuple[int, ...]
    blocks: tuple[int, ...] = ()
    bottleneck: bool = False
    v2: bool = False
    anchor_sizes: tuple[int, ...] = ()


ARCHS: dict[str, Arch] = {
    "resnet18_fpn": Arch("resnet", (1, 2, 3, 4), blocks=(2, 2, 2, 2)),
    "resnet34_fpn": Arch("resnet", (1, 2, 3, 4), blocks=(3, 4, 6, 3)),
    "resnet50_fpn": Arch("resnet", (1, 2, 3, 4), blocks=(3, 4, 6, 3), bottleneck=True),
    "resnet101_fpn": Arch("resnet", (1, 2, 3, 4), blocks=(3, 4, 23, 3), bottleneck=True),
    "resnet50_fpn_v2": Arch("resnet", (1, 2, 3, 4), blocks=(3, 4, 6, 3), bottleneck=True, v2=True),
    "mobilenet_v3_large_fpn": Arch("mobilenet", (4, 5), anchor_sizes=(32, 64, 128, 256, 512)),
}


@dataclasses.dataclass
class ModelConfig:
    """Everything needed to rebuild the network and to describe it in exported artefacts."""

    arch: str
    num_classes: int
    class_names: list[str] | None = None
    fpn_channels: int = 256
    returned_layers: list[int] | None = None  # backbone stages feeding the FPN (torchvision's default when None)
    representation_size: int = 1024  # box head width (TwoMLPHead); v2 uses its conv head
    mask_layers: list[int] = dataclasses.field(default_factory=lambda: [256, 256, 256, 256])
    mask_dim_reduced: int = 256  # channels of the mask predictor's transposed conv
    anchor_sizes: list[list[int]] | None = None  # per feature map; torchvision's default when None
    aspect_ratios: list[float] = dataclasses.field(default_factory=lambda: [0.5, 1.0, 2.0])
    min_size: int = 800
    max_size: int = 1333
    image_mean: list[float] = dataclasses.field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = dataclasses.field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_norm: bool = False  # trainable BatchNorm in the backbone (training from scratch) vs frozen

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"checkpoint config has unknown fields {unknown}; was it written by a newer mrcnn-edge?")
        return cls(**dict(d))

    @property
    def architecture(self) -> Arch:
        """This config's row of ``ARCHS``."""
        return ARCHS[self.arch]

    def default_anchor_sizes(self) -> list[list[int]]:
        if self.anchor_sizes is not None:
            return [list(s) for s in self.anchor_sizes]
        n_maps = len(self.resolved_returned_layers()) + 1  # + the max-pool level
        every_map = self.architecture.anchor_sizes
        return [list(every_map) for _ in range(n_maps)] if every_map else [[32 * 2**i] for i in range(n_maps)]

    def resolved_returned_layers(self) -> list[int]:
        if self.returned_layers is not None:
            return list(self.returned_layers)
        return list(self.architecture.returned_layers)


def _demo(num_classes: int) -> ModelConfig:
    # Stages 2..4 of MobileNetV3 (strides 8, 16, 32) feed a 128-wide FPN: small shapes need the
    # stride-8 map that torchvision's own MobileNet FPN (strides 32, 32) does not have.
    return ModelConfig(
        arch="mobilenet_v3_large_fpn",
        num_classes=num_classes,
        fpn_channels=128,
        returned_layers=[2, 3, 4],
        representation_size=512,
        mask_layers=[128, 128, 128, 128],
        mask_dim_reduced=128,
        anchor_sizes=[[16, 24], [32, 48], [64, 96], [128, 192]],
        min_size=320,
        max_size=544,
        batch_norm=True,
    )


def _standard(arch: str) -> Callable[[int], ModelConfig]:
    return lambda n: ModelConfig(arch=arch, num_classes=n, batch_norm=True)


# preset -> config factory (num_classes -> ModelConfig). "demo" is the shipped model's recipe.
PRESETS: dict[str, Callable[[int], ModelConfig]] = {
    "demo": _demo,
    "mobilenet_v3_large_fpn": _standard("mobilenet_v3_large_fpn"),
    "resnet18_fpn": _standard("resnet18_fpn"),
    "resnet34_fpn": _standard("resnet34_fpn"),
    "resnet50_fpn": _standard("resnet50_fpn"),
    "resnet50_fpn_v2": _standard("resnet50_fpn_v2"),
    "resnet101_fpn": _standard("resnet101_fpn"),
}


def preset_config(preset: str, class_names: Sequence[str]) -> ModelConfig:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    cfg = PRESETS[preset](len(class_names))
    cfg.class_names = list(class_names)
    return cfg
