"""What ``mrcnn-edge doctor`` asks the Python that runs mrcnn-edge; run as a child process.

Standard library only, nothing from mrcnn_edge: it runs under whatever interpreter and ``sys.path``
the doctor points it at (the tests hand it faked site folders). A child process, because a cv2
built against numpy 1.x prints numpy's warning and fails under numpy 2, a TensorRT import loads
half a gigabyte of libraries, and NVRTC, once loaded, stays: none of that should touch the doctor.

Usage: ``python doctor_probe.py '{"preload_nvrtc": PATH or null}'`` (the doctor runs it with its own
folder off ``sys.path``, so that nothing beside it shadows a module it probes); prints one JSON object:
``sys_path``, ``prefix`` and per module (numpy, cv2, tensorrt, cuda) either ``{"absent": true}``,
``{"file", "error", "error_text"}`` or what it found.
"""
from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import mmap
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# OpenCV's cv::getBuildInformation(): "numpy: <include dir> (ver 1.21.5)" and "GStreamer: YES (1.20.3)"
_NUMPY_BUILT = re.compile(rb"numpy:[ \t]+\S+[ \t]+\(ver ([0-9.]+)\)")
_GSTREAMER = re.compile(rb"GStreamer:[ \t]+(\w+)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import(name: str) -> tuple[dict[str, Any], Any]:
    """(facts, module or None). Absent: ``find_spec`` finds nothing; broken: the import raised."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent package is missing
        return {"absent": True}, None
    except (ImportError, ValueError) as exc:
        return {"error": _first_line(exc), "error_text": str(exc)[:4000]}, None
    if spec is None:
        return {"absent": True}, None
    origin = spec.origin if spec.origin not in (None, "namespace") else next(iter(spec.submodule_search_locations or []), None)
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - reporting it is the point
        return {"file": origin, "error": _first_line(exc), "error_text": str(exc)[:4000]}, None
    return {"file": getattr(module, "__file__", None) or origin, "version": str(getattr(module, "__version__", ""))}, module


def _loaded(fragment: str) -> str | None:
    """The file of a loaded shared library whose name contains ``fragment`` (``/proc/self/maps``)."""
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(None, 5)[-1] if line.count(" ") >= 5 else ""
            if fragment in Path(path).name:
                return path
    except OSError:
        pass
    return None


def _scan_build_info(folder: Path) -> dict[str, Any]:
    """numpy version and GStreamer flag from the build text compiled into cv2's binaries (pip's wheels
    carry it in ``cv2*.so``), for a cv2 that cannot be imported to ask."""
    found: dict[str, Any] = {}
    for path in sorted(folder.rglob("*.so*")) if folder.is_dir() else []:
        try:
            with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                # read the groups while the map is open: a match holds the map, not a copy
                numpy_built, gst = _NUMPY_BUILT.search(data), _GSTREAMER.search(data)
                numpy_text = bytes(numpy_built.group(1)).decode() if numpy_built else None
                gst_yes = bytes(gst.group(1)) == b"YES" if gst else None
        except (OSError, ValueError):
            continue
        if numpy_text and "numpy_built" not in found:
            found["numpy_built"] = numpy_text
        if gst_yes is not None and "gstreamer" not in found:
            found["gstreamer"] = gst_yes
    return found


def probe_cv2() -> dict[str, Any]:
    facts, cv2 = _import("cv2")
    if cv2 is not None:
        build = str(cv2.getBuildInformation())
        numpy_built = _NUMPY_BUILT.search(build.encode())
        facts["gstreamer"] = bool(re.search(r"GStreamer:\s*YES", build))
        facts["numpy_built"] = numpy_built.group(1).decode() if numpy_built else None
    elif facts.get("file"):
        facts.update(_scan_build_info(Path(facts["file"]).parent))
    return facts


def probe_tensorrt() -> dict[str, Any]:
    facts, _ = _import("tensorrt")
    lib = _loaded("libnvinfer.so")
    if lib is None and not facts.get("absent"):
        for name in ("libnvinfer.so.11", "libnvinfer.so.10"):
            try:
                ctypes.CDLL(name)
            except OSError:
                continue
            lib = _loaded("libnvinfer.so")
            break
    if lib:
        try:
            # NvInferRuntimeBase.h: "The format is as for TENSORRT_VERSION: (MAJOR * 100 + MINOR) * 100 + PATCH"
            v = int(ctypes.CDLL(lib).getInferLibVersion())
            facts.update(lib_file=lib, lib_version=f"{v // 10000}.{v // 100 % 100}.{v % 100}")
        except (OSError, AttributeError) as exc:
            facts.update(lib_file=lib, lib_error=_first_line(exc))
    return facts


def _bindings_version() -> str | None:
    for dist in ("cuda-bindings", "cuda-python"):  # cuda-python >= 12.8 is a metapackage of cuda-bindings
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def probe_cuda(preload_nvrtc: str | None) -> dict[str, Any]:
    """cuda-python's version, its CUDA runtime's version and the NVRTC it loads (after loading the one
    the runtime itself would prefer, ``preload_nvrtc``)."""
    if preload_nvrtc:
        try:
            ctypes.CDLL(preload_nvrtc, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass
    facts: dict[str, Any] = {"bindings": _bindings_version()}
    # cuda-python 12.6+ and 13: cuda.bindings.*; older 12.x: cuda.cudart / cuda.nvrtc
    names = ("cuda.bindings.runtime", "cuda.bindings.nvrtc")
    rt_facts, rt = _import(names[0])
    if rt is None and rt_facts.get("absent"):
        names = ("cuda.cudart", "cuda.nvrtc")
        rt_facts, rt = _import(names[0])
    if rt is None:
        if rt_facts.get("absent"):
            return {"absent": True}
        facts.update(error=rt_facts["error"], file=rt_facts.get("file"))
        return facts
    try:
        err, version = rt.cudaRuntimeGetVersion()
        facts["runtime"] = int(version) if int(err) == 0 else 0
    except Exception as exc:  # noqa: BLE001
        facts["runtime_error"] = _first_line(exc)
    nv_facts, nvrtc = _import(names[1])
    try:
        if nvrtc is None:
            raise ImportError(nv_facts.get("error", "no NVRTC module"))
        err, major, minor = nvrtc.nvrtcVersion()
        if int(err) != 0:
            raise RuntimeError(f"nvrtcVersion failed ({err})")
        facts["nvrtc"] = [int(major), int(minor)]
        facts["nvrtc_file"] = _loaded("libnvrtc.so")
    except Exception as exc:  # noqa: BLE001 - a missing libnvrtc raises the loader's own error type
        facts["nvrtc_error"] = _first_line(exc)
    return facts


def probe_venv() -> dict[str, Any] | None:
    """The venv this interpreter belongs to and whether it sees the system's site packages. Found as
    CPython finds it: ``pyvenv.cfg`` beside the executable or one folder up (PEP 405)."""
    exe = Path(sys.executable)
    for folder in (exe.parent, exe.parent.parent):
        cfg = folder / "pyvenv.cfg"
        if cfg.is_file():
            system = re.search(r"^\s*include-system-site-packages\s*=\s*true\s*$", cfg.read_text(errors="replace"), re.M | re.I)
            return {"path": str(folder), "system_site_packages": bool(system)}
    return None


def main(argv: list[str]) -> int:
    options = json.loads(argv[1]) if len(argv) > 1 else {}
    report: dict[str, Any] = {
        "executable": sys.executable, "prefix": sys.prefix, "base_prefix": sys.base_prefix,
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "sys_path": [os.path.abspath(p) for p in sys.path if p], "venv": probe_venv(),
    }
    probes = {"numpy": lambda: _import("numpy")[0], "cv2": probe_cv2, "tensorrt": probe_tensorrt,
              "cuda": lambda: probe_cuda(options.get("preload_nvrtc"))}
    for name, probe in probes.items():
        try:
            report[name] = probe()
        except Exception as exc:  # noqa: BLE001 - one part failing to be asked must not hide the others
            report[name] = {"error": f"the doctor could not ask: {_first_line(exc)}", "error_text": str(exc)[:4000]}
    sys.stdout.write(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
