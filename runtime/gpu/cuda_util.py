"""cuda-python access for the GPU parts of the runtime: imports, error checks, device queries.

NVIDIA's ``cuda-python`` (``cuda.bindings``) ships binary wheels for x86-64 and Jetson (aarch64),
and TensorRT's own Python samples use it; PyCUDA is not used (it compiles from source at install).
Everything here is imported lazily: ``import mrcnn_edge.runtime`` works without cuda-python.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.jetpack import JETPACK_LINES, line_for

__all__ = [
    "cuda_modules", "check", "device_compute_capability", "bindings_version", "nvrtc_wheel",
    "is_tegra", "system_nvrtc", "nvrtc_file_version", "nvrtc_fix", "runtime_problem", "nvrtc_problem",
    "version_problem", "check_versions", "DeviceBuffer", "SHRINK_AFTER", "wait_event", "wait_stream", "EVENT_POLL_S",
    "integrated_gpu",
]

_MODULES: tuple[ModuleType, ModuleType, ModuleType] | None = None


def cuda_modules() -> tuple[ModuleType, ModuleType, ModuleType]:
    """``(driver, runtime, nvrtc)`` from cuda-python 12.6+ / 13 (``cuda.bindings``) or older 12.x."""
    global _MODULES
    if _MODULES is None:
        _prefer_system_nvrtc()
        try:
            mods = tuple(importlib.import_module(f"cuda.bindings.{m}") for m in ("driver", "runtime", "nvrtc"))
        except ImportError:
            try:
                mods = tuple(importlib.import_module(f"cuda.{m}") for m in ("cuda", "cudart", "nvrtc"))
            except ImportError as exc:
                raise UserError(
                    "cuda-python is not installed (needed for the GPU runtime): on a Jetson, in the clone, "
                    "pip install -c constraints/jetpack6.txt '.[jetpack6]' (JetPack 6.1/6.2; jetpack7 for 7.0/7.1, "
                    "jetpack72 for 7.2; mrcnn-edge doctor says which); on a desktop "
                    "'mrcnn-edge[cuda12]', or 'mrcnn-edge[cuda13]' with a driver of r580 or newer"
                ) from exc
        _MODULES = mods  # type: ignore[assignment]
    return _MODULES  # type: ignore[return-value]


def _error_text(err: Any) -> str:
    driver, runtime, nvrtc = cuda_modules()
    name = type(err).__name__
    try:
        if name == "cudaError_t":
            return runtime.cudaGetErrorString(err)[1].decode()
        if name == "CUresult":
            return driver.cuGetErrorString(err)[1].decode()
        if name == "nvrtcResult":
            return nvrtc.nvrtcGetErrorString(err)[1].decode()
    except Exception:  # noqa: BLE001 - the message is a courtesy; the code is what matters
        pass
    return str(err)


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, *values)`` result; raise with ``what`` on a non-success code.

    Returns None, the single value, or the tuple of values.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        raise RuntimeError(f"{what} failed: {_error_text(err)} ({err})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_compute_capability(device: int = 0) -> tuple[int, int]:
    """(major, minor) of a CUDA device; one-line error when there is none."""
    _, runtime, _ = cuda_modules()
    try:
        count = check(runtime.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except RuntimeError as exc:
        raise UserError(f"no usable CUDA device: {exc}") from exc
    if not count or device >= count:
        raise UserError(f"CUDA device {device} not found ({count or 0} device(s) visible)")
    attr = runtime.cudaDeviceAttr
    major = check(runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "query")
    minor = check(runtime.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "query")
    return int(major), int(minor)


def integrated_gpu(device: int = 0) -> bool:
    """True when ``device`` shares the host's memory and can map it (Jetson): then mapped pinned
    memory is read and written by kernels in place, with no copy at all.

    CUDA C++ Best Practices Guide, "Zero Copy": "On integrated GPUs (i.e., GPUs with the
    integrated field of the CUDA device properties structure set to 1), mapped pinned memory is
    always a performance gain because it avoids superfluous copies as integrated GPU and CPU
    memory are physically the same." On a discrete GPU every kernel access would cross PCIe, so
    frames are copied there instead.
    """
    _, runtime, _ = cuda_modules()
    attr = runtime.cudaDeviceAttr
    try:
        integrated = check(runtime.cudaDeviceGetAttribute(attr.cudaDevAttrIntegrated, device), "query")
        can_map = check(runtime.cudaDeviceGetAttribute(attr.cudaDevAttrCanMapHostMemory, device), "query")
    except RuntimeError:
        return False
    return bool(integrated) and bool(can_map)


def bindings_version() -> str | None:
    """The installed cuda-python bindings' version ("13.0.1"), or None when unknown."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):  # cuda-python >= 12.8 is a metapackage of cuda-bindings
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def nvrtc_wheel(cuda_major: int) -> str:
    """The pip requirement that provides NVRTC for a CUDA major version.

    CUDA 12's wheels carry a ``-cu12`` suffix; from CUDA 13 on the name has none (PyPI:
    ``nvidia-cuda-nvrtc`` 13.x).
    """
    if cuda_major <= 12:
        return f"'nvidia-cuda-nvrtc-cu{cuda_major}=={cuda_major}.*'"
    return f"'nvidia-cuda-nvrtc=={cuda_major}.*'"


def _cuda_python_pin(cuda_major: int) -> str:
    return "'cuda-python>=12.6,<13'" if cuda_major == 12 else f"'cuda-python>={cuda_major},<{cuda_major + 1}'"


# ---- Jetson (Tegra): the driver belongs to the L4T release; CUDA and NVRTC must not be newer -----

TEGRA_RELEASE = "etc/nv_tegra_release"  # relative to the root: JetPack's L4T writes it


def is_tegra(root: str | os.PathLike = "/") -> bool:
    """A Jetson: L4T (Jetson Linux) writes ``/etc/nv_tegra_release``. ``root`` lets tests fake one."""
    return (Path(root) / TEGRA_RELEASE).is_file()


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.name))


def system_nvrtc(cuda_major: int, environ: Mapping[str, str] | None = None,
                 root: str | os.PathLike = "/") -> Path | None:
    """The CUDA toolkit's ``libnvrtc.so.<major>`` (JetPack's on a Jetson), found without help.

    Looks in ``$CUDA_HOME``, ``$CUDA_PATH``, ``/usr/local/cuda`` and ``/usr/local/cuda-<major>.*``
    (newest first); in each, ``lib64`` and ``targets/*/lib`` (where the Debian packages, JetPack's
    ``cuda-nvrtc-12-6`` among them, put it). None when there is none.
    """
    env = os.environ if environ is None else environ
    base = Path(root)
    homes = [Path(env[v]) for v in ("CUDA_HOME", "CUDA_PATH") if env.get(v)]
    homes.append(base / "usr/local/cuda")
    homes += sorted(base.glob(f"usr/local/cuda-{cuda_major}.*"), key=_version_key, reverse=True)
    for home in homes:
        for lib in ("lib64", "targets/aarch64-linux/lib", "targets/sbsa-linux/lib", "targets/x86_64-linux/lib"):
            candidate = home / lib / f"libnvrtc.so.{cuda_major}"
            if candidate.exists():
                return candidate
    return None


def nvrtc_file_version(path: str | os.PathLike) -> tuple[int, int] | None:
    """``libnvrtc.so.12`` -> its real file ``libnvrtc.so.12.6.68`` -> ``(12, 6)``; None when the name
    does not say (pip's wheels ship the bare ``libnvrtc.so.12``)."""
    m = re.search(r"libnvrtc\.so\.(\d+)\.(\d+)", Path(path).resolve().name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _prefer_system_nvrtc() -> None:
    """On a Jetson, load JetPack's NVRTC before cuda-python looks for one.

    pip's ``nvidia-cuda-nvrtc`` wheels are server (SBSA) builds of the newest CUDA minor, and
    cuda-python 12.9+ prefers a wheel to the system's: cuda.pathfinder's search order is "Already
    loaded in the current process", then "NVIDIA Python wheels", then the OS loader. Loading
    JetPack's first makes it the one cuda-python uses; cuda-python 12.6 opens ``libnvrtc.so.12`` by
    name, and the loader hands back an already loaded library of that soname. Never raises.
    """
    if not is_tegra():
        return
    version = bindings_version() or ""
    if not version.split(".")[0].isdigit():
        return
    path = system_nvrtc(int(version.split(".")[0]))
    if path is not None:
        try:
            ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass  # kernel_build says what is missing when NVRTC is first used


def _cuda_pair(version: int) -> tuple[int, int]:
    """CUDA's ``1000*major + 10*minor`` -> ``(major, minor)``."""
    return version // 1000, (version % 1000) // 10


def _tegra_minor(cuda_major: int, driver: tuple[int, int] | None) -> int:
    if driver is not None and driver[0] == cuda_major:
        return driver[1]
    return next((ln.cuda[1] for ln in JETPACK_LINES if ln.cuda[0] == cuda_major), 0)


def nvrtc_fix(cuda_major: int, tegra: bool = False, driver: tuple[int, int] | None = None) -> str:
    """What to do when NVRTC ``cuda_major`` is missing or does not fit. On a Jetson: JetPack's NVRTC
    from apt, never pip's wheel (a server build of a newer minor than the Jetson's driver)."""
    if tegra:
        minor = _tegra_minor(cuda_major, driver)
        wheel = nvrtc_wheel(cuda_major).strip("'").split("==")[0]
        return (f"sudo apt install cuda-nvrtc-{cuda_major}-{minor} and export CUDA_HOME=/usr/local/cuda "
                f"(JetPack's NVRTC; remove pip's server build: pip uninstall -y {wheel})")
    return f"pip install {nvrtc_wheel(cuda_major)} or install the CUDA {cuda_major} toolkit"


def _major(bindings: str | None) -> int | None:
    head = (bindings or "").split(".")[0]
    return int(head) if head.isdigit() else None


def runtime_problem(bindings: str | None, driver_cuda: int, tegra: bool = False, runtime_cuda: int = 0) -> str | None:
    """One line when cuda-python's CUDA runtime cannot run on this driver, else None.

    ``driver_cuda``/``runtime_cuda``: ``cudaDriverGetVersion``/``cudaRuntimeGetVersion`` (1000*major +
    10*minor; 0: unknown, then the runtime is cuda-python's own major.minor). Everywhere cuda-python's
    major must not exceed the driver's (cuda.bindings 13 needs a CUDA 13 driver, r580+). On a Jetson
    (``tegra``) the minor must not exceed the driver's either: its driver comes with L4T, and a newer
    runtime fails with cudaErrorInsufficientDriver (cuda-python 12.9 on JetPack 6's CUDA 12.6).
    """
    major = _major(bindings)
    if major is None or not driver_cuda:
        return None
    drv = _cuda_pair(driver_cuda)
    line = line_for(drv) if tegra else None
    if major > drv[0]:
        newer = " (r580 or newer)" if major == 13 else ""
        pin = f"'{line.cuda_python_pin}'" if line else _cuda_python_pin(drv[0])
        return (f"cuda-python {bindings} needs an NVIDIA driver for CUDA {major}{newer}, but this driver runs "
                f"CUDA {drv[0]}.{drv[1]} at most: pip install {pin} "
                f"(JetPack 6 is CUDA 12.6), or update the driver")
    if tegra:
        if runtime_cuda:
            runtime = _cuda_pair(runtime_cuda)
        else:
            parts = (bindings or "").split(".")
            runtime = (major, int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0)
        if runtime[0] == drv[0] and runtime > drv:
            pin = line.cuda_python_pin if line else f"cuda-python=={drv[0]}.{drv[1]}.*"
            extra = f" (the [{line.extra}] extra)" if line else ""
            return (f"cuda-python {bindings} is a CUDA {runtime[0]}.{runtime[1]} runtime, newer than this Jetson's "
                    f"CUDA {drv[0]}.{drv[1]} driver, which a Jetson cannot run (cudaErrorInsufficientDriver): "
                    f"pip install '{pin}'{extra}, or add NVIDIA's cuda-compat-{runtime[0]}-{runtime[1]}")
    return None


def nvrtc_problem(bindings: str | None, driver_cuda: int, nvrtc: tuple[int, int] | None,
                  tegra: bool = False) -> str | None:
    """One line when NVRTC does not fit cuda-python (major: the bindings load ``libnvrtc.so.<major>``)
    or, on a Jetson, is newer than the driver (which cannot load what a newer NVRTC emits), else None."""
    major = _major(bindings)
    if major is None or nvrtc is None:
        return None
    drv = _cuda_pair(driver_cuda) if driver_cuda else None
    if nvrtc[0] != major:
        return (f"cuda-python {bindings} needs NVRTC {major}, but NVRTC {nvrtc[0]}.{nvrtc[1]} was found: "
                f"{nvrtc_fix(major, tegra, drv)}")
    if tegra and drv is not None and nvrtc[0] == drv[0] and tuple(nvrtc) > drv:
        return (f"NVRTC {nvrtc[0]}.{nvrtc[1]} is newer than this Jetson's CUDA {drv[0]}.{drv[1]} driver: "
                f"{nvrtc_fix(major, tegra, drv)}")
    return None


def version_problem(bindings: str | None, driver_cuda: int, nvrtc: tuple[int, int] | None,
                    tegra: bool = False, runtime_cuda: int = 0) -> str | None:
    """One line saying what to install when cuda-python, the driver and NVRTC do not fit, else None
    (:func:`runtime_problem`, then :func:`nvrtc_problem`). ``driver_cuda`` 0 (no driver): None, the
    device query reports that instead."""
    if not bindings or not driver_cuda:
        return None
    return (runtime_problem(bindings, driver_cuda, tegra, runtime_cuda)
            or nvrtc_problem(bindings, driver_cuda, nvrtc, tegra))


def check_versions() -> None:
    """Raise one ``UserError`` line when cuda-python, the driver and NVRTC do not fit (see version_problem);
    on a Jetson the minors are compared too."""
    _, runtime, nvrtc = cuda_modules()
    try:
        driver_cuda = int(check(runtime.cudaDriverGetVersion(), "cudaDriverGetVersion") or 0)
    except RuntimeError:
        driver_cuda = 0
    try:
        runtime_cuda = int(check(runtime.cudaRuntimeGetVersion(), "cudaRuntimeGetVersion") or 0)
    except Exception:  # noqa: BLE001 - unknown: the bindings' own major.minor stands in
        runtime_cuda = 0
    try:
        found = check(nvrtc.nvrtcVersion(), "nvrtcVersion")
        nvrtc_version: tuple[int, int] | None = (int(found[0]), int(found[1]))
    except Exception:  # noqa: BLE001 - a missing libnvrtc raises the loader's own error; kernel_build says what to install
        nvrtc_version = None
    problem = version_problem(bindings_version(), driver_cuda, nvrtc_version, is_tegra(), runtime_cuda)
    if problem:
        raise UserError(problem)


# How long wait_event sleeps between polls: short against a frame (a 1080p render is ~1 ms on an
# Orin), long enough that a waiting thread leaves the CPU and the GIL to the others.
EVENT_POLL_S = 0.0002


def wait_event(cudart: ModuleType, event: Any, what: str) -> None:
    """Wait for the work captured by ``event`` without blocking inside a cuda-python call.

    cuda-python before 12.9.1 holds the GIL for the whole of every call, cudaStreamSynchronize
    included, so a thread that synchronises stalls every other Python thread of the pipeline.
    cudaEventQuery returns at once: "Returns cudaSuccess if all captured work has been completed,
    or cudaErrorNotReady if any captured work is incomplete"; between polls the thread sleeps,
    which releases the GIL.
    """
    not_ready = int(cudart.cudaError_t.cudaErrorNotReady)
    while True:
        result = cudart.cudaEventQuery(event)
        err = result[0] if isinstance(result, tuple) else result
        if int(err) != not_ready:
            check(err, what)
            return
        time.sleep(EVENT_POLL_S)


def wait_stream(cudart: ModuleType, event: Any, stream: Any, what: str) -> None:
    """Wait for everything enqueued on ``stream`` so far: record ``event`` there, then poll it
    (:func:`wait_event`), never a blocking cudaStreamSynchronize."""
    check(cudart.cudaEventRecord(event, stream), "cudaEventRecord")
    wait_event(cudart, event, what)


# A buffer that has needed at most half its size for this many uses in a row is reallocated at
# its recent need (one 4K frame must not keep ~270 MB of frame buffers for the rest of a 1080p run).
SHRINK_AFTER = 120


class DeviceBuffer:
    """Device (or pinned host) memory that grows on demand, is otherwise reused, and shrinks back.

    A regrowth frees the old block, and cudaFree synchronises the device, so a buffer grows to
    ``headroom`` times the request (rounded up to 64 KiB): a stream whose frames change size pays
    for that a few times, not per frame. After :data:`SHRINK_AFTER` uses in a row that each needed
    at most half of it, it is reallocated at ``headroom`` times the largest of those needs (so it
    keeps at most about twice what it recently used). ``mapped`` (pinned only): allocated with
    ``cudaHostAllocMapped`` ("Maps the allocation into the CUDA address space. The device pointer
    to the memory may be obtained by calling cudaHostGetDevicePointer()"), so kernels use
    :attr:`device_ptr` with no copy; else ``device_ptr`` is ``ptr``.
    """

    def __init__(self, cudart: Any, pinned: bool = False, headroom: float = 1.0, mapped: bool = False) -> None:
        if mapped and not pinned:
            raise ValueError("only pinned host memory can be mapped")
        self._cudart, self._pinned, self._mapped, self._headroom = cudart, pinned, mapped, float(headroom)
        self.ptr, self.device_ptr, self.size, self.grown, self.shrunk = 0, 0, 0, 0, 0
        self._uses, self._recent = 0, 0  # uses since the last (re)allocation or check, their largest need

    def ensure(self, nbytes: int) -> int:
        """The buffer's address, with room for ``nbytes``. The caller makes sure no work still in
        flight uses the memory when it may be reallocated (a grow, or a shrink: see the class)."""
        nbytes = int(nbytes)
        self._uses += 1
        self._recent = max(self._recent, nbytes)
        want, shrink = nbytes, False
        if self._uses >= SHRINK_AFTER:
            shrink = self.size > 2 * max(self._recent, 256) + 65536
            want = self._recent  # a shrink keeps room for the largest recent need
            self._uses, self._recent = 0, 0
        if shrink or nbytes > self.size:
            self.free()
            self._uses, self._recent = 0, 0
            self.shrunk += shrink
            self.grown += not shrink
            size = max(int(want * self._headroom), want, 256)
            if self._headroom > 1.0:
                size = (size + 65535) // 65536 * 65536
            if self._mapped:
                ptr = int(check(self._cudart.cudaHostAlloc(size, self._cudart.cudaHostAllocMapped), "cudaHostAlloc"))
                try:
                    # "flags provides for future releases. For now, it must be set to 0."
                    self.device_ptr = int(check(self._cudart.cudaHostGetDevicePointer(ptr, 0), "cudaHostGetDevicePointer"))
                except RuntimeError:
                    self._cudart.cudaFreeHost(ptr)
                    raise
            else:
                alloc = self._cudart.cudaMallocHost if self._pinned else self._cudart.cudaMalloc
                ptr = int(check(alloc(size), "cuda allocation"))
                self.device_ptr = ptr
            self.ptr, self.size = ptr, size
        return self.ptr

    def view(self, shape: Any, dtype: Any) -> np.ndarray:
        """A numpy view of pinned memory (host-accessible); ``shape`` must fit ``size``."""
        count = int(np.prod(shape))
        raw = (ctypes.c_uint8 * (count * np.dtype(dtype).itemsize)).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            # cudaHostAlloc: "Memory allocated by this function must be freed with cudaFreeHost()"
            (self._cudart.cudaFreeHost if self._pinned else self._cudart.cudaFree)(self.ptr)
            self.ptr, self.device_ptr, self.size = 0, 0, 0
