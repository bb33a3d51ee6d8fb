"""``mrcnn-edge doctor``: one line per part of an install, ✔ or ✘ with the fix, on any machine.

It reads, and changes nothing: the L4T release, the NVIDIA driver (through ``libcuda``, as the
build does), cuda-python and the NVRTC it loads, TensorRT, the plugin library, OpenCV (which file,
GStreamer, which numpy it was built with, who shadows whom), numpy, cameras and the cache folder.
What the Python side holds is asked of a child process (``doctor_probe.py``), so that a cv2 that
crashes on import or a TensorRT that loads half a gigabyte leaves this process alone.

A part that is absent is not a failure (a desktop has no L4T, a CPU box no GPU) unless a target
given with ``--for`` needs it; a part that is present and broken always is. Every probe goes through
a :class:`Machine`, so the tests fake a Jetson: a root folder for ``/etc`` and ``/dev``, the
environment, the interpreter and its ``sys.path``, the driver.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mrcnn_edge.core.jetpack import JETPACK_LINES, JetPackLine, line_for, parse_l4t_release
from mrcnn_edge.core.paths import cache_root, plugin_library_path
from mrcnn_edge.runtime.gpu import cuda_util
from mrcnn_edge.runtime.gpu.trt_platform import (TENSORRT_MISSING, CudaDriver, cuda_driver,
                                                 plugin_library_tensorrt_version, tensorrt_major, tensorrt_release)

__all__ = ["TARGETS", "Machine", "Line", "diagnose", "render", "add_doctor_arguments", "run_doctor"]

OK, BAD, ABSENT = "ok", "bad", "absent"
# target -> (help, the lines it needs to be ✔)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "gpu": ("the CUDA pre/post-processing: a GPU, a cuda-python that fits its driver, NVRTC",
            ("GPU", "cuda-python", "NVRTC")),
    "tensorrt": ("building and running engines: the gpu target, TensorRT and a plugin library built for it",
                 ("GPU", "cuda-python", "NVRTC", "TensorRT", "plugin")),
    "csi": ("csi:// cameras: a Jetson, OpenCV with GStreamer that imports, a camera, nvargus-daemon",
            ("L4T", "Python", "OpenCV", "numpy", "cameras")),
    "jetson": ("a finished Jetson install (the README's last line): a supported JetPack, the tensorrt "
               "target, JetPack's OpenCV with GStreamer, numpy it was built for, a writable cache",
               ("L4T", "Python", "GPU", "cuda-python", "NVRTC", "TensorRT", "plugin", "OpenCV", "numpy", "cache")),
}
DESCRIPTION_DOCTOR = ("Check this machine for what mrcnn-edge needs, one line each with the fix. Targets (--for): "
                      + "; ".join(f"{name}: {text}" for name, (text, _) in TARGETS.items())
                      + ". Exits 1 when something present is broken or a target given cannot work.")


@dataclass
class Machine:
    """Where the doctor looks. The defaults are this machine; tests replace each part. ``environ`` is
    what the probe and the CUDA lookups see; the cache folder is the runtime's own (``core.paths``,
    ``$MRCNN_EDGE_CACHE`` of this process), so the doctor reports the folder mrcnn-edge will use."""

    root: Path = Path("/")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    python: Sequence[str] = (sys.executable,)
    driver: Callable[[], CudaDriver] = cuda_driver
    plugin_tensorrt: Callable[[Path], str | None] = plugin_library_tensorrt_version

    def shown(self, path: str | os.PathLike) -> str:
        """A path as the device would show it: under a faked root, relative to that root."""
        p = Path(path)
        if self.root != Path("/") and p.is_relative_to(self.root):
            return "/" + str(p.relative_to(self.root))
        return str(p)


@dataclass
class Line:
    name: str
    status: str       # OK, BAD (broken: always a failure) or ABSENT (a failure only when a target needs it)
    text: str
    fix: str = ""


def probe_python(machine: Machine, preload_nvrtc: Path | None) -> dict[str, Any]:
    """Run ``doctor_probe.py`` under ``machine.python`` (its own folder off ``sys.path``)."""
    script = Path(__file__).with_name("doctor_probe.py")
    code = f"import sys, runpy; sys.path.pop(0); runpy.run_path({str(script)!r}, run_name='__main__')"
    args = json.dumps({"preload_nvrtc": str(preload_nvrtc) if preload_nvrtc else None})
    try:
        proc = subprocess.run([*machine.python, "-c", code, args], capture_output=True, text=True,
                              env=dict(machine.environ), timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{' '.join(machine.python)} could not be run: {exc}"}
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"error": f"{' '.join(machine.python)} could not be asked: {last}"}


# ---- the lines ----------------------------------------------------------------------------------

def _l4t(machine: Machine, driver: tuple[int, int] | None) -> tuple[Line, JetPackLine | None]:
    """The L4T release and the JetPack line: by the driver's CUDA where there is one (it tells 7.0/7.1
    from 7.2), else by the release."""
    path = machine.root / cuda_util.TEGRA_RELEASE
    if not path.is_file():
        return Line("L4T", ABSENT, "not a Jetson (no /etc/nv_tegra_release)",
                    "csi:// and the Jetson install need a Jetson with JetPack 6.1 or newer"), None
    first = (path.read_text(errors="replace").splitlines() or [""])[0]
    release = parse_l4t_release(first)
    if release is None:
        return Line("L4T", BAD, f"/etc/nv_tegra_release does not say its release: {first[:60]!r}",
                    "flash JetPack 6.1 or newer"), None
    text = "L4T R%d.%d.%d" % release
    line = line_for(None, release) and line_for(driver, release)
    if line is None:
        return Line("L4T", BAD, f"{text} is older than JetPack 6.1 (its TensorRT is older than the plugin's 10.3)",
                    "flash JetPack 6.1 or newer (L4T R36.4 or newer)"), None
    return Line("L4T", OK, f"{text}: JetPack {line.releases} (CUDA {line.cuda_text}, TensorRT {line.tensorrt}, "
                           f"Python {line.python}; the install: '.[{line.extra}]' with {line.constraints})"), line


def _python(machine: Machine, report: dict[str, Any], tegra: bool) -> Line:
    """The interpreter and its venv: on a Jetson the venv must see the system's site packages, where
    JetPack's tensorrt and cv2 live."""
    venv = report.get("venv")
    text = f"Python {report.get('python')} ({machine.shown(report.get('executable', '?'))})"
    if venv is None:
        return Line("Python", OK, f"{text}, no venv")
    shown = machine.shown(venv["path"])
    if venv["system_site_packages"]:
        return Line("Python", OK, f"{text}, venv {shown} seeing the system's site packages")
    if not tegra:
        return Line("Python", OK, f"{text}, venv {shown}")
    return Line("Python", BAD, f"{text}: the venv {shown} does not see JetPack's tensorrt and cv2 (made without "
                               "--system-site-packages)",
                f"set include-system-site-packages = true in {shown}/pyvenv.cfg")


def _gpu(info: CudaDriver) -> Line:
    if info.cuda_version is None:
        return Line("GPU", ABSENT, info.why or "no NVIDIA driver", "install the NVIDIA driver (on a Jetson: JetPack)")
    cuda = f"driver runs CUDA {info.cuda_version[0]}.{info.cuda_version[1]}"
    if not info.devices:
        return Line("GPU", ABSENT, f"{info.why or 'no CUDA device'} ({cuda})", "check the GPU with nvidia-smi")
    archs = ", ".join(f"sm_{c}" for c in info.capabilities)
    return Line("GPU", OK, f"{info.devices} device(s) ({archs}), {cuda}")


def _install_hint(tegra: bool, line: JetPackLine | None, driver: tuple[int, int] | None) -> str:
    if tegra and line is not None:
        return f"pip install -c {line.constraints} '.[{line.extra}]' (from the clone)"
    return "pip install 'mrcnn-edge[cuda13]'" if driver and driver[0] >= 13 else "pip install 'mrcnn-edge[cuda12]'"


def _cuda_python(cuda: dict[str, Any], driver: int, tegra: bool, hint: str) -> Line:
    if cuda.get("absent"):
        return Line("cuda-python", ABSENT, "not installed (the GPU runtime needs it)", hint)
    if "error" in cuda:
        return Line("cuda-python", BAD, f"cuda-python {cuda.get('bindings') or ''} does not import: {cuda['error']}", hint)
    bindings, runtime = cuda.get("bindings") or "?", int(cuda.get("runtime") or 0)
    problem = cuda_util.runtime_problem(bindings, driver, tegra, runtime)
    if problem:
        return Line("cuda-python", BAD, problem)
    rt = f"CUDA {runtime // 1000}.{runtime % 1000 // 10} runtime" if runtime else "runtime version unknown"
    return Line("cuda-python", OK, f"cuda-python {bindings} ({rt})")


def _nvrtc(machine: Machine, cuda: dict[str, Any], driver: int, tegra: bool) -> Line:
    drv = (driver // 1000, driver % 1000 // 10) if driver else None
    bindings = cuda.get("bindings")
    major = int(bindings.split(".")[0]) if bindings and bindings.split(".")[0].isdigit() else (drv or (12, 0))[0]
    fix = cuda_util.nvrtc_fix(major, tegra, drv)
    if cuda.get("nvrtc"):
        found = tuple(cuda["nvrtc"])
        where = machine.shown(cuda["nvrtc_file"]) if cuda.get("nvrtc_file") else "file not known"
        problem = cuda_util.nvrtc_problem(bindings, driver, found, tegra)  # type: ignore[arg-type]
        text = f"NVRTC {found[0]}.{found[1]} from {where}"
        return Line("NVRTC", BAD, f"{text}: {problem}") if problem else Line("NVRTC", OK, text)
    if cuda.get("nvrtc_error"):
        return Line("NVRTC", BAD, f"cuda-python {bindings} cannot load NVRTC {major}: {cuda['nvrtc_error']}", fix)
    system = cuda_util.system_nvrtc(major, machine.environ, machine.root)
    if system is not None:
        version = cuda_util.nvrtc_file_version(system)
        text = f"NVRTC {'%d.%d' % version if version else major} at {machine.shown(system)} (what the runtime will load)"
        return Line("NVRTC", OK, text)
    return Line("NVRTC", ABSENT, f"no libnvrtc.so.{major} found (the CUDA kernels compile with it)", fix)


def _tensorrt(machine: Machine, trt: dict[str, Any], tegra: bool) -> Line:
    if trt.get("absent") and not trt.get("lib_version"):
        return Line("TensorRT", ABSENT, "not installed (engines need it; ONNX Runtime runs without)", TENSORRT_MISSING.split(": ", 1)[1])
    if "error" in trt:
        where = f" at {machine.shown(trt['file'])}" if trt.get("file") else ""
        return Line("TensorRT", BAD, f"the tensorrt module{where} does not import: {trt['error']}",
                    "sudo apt install --reinstall python3-libnvinfer" if tegra else "pip install --force-reinstall tensorrt")
    python, lib = trt.get("version") or "", trt.get("lib_version") or ""
    text = f"TensorRT {python or '(no Python bindings)'}, library {lib or 'not found'}" + (
        f" ({machine.shown(trt['lib_file'])})" if trt.get("lib_file") else "")
    if python and lib and tensorrt_release(python)[:2] != tensorrt_release(lib)[:2]:
        return Line("TensorRT", BAD, f"{text}: the Python bindings and libnvinfer are different TensorRT releases",
                    "install one TensorRT: sudo apt install python3-libnvinfer libnvinfer-dev (JetPack's)" if tegra
                    else "pip install the tensorrt matching libnvinfer, or remove one of them")
    return Line("TensorRT", OK, text)


def _plugin(machine: Machine, trt: dict[str, Any]) -> Line:
    path = plugin_library_path()
    if not path.is_file():
        return Line("plugin", ABSENT, f"no plugin library at {machine.shown(path)} (the tensorrt flavor needs it)",
                    "mrcnn-edge build-plugin")
    built_for = machine.plugin_tensorrt(path)
    if built_for is None:
        return Line("plugin", BAD, f"{machine.shown(path)} cannot be loaded or is not a mrcnn-edge plugin library",
                    "mrcnn-edge build-plugin")
    installed = trt.get("lib_version") or trt.get("version")
    text = f"{machine.shown(path)}, built against TensorRT {built_for}"
    if installed and tensorrt_major(installed) != tensorrt_major(built_for):
        return Line("plugin", BAD, f"{text}, but TensorRT {installed} is installed", "mrcnn-edge build-plugin")
    return Line("plugin", OK, text)


def _cv2_folders(machine: Machine, sys_path: Sequence[str]) -> list[Path]:
    """Every sys.path folder that holds a cv2, in import order: the first one is the one imported."""
    found = []
    for entry in sys_path:
        p = Path(entry)
        if (p / "cv2").is_dir() or any(p.glob("cv2*.so")):
            found.append(p)
    return found


def _owner(folder: Path) -> str | None:
    """The pip distribution that installed ``folder``'s cv2 (its RECORD lists ``cv2/``), else None."""
    for info in sorted(folder.glob("*.dist-info")):
        record = info / "RECORD"
        if record.is_file() and re.search(r"^cv2[/.]", record.read_text(errors="replace"), re.M):
            meta = info / "METADATA"
            name = re.search(r"^Name:\s*(\S+)", meta.read_text(errors="replace"), re.M) if meta.is_file() else None
            return name.group(1) if name else info.name.split("-")[0]
    return None


def _apt_site(shown: str) -> bool:
    """A Debian package's site folder: where apt (JetPack's OpenCV among them) puts Python modules."""
    return re.fullmatch(r"/usr/lib/python3(\.\d+)?/dist-packages", shown) is not None


def _removal(machine: Machine, folder: Path, prefix: str) -> str:
    """The exact command that removes the cv2 in ``folder``."""
    shown, dist = machine.shown(folder), _owner(folder)
    if prefix and str(folder).startswith(prefix.rstrip("/") + "/"):
        return f"pip uninstall -y {dist}" if dist else f"rm -r {shown}/cv2"
    sudo = "sudo " if shown.startswith("/usr/") else ""
    if dist is None:
        return f"{sudo}rm -r {shown}/cv2"
    version = re.search(r"python(3\.\d+)", shown)
    python = f"python{version.group(1)}" if version else "python3"
    # Debian marks its Pythons EXTERNALLY-MANAGED (PEP 668, Ubuntu 24.04's 3.12): pip then refuses without the flag
    managed = version and (machine.root / f"usr/lib/python{version.group(1)}/EXTERNALLY-MANAGED").exists()
    return f"{sudo}{python} -m pip uninstall -y {dist}" + (" --break-system-packages" if managed else "")


def _opencv(machine: Machine, report: dict[str, Any], tegra: bool) -> Line:
    cv2 = report.get("cv2", {})
    install = ("sudo apt install nvidia-opencv, in a venv made with --system-site-packages" if tegra
               else "pip install 'mrcnn-edge[opencv]'")
    if cv2.get("absent"):
        return Line("OpenCV", ABSENT, "cv2 is not installed", install)
    folders = _cv2_folders(machine, report.get("sys_path", []))
    where = machine.shown(Path(cv2["file"]).parent) if cv2.get("file") else "?"
    if "error" in cv2:
        return Line("OpenCV", BAD, f"cv2 at {where} does not import: {cv2['error']}",
                    "see the numpy line" if _numpy_abi_error(cv2) else install)
    gst = "GStreamer: YES" if cv2.get("gstreamer") else "GStreamer: NO, which csi:// cameras need"
    text = f"OpenCV {cv2.get('version')} from {where} ({gst})"
    if cv2.get("gstreamer"):
        return Line("OpenCV", OK, text)
    apt = [f for f in folders[1:] if _apt_site(machine.shown(f))]
    if folders and apt:
        used, dist = folders[0], _owner(folders[0])
        who = f"pip's {dist}" if dist else "a cv2"
        hidden = "JetPack's OpenCV" if tegra else "apt's OpenCV"
        return Line("OpenCV", BAD if tegra else ABSENT,
                    f"{text}: {who} in {machine.shown(used)} hides {hidden} in {machine.shown(apt[0])}",
                    _removal(machine, used, _environment(report)))
    fix = (f"{_removal(machine, folders[0], _environment(report))}; then {install}" if tegra and folders
           else install if tegra else "build OpenCV with -DWITH_GSTREAMER=ON (only csi:// needs it)")
    return Line("OpenCV", ABSENT, text, fix)


def _numpy_abi_error(cv2: dict[str, Any]) -> bool:
    # numpy 2's check: "A module that was compiled using NumPy 1.x cannot be run in NumPy 2..."; numpy 1.x's
    # import_array() macro replaces it with "numpy.core.multiarray failed to import"
    text = cv2.get("error_text", "")
    return "compiled using NumPy 1.x" in text or "multiarray failed to import" in text


def _environment(report: dict[str, Any]) -> str:
    """The folder pip installs into: the venv's, else the interpreter's prefix."""
    return (report.get("venv") or {}).get("path") or _environment(report)


def _guarded(machine: Machine, report: dict[str, Any]) -> bool:
    """Whether pip here installs under a constraints file, so that numpy cannot drift: ``PIP_CONSTRAINT``
    or the venv's own ``pip.conf`` (what ``pip config --site set install.constraint`` writes)."""
    if machine.environ.get("PIP_CONSTRAINT"):
        return True
    conf = Path(_environment(report) or "/nonexistent") / "pip.conf"
    return conf.is_file() and re.search(r"^\s*constraint\s*=", conf.read_text(errors="replace"), re.M) is not None


def _numpy(machine: Machine, report: dict[str, Any], tegra: bool, line: JetPackLine | None) -> Line:
    numpy, cv2 = report.get("numpy", {}), report.get("cv2", {})
    if "version" not in numpy:
        return Line("numpy", BAD, f"numpy does not import: {numpy.get('error', 'not installed')}", "pip install 'numpy<2'")
    version, built = numpy["version"], cv2.get("numpy_built")
    keep = (f"pip config --site set install.constraint \"$PWD/{line.constraints}\" (from the clone)" if line
            else "pip config --site set install.constraint FILE (a file saying numpy<2)")
    if _numpy_abi_error(cv2):
        built_text = f"numpy {built}" if built else "numpy 1.x"
        where = machine.shown(Path(cv2["file"]).parent) if cv2.get("file") else "cv2"
        return Line("numpy", BAD, f"numpy {version} is installed, but the cv2 in {where} was built against "
                                  f"{built_text} and does not import under numpy 2", f"pip install 'numpy<2'; keep it there: {keep}")
    text = f"numpy {version}" + (f" (cv2 built against {built})" if built else "")
    if tegra and built and built.startswith("1.") and not _guarded(machine, report):
        return Line("numpy", OK, f"{text}; a later pip install may still move numpy to 2.x: {keep}")
    return Line("numpy", OK, text)


def _cameras(machine: Machine, tegra: bool) -> Line:
    devices = sorted(machine.shown(p) for p in (machine.root / "dev").glob("video*"))
    argus = ""
    if tegra:
        running = any(p.read_text(errors="replace").strip() == "nvargus-daemon"
                      for p in (machine.root / "proc").glob("[0-9]*/comm") if p.is_file())
        argus = "; nvargus-daemon running" if running else "; nvargus-daemon NOT running"
        if not running:
            return Line("cameras", ABSENT, f"{', '.join(devices) or 'no /dev/video*'}{argus} (csi:// needs it)",
                        "sudo systemctl restart nvargus-daemon")
    if not devices:
        return Line("cameras", ABSENT, f"no /dev/video* (no camera connected){argus}", "connect a camera; ls /dev/video*")
    return Line("cameras", OK, f"{', '.join(devices)}{argus}")


def _cache(machine: Machine) -> Line:
    root = cache_root()
    shown = machine.shown(root)
    existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
    if not os.access(existing, os.W_OK):
        return Line("cache", BAD, f"{shown}: {machine.shown(existing)} is not writable",
                    "set MRCNN_EDGE_CACHE to a writable folder, or sudo chown -R $USER " + machine.shown(existing))
    if existing != root:
        return Line("cache", OK, f"{shown} (made at first use: plugin library, kernels, timing cache)")
    parts = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "empty"
    return Line("cache", OK, f"{shown} ({parts})")


def diagnose(machine: Machine | None = None) -> list[Line]:
    """Every line, in the order the README's install goes."""
    machine = machine or Machine()
    tegra = cuda_util.is_tegra(machine.root)
    info = machine.driver()
    driver = info.cuda_version[0] * 1000 + info.cuda_version[1] * 10 if info.cuda_version else 0
    l4t_line, jetpack = _l4t(machine, info.cuda_version)
    preload = None
    if tegra:  # what the runtime does on a Jetson (cuda_util.cuda_modules): JetPack's NVRTC first
        major = info.cuda_version[0] if info.cuda_version else JETPACK_LINES[0].cuda[0]
        preload = cuda_util.system_nvrtc(major, machine.environ, machine.root)
    report = probe_python(machine, preload)
    if "error" in report and len(report) == 1:
        return [l4t_line, Line("Python", BAD, report["error"], "run mrcnn-edge doctor from the venv"), _gpu(info)]
    cuda = report.get("cuda", {})
    hint = _install_hint(tegra, jetpack, info.cuda_version)
    return [
        l4t_line, _python(machine, report, tegra), _gpu(info), _cuda_python(cuda, driver, tegra, hint), _nvrtc(machine, cuda, driver, tegra),
        _tensorrt(machine, report.get("tensorrt", {}), tegra), _plugin(machine, report.get("tensorrt", {})),
        _opencv(machine, report, tegra), _numpy(machine, report, tegra, jetpack), _cameras(machine, tegra),
        _cache(machine),
    ]


# ---- the command ----------------------------------------------------------------------------------

def _marks(stream: Any) -> dict[str, str]:
    try:
        "✔✘–".encode(getattr(stream, "encoding", None) or "utf-8")
        return {OK: "✔", BAD: "✘", ABSENT: "–"}
    except (UnicodeEncodeError, LookupError):
        return {OK: "OK", BAD: "XX", ABSENT: "--"}


def render(lines: Sequence[Line], targets: Sequence[str], stream: Any = None) -> int:
    """Print the lines (a failing one with its fix) and a verdict; return the exit status."""
    stream = stream or sys.stdout
    needed = {name for t in targets for name in TARGETS[t][1]}
    marks, failed = _marks(stream), []
    for line in lines:
        fails = line.status == BAD or (line.status == ABSENT and line.name in needed)
        mark = marks[BAD] if fails else marks[line.status]
        fix = "" if not line.fix or line.status == OK else f"; fix: {line.fix}" if fails else f"; to get it: {line.fix}"
        print(f"{mark} {line.name}: {line.text}{fix}", file=stream)
        if fails:
            failed.append(line.name)
    if failed:
        what = f"not ready for {', '.join(targets)}" if targets else "something present is broken"
        print(f"{what}: {', '.join(failed)} (the lines marked {marks[BAD]})", file=stream)
        return 1
    print(f"ready for {', '.join(targets)}" if targets else "nothing present is broken (absent parts marked "
          f"{marks[ABSENT]}; --for TARGET says whether a use needs them)", file=stream)
    return 0


def add_doctor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--for", dest="targets", action="append", choices=list(TARGETS), default=argparse.SUPPRESS,
                   help="what this machine must be ready for (repeatable; the targets are described above)")


def run_doctor(args: argparse.Namespace) -> int:
    return render(diagnose(), getattr(args, "targets", []))
