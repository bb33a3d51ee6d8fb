"""Files shipped inside the package: the demo model."""
from __future__ import annotations

from pathlib import Path

from mrcnn_edge.core.errors import UserError

__all__ = ["demo_checkpoint", "ASSETS_DIR"]

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"


def demo_checkpoint() -> Path:
    """Path of the shipped demo checkpoint: a small Mask R-CNN trained on synthetic shapes."""
    path = ASSETS_DIR / "demo_maskrcnn.pth"
    if not path.is_file():
        raise UserError(f"the demo checkpoint is missing from this install ({path}); reinstall mrcnn-edge")
    return path
