"""Sources of the MultilevelRoIAlign TensorRT plugin (C++/CUDA), shipped for ``mrcnn-edge build-plugin``."""
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
