"""Compile the runtime's CUDA kernels with NVRTC and cache the result on disk per GPU architecture.

Kernels live in ``runtime/gpu/kernels/*.cu`` (with shared ``*.cuh`` headers that also build for the
host). A compiled image is cached as ``<cache>/kernels/<arch>/<kernel>-<key>.<cubin|ptx>``, where
the key hashes the sources, the NVRTC options and the NVRTC version: editing a header or upgrading
CUDA recompiles, nothing else does. ``sm_XY`` gives a CUBIN for exactly that GPU; ``compute_XY``
gives PTX that the driver JIT-compiles for newer GPUs. No GPU is needed to compile.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mrcnn_edge.core.atomic import atomic_output
from mrcnn_edge.core.errors import UserError

from mrcnn_edge.runtime.gpu.cuda_util import check, cuda_modules

__all__ = [
    "KERNEL_DIR",
    "KERNELS",
    "NVRTC_OPTIONS",
    "CompiledKernel",
    "cache_dir",
    "compile_kernel",
    "pick_arch",
    "supported_archs",
]

KERNEL_DIR = Path(__file__).with_name("kernels")
# kernel file stem -> entry points it defines (extern "C", looked up by name after loading)
KERNELS: dict[str, tuple[str, ...]] = {
    "preprocess": ("letterbox_f32", "letterbox_f16"),
    "postprocess": ("paste_mask_u8", "instance_map", "instance_map_f16", "render_instances",
                    "render_instances_f16", "overlay"),
}
# No fast math and no FMA contraction: the device rounds like the host build and the reference.
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17", "--fmad=false", "-default-device")


@dataclass(frozen=True)
class CompiledKernel:
    name: str        # kernel file stem
    arch: str        # "sm_87" (cubin) or "compute_87" (ptx)
    image: bytes     # what cuModuleLoadData takes (PTX is NUL-terminated)
    path: Path       # the cache file
    from_cache: bool


def cache_dir() -> Path:
    """``$MRCNN_EDGE_CACHE``, else ``~/.cache/mrcnn-edge``: the project's one cache root (the plugin
    library and TensorRT timing cache live there too)."""
    from mrcnn_edge.core.paths import cache_root

    return cache_root()


def _nvrtc_version() -> tuple[int, int]:
    _, _, nvrtc = cuda_modules()
    try:
        return tuple(check(nvrtc.nvrtcVersion(), "nvrtcVersion"))  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - a missing library raises the loader's own error type
        from mrcnn_edge.runtime.gpu.cuda_util import bindings_version, is_tegra, nvrtc_fix

        version = bindings_version() or ""
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 12
        raise UserError(
            f"NVRTC {major} (the CUDA runtime compiler that cuda-python {version or major} loads) is "
            f"unavailable: {exc}; {nvrtc_fix(major, is_tegra())}"
        ) from exc


def supported_archs() -> list[int]:
    """SM versions this NVRTC can target, e.g. ``[75, 80, 86, 87, 89, 90, ...]``."""
    _, _, nvrtc = cuda_modules()
    _nvrtc_version()
    return [int(a) for a in check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")]


def pick_arch(major: int, minor: int) -> str:
    """CUBIN for the device when NVRTC knows it, else PTX for the newest older arch it knows."""
    want = major * 10 + minor
    archs = supported_archs()
    if want in archs:
        return f"sm_{want}"
    older = [a for a in archs if a <= want]
    if not older:
        raise UserError(
            f"this NVRTC cannot compile for compute capability {major}.{minor} "
            f"(oldest it supports: {min(archs) / 10:.1f}); install the CUDA version of your JetPack"
        )
    return f"compute_{max(older)}"


def _source_key(name: str, arch: str) -> str:
    h = hashlib.sha256()
    for path in sorted(KERNEL_DIR.glob("*.cuh")) + [KERNEL_DIR / f"{name}.cu"]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join(NVRTC_OPTIONS).encode() + arch.encode())
    h.update(repr(_nvrtc_version()).encode())
    return h.hexdigest()[:16]


def _compile(name: str, arch: str) -> bytes:
    _, _, nvrtc = cuda_modules()
    source = (KERNEL_DIR / f"{name}.cu").read_bytes()
    prog = check(nvrtc.nvrtcCreateProgram(source, f"{name}.cu".encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in NVRTC_OPTIONS]
        opts += [f"--gpu-architecture={arch}".encode(), f"--include-path={KERNEL_DIR}".encode()]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if int(err) != 0:
            size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            raise RuntimeError(f"NVRTC failed to compile {name}.cu for {arch}:\n{log.decode(errors='replace')}")
        if arch.startswith("sm_"):
            size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
            image = b" " * size
            check(nvrtc.nvrtcGetCUBIN(prog, image), "nvrtcGetCUBIN")
        else:
            size = check(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
            image = b" " * size
            check(nvrtc.nvrtcGetPTX(prog, image), "nvrtcGetPTX")
        return image
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_kernel(name: str, arch: str, cache: Path | None = None) -> CompiledKernel:
    """The compiled image of ``kernels/<name>.cu`` for ``arch``, from the cache or NVRTC."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; known: {sorted(KERNELS)}")
    if not (arch.startswith("sm_") or arch.startswith("compute_")):
        raise ValueError(f"arch must look like 'sm_87' or 'compute_87', not {arch!r}")
    suffix = "cubin" if arch.startswith("sm_") else "ptx"
    from mrcnn_edge.core.paths import kernel_cache_dir

    folder = kernel_cache_dir(arch) if cache is None else cache / "kernels" / arch
    path = folder / f"{name}-{_source_key(name, arch)}.{suffix}"
    try:
        image = path.read_bytes()
        if image:
            return CompiledKernel(name, arch, image, path, True)
    except OSError:
        pass
    image = _compile(name, arch)
    try:
        with atomic_output(path) as tmp:
            tmp.write_bytes(image)
    except (OSError, UserError):
        pass  # a read-only cache costs a recompile next time, nothing else
    return CompiledKernel(name, arch, image, path, False)
