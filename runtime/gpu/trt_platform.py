"""TensorRT and the CUDA driver on this machine, with neither torch nor onnx nor cuda-python.

One home for what ``mrcnn-edge build`` (on the device, a base install plus TensorRT) and the
runtime's TensorRT backend both need: importing TensorRT with a one-line error, its version,
the CUDA driver (devices, compute capabilities, supported CUDA version) asked through
``libcuda.so.1`` with ctypes (a Jetson may have no ``nvidia-smi``), the one TensorRT logger
(:func:`make_logger`), and the plugin library: found (:func:`resolve_plugin_library`, for build,
run and serve alike), its path made absolute, its TensorRT major checked, and its creators
registered once per process.

Why "once": ``IPluginRegistry::loadLibrary`` "will fail and return nullptr if any of the plugins
are already registered" (NvInferRuntimeCommon.h, TensorRT 10.3 and 11), and the library also
registers itself when merely dlopen'ed. So the creator is looked up first, and a library whose
creator is already there counts as loaded.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from mrcnn_edge.core.contract import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from mrcnn_edge.core.errors import UserError
from mrcnn_edge.core.paths import plugin_library_path
from mrcnn_edge.core.progress import note

__all__ = [
    "TENSORRT_MISSING",
    "import_tensorrt",
    "make_logger",
    "tensorrt_major",
    "tensorrt_release",
    "CudaDriver",
    "cuda_driver",
    "cuda_device_count",
    "absolute_library_path",
    "resolve_plugin_library",
    "plugin_library_tensorrt_version",
    "load_plugin_library",
]

TENSORRT_MISSING = (
    "TensorRT is not installed: on a Jetson it comes with JetPack (sudo apt install python3-libnvinfer); "
    "on a desktop pip install tensorrt"
)


def import_tensorrt() -> ModuleType:
    """``import tensorrt`` or a one-line ``UserError`` saying how to get it (and why a present one failed)."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        broken = why and "No module named" not in why and "import of tensorrt halted" not in why
        raise UserError(TENSORRT_MISSING + (f" (import failed: {why})" if broken else "")) from exc


def make_logger(trt: ModuleType, verbose: bool = False) -> Any:
    """The TensorRT logger of ``build`` and the runtime: prints warnings and errors (everything with
    ``verbose``) as ``[TensorRT] LEVEL: message``, keeps the errors in ``.errors`` for the one-line
    messages that follow a failure, and prints nothing while ``.quiet`` is set (the runtime sets
    it during a CUDA graph capture attempt, whose expected errors its own warning explains)."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.quiet = False
            self.threshold = int(trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING)

        def log(self, severity: Any, msg: str) -> None:  # noqa: A003 - TensorRT's name
            try:  # called from C++: nothing may raise out of here
                if int(severity) <= int(trt.ILogger.Severity.ERROR):
                    self.errors.append(str(msg).strip())
                if not self.quiet and int(severity) <= self.threshold:
                    level = getattr(severity, "name", None) or str(severity).rsplit(".", 1)[-1]
                    note(f"[TensorRT] {level}: {msg}")
            except BaseException:  # noqa: BLE001
                pass

    return _Logger()


def tensorrt_release(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0)``: the part that must match between build and run."""
    parts = []
    for p in str(version).split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def tensorrt_major(version: str) -> int:
    release = tensorrt_release(version)
    return release[0] if release else 0


# ---- the CUDA driver, through ctypes -------------------------------------------------------------

_CUDA_ERROR_NO_DEVICE = 100  # cuda.h CUresult
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


@dataclass
class CudaDriver:
    """What the NVIDIA driver says. ``capabilities``: one compute capability per device (87 = sm_87).

    ``cuda_version``: the newest CUDA the driver supports, ``(12, 6)``; None without a driver.
    ``why``: the reason for zero devices, empty otherwise.
    """

    devices: int = 0
    capabilities: list[int] = field(default_factory=list)
    cuda_version: tuple[int, int] | None = None
    why: str = ""


def _libcuda() -> Any:
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_driver() -> CudaDriver:
    """Ask the driver API (``cuDriverGetVersion``, ``cuInit``, ``cuDeviceGetCount``, compute capability).

    Never raises: no driver or no device is a ``CudaDriver`` with ``devices == 0`` and a reason.
    """
    lib = _libcuda()
    if lib is None:
        return CudaDriver(why="no NVIDIA driver (libcuda.so.1 not found)")
    info = CudaDriver()
    version = ctypes.c_int(0)
    # cuda.h: "The version is returned as (1000 * major + 10 * minor)"; callable before cuInit
    if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
        info.cuda_version = (version.value // 1000, version.value % 1000 // 10)
    rc = lib.cuInit(0)
    if rc != 0:
        info.why = ("the NVIDIA driver found no CUDA device" if rc == _CUDA_ERROR_NO_DEVICE
                    else f"cuInit failed with CUDA driver error {rc}")
        return info
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        info.why = "the NVIDIA driver found no CUDA device"
        return info
    info.devices = count.value
    for ordinal in range(count.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        if (lib.cuDeviceGet(ctypes.byref(dev), ordinal) == 0
                and lib.cuDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, dev) == 0
                and lib.cuDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, dev) == 0):
            info.capabilities.append(major.value * 10 + minor.value)
    return info


def cuda_device_count() -> tuple[int, str]:
    """(number of CUDA devices, why none) from the driver; never raises."""
    info = cuda_driver()
    return info.devices, info.why


# ---- the plugin library ------------------------------------------------------------------------


def absolute_library_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute. dlopen searches the library path, not the current folder, for a name
    without a slash (dlopen(3)), so a bare ``libx.so`` must never reach it."""
    return Path(path).expanduser().resolve()


def resolve_plugin_library(model: str | os.PathLike, meta: Mapping[str, Any], given: str | os.PathLike | None = None,
                           needed: bool | None = None) -> Path | None:
    """The plugin library to load for ``model`` (an ONNX file or an engine), absolute; None when the
    model needs none. The one lookup of ``build``, ``run`` and ``serve``.

    ``given`` (``--plugin-lib``) wins, needed or not. Else, when the model needs the plugin
    (``needed``; by default: its metadata names a ``plugin`` or a ``plugin_library``): the
    ``plugin_library`` its metadata records (an engine's sidecar: as recorded, relative to the
    model's folder, or found by name next to the model), then where ``mrcnn-edge build-plugin``
    puts it. Every candidate is made absolute: dlopen searches the library path, not the current
    folder, for a name without a slash ("model.engine" has parent ".", so "./lib.so" would become
    "lib.so").
    """
    model = Path(model)
    if given:
        path = absolute_library_path(given)
        if not path.is_file():
            raise UserError(f"plugin library {path} not found (from --plugin-lib)")
        return path
    plugin, recorded = meta.get("plugin"), meta.get("plugin_library")
    if not (bool(plugin or recorded) if needed is None else needed):
        return None
    candidates: list[Path] = []
    if recorded:
        rec = Path(str(recorded)).expanduser()
        candidates += [rec if rec.is_absolute() else model.parent / rec, model.parent / rec.name]
    candidates.append(plugin_library_path())
    for path in candidates:
        if path.is_file():
            return absolute_library_path(path)
    ident = plugin if isinstance(plugin, dict) else {}
    what = (f"{ident.get('name', PLUGIN_NAME)} v{ident.get('version', PLUGIN_VERSION)} "
            f"({ident.get('namespace', PLUGIN_NAMESPACE)})")
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise UserError(
        f"{model.name} needs the plugin library of the TensorRT plugin {what}, not found (looked for {looked}): "
        "build it with 'mrcnn-edge build-plugin' or pass --plugin-lib PATH"
    )


def _dlopen(path: str) -> Any:
    """dlopen through ctypes; a seam that the tests' stand-in TensorRT replaces with its own model."""
    return ctypes.CDLL(path)


def plugin_library_tensorrt_version(library: str | os.PathLike) -> str | None:
    """TensorRT version (``"10.3.0"``) the plugin library was compiled against, read from the library
    itself; None when it is not one of ours or cannot be loaded."""
    version, _ = _probe_library(library)
    return version


def _probe_library(library: str | os.PathLike) -> tuple[str | None, str]:
    """(TensorRT version the library was built against or None, why not)."""
    try:
        lib = _dlopen(str(absolute_library_path(library)))
    except OSError as exc:
        return None, str(exc).strip().splitlines()[0] if str(exc).strip() else "dlopen failed"
    try:
        fn = lib.mrcnnEdgePluginTensorRTVersion
    except AttributeError:
        return None, "it has no mrcnnEdgePluginTensorRTVersion symbol (not a mrcnn-edge plugin library)"
    fn.restype = ctypes.c_int32
    v = int(fn())
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}", ""


_LOCK = threading.Lock()
_LOADED: dict[str, str] = {}  # absolute library path -> TensorRT version it was built for


def _has_creator(registry: Any) -> bool:
    # get_creator (TensorRT >= 10) finds IPluginCreatorV3One creators; the deprecated
    # get_plugin_creator finds only IPluginCreator (V2) ones.
    return registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None


def load_plugin_library(trt: ModuleType, library: str | os.PathLike,
                        errors: Callable[[], list[str]] | None = None) -> str:
    """Make the plugin's creator available to TensorRT, once per process; return a line saying how.

    ``library`` is made absolute first. Checks, each a one-line ``UserError``: the file exists, it is
    a mrcnn-edge plugin library that loads, it was built for the installed TensorRT major (a 10.x
    library under 11 crashes at its first log line: the logger interface changed), and after loading
    TensorRT has a ``MultilevelRoIAlign`` v1 ``mrcnn_edge`` creator. ``libmrcnn_edge_plugins.so``
    registers nothing when dlopen'ed: ``load_library`` registers what its ``getCreators()`` returns
    (the plugin logs through a logger finder TensorRT hands it, else through TensorRT's ``getLogger()``).
    A creator already registered (an earlier load in this process, or the host's
    ``libmrcnn_edge_plugins_autoreg.so``) counts as loaded: ``load_library`` is then not called, since
    it fails when any creator is already registered.

    Args:
        errors: returns TensorRT's error lines logged so far (the caller's logger), to say why a
            load failed; None when the caller keeps none.
    """
    path = absolute_library_path(library)
    if not path.is_file():
        raise UserError(f"plugin library {path} not found")
    installed = str(trt.__version__)
    with _LOCK:
        registry = trt.get_plugin_registry()
        if str(path) in _LOADED and _has_creator(registry):
            return f"plugin {PLUGIN_NAME} v{PLUGIN_VERSION} from {path} (already loaded)"
        built_for, why = _probe_library(path)  # dlopens it; the plugin library registers nothing by itself
        if built_for is None:
            raise UserError(f"cannot load the plugin library {path}: {why}; rebuild it with 'mrcnn-edge build-plugin'")
        if tensorrt_major(built_for) != tensorrt_major(installed):
            raise UserError(f"plugin library {path} was built against TensorRT {built_for} but TensorRT "
                            f"{installed} is installed: rebuild it with 'mrcnn-edge build-plugin'")
        if _has_creator(registry):
            how = "already registered"
        else:
            seen = len(errors()) if errors else 0
            try:
                handle = registry.load_library(str(path))
            except Exception as exc:  # noqa: BLE001 - the binding raises generic errors
                handle, reason = None, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            else:
                new = errors()[seen:] if errors else []
                reason = new[0] if new else "TensorRT gave no reason (run with --verbose)"
            if handle is None and not _has_creator(registry):
                raise UserError(f"TensorRT could not load the plugin library {path}: {reason}")
            how = "loaded"
        if not _has_creator(registry):
            raise UserError(f"{path} registers no {PLUGIN_NAME} v{PLUGIN_VERSION} ({PLUGIN_NAMESPACE}) creator: "
                            "rebuild it with 'mrcnn-edge build-plugin'")
        _LOADED[str(path)] = built_for
    return f"plugin {PLUGIN_NAME} v{PLUGIN_VERSION} {how} from {path} (built against TensorRT {built_for})"
