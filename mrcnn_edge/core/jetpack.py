"""The JetPack lines mrcnn-edge installs on, in one table (standard library only).

Each line is one pip extra and one constraints file (``constraints/<extra>.txt`` in the repository)
that pin cuda-python to the line's CUDA *minor*: on a Jetson the CUDA driver belongs to the L4T
release, and a cuda-python whose CUDA runtime is newer than that driver's minor fails at its first
call with ``cudaErrorInsufficientDriver`` (35) (cuda-python 12.9 on JetPack 6's 12.6 driver, as users
report). NVIDIA's ``cuda-compat-<major>-<minor>`` forward-compatibility package, which supports Jetson
boards, is the other way out; the pins need nothing extra. numpy stays below 2 because JetPack's
OpenCV is built against numpy 1.x and does not import under numpy 2.

The table feeds ``pyproject.toml``'s tests (each extra pins what its row says, and resolves to
aarch64 wheels for the row's Python), ``mrcnn-edge doctor`` (which line a device runs) and the
runtime's version messages (which pin to install).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["JetPackLine", "JETPACK_LINES", "parse_l4t_release", "line_for"]


@dataclass(frozen=True)
class JetPackLine:
    """One JetPack line. ``cuda``: the CUDA (driver and toolkit) it ships, ``(12, 6)``."""

    releases: str                 # "6.1 / 6.2"
    l4t: tuple[int, int] | None   # oldest L4T (Jetson Linux) release of the line, (36, 4); None: not known here
    cuda: tuple[int, int]
    tensorrt: str                 # "10.3"
    python: str                   # the Ubuntu's python3, which JetPack's bindings are built for
    glibc: tuple[int, int]        # the Ubuntu's glibc: the newest manylinux tag its wheels may carry
    devices: str
    extra: str                    # pip extra, also the constraints file's stem

    @property
    def cuda_text(self) -> str:
        return f"{self.cuda[0]}.{self.cuda[1]}"

    @property
    def constraints(self) -> str:
        """The constraints file, relative to the repository root."""
        return f"constraints/{self.extra}.txt"

    @property
    def cuda_python_pin(self) -> str:
        return f"cuda-python=={self.cuda_text}.*"


# Newest last. JetPack 6.0 (L4T R36.3, TensorRT 8.6) and older are not here: the plugin needs TensorRT >= 10.3.
JETPACK_LINES: tuple[JetPackLine, ...] = (
    JetPackLine("6.1 / 6.2", (36, 4), (12, 6), "10.3", "3.10", (2, 35), "Orin", "jetpack6"),
    JetPackLine("7.0 / 7.1", (38, 2), (13, 0), "10.13", "3.12", (2, 39), "Thor", "jetpack7"),
    JetPackLine("7.2", None, (13, 2), "10.16", "3.12", (2, 39), "Orin, Thor", "jetpack72"),
)


def parse_l4t_release(text: str) -> tuple[int, int, int] | None:
    """``/etc/nv_tegra_release``'s first line, ``# R36 (release), REVISION: 4.3, ...`` -> ``(36, 4, 3)``."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def line_for(driver_cuda: tuple[int, int] | None, l4t: tuple[int, ...] | None = None) -> JetPackLine | None:
    """The line a Jetson runs: by the driver's CUDA version when known (the newest line whose CUDA the
    driver runs, same major: a ``cuda-compat`` driver newer than its line still finds it), else by the
    L4T release. None for a release older than every line."""
    if driver_cuda is not None:
        fits = [ln for ln in JETPACK_LINES if ln.cuda[0] == driver_cuda[0] and ln.cuda <= tuple(driver_cuda)]
        return fits[-1] if fits else None
    if l4t is not None:
        fits = [ln for ln in JETPACK_LINES if ln.l4t is not None and ln.l4t <= tuple(l4t[:2])]
        return fits[-1] if fits else None
    return None
