"""Find the CUDA and TensorRT toolchain and build ``libmrcnn_edge_plugins.so`` and
``libmrcnn_edge_plugins_autoreg.so``.

(Over 400 lines: one command's whole story, where each tool is looked for on desktops and Jetsons
and why, next to the build that uses it; most of the length is those search rules and their
one-line explanations.)

What the plugin library needs: ``nvcc`` and the CUDA runtime headers and static library (the CUDA
toolkit), and TensorRT's headers (``NvInferRuntime.h`` and friends). It needs no TensorRT library
at link time, so pip's ``tensorrt`` (which has no headers) is not enough and not needed.

Where things are looked for, in order:

* nvcc: ``$CUDACXX``, ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, ``PATH``, ``/usr/local/cuda/bin``,
  ``/usr/local/cuda-*/bin`` (newest first). JetPack installs it in ``/usr/local/cuda/bin``, which
  is not on ``PATH`` by default.
* TensorRT headers: ``--tensorrt-include``, ``$MRCNN_EDGE_TENSORRT_INCLUDE`` (``os.pathsep``-separated),
  ``$TENSORRT_INCLUDE_DIR``, ``$TENSORRT_ROOT/include`` (also ``$TENSORRT_DIR``, ``$TRT_ROOT``),
  ``/usr/include/x86_64-linux-gnu`` (desktop ``libnvinfer-dev``), ``/usr/include/aarch64-linux-gnu``
  (JetPack), ``/usr/include``, ``/usr/local/TensorRT*/include`` and ``/opt/tensorrt/include``
  (tar archives, NGC containers).
* TensorRT libraries, reported only: ``/usr/lib/<arch>-linux-gnu``, ``$TENSORRT_ROOT/lib``, pip's
  ``tensorrt_libs``.

The build uses CMake (``plugins/CMakeLists.txt``) when ``cmake`` >= 3.18 is on ``PATH``, else two
``nvcc`` commands. Either way both libraries are written side by side, each atomically and only once
both are built: the plugin library (TensorRT's documented entry points, for ``loadLibrary``) and the
small library that registers it when merely dlopen'ed (Triton, DeepStream, ``LD_PRELOAD``), which
finds the first next to itself by its soname, ``libmrcnn_edge_plugins.so``: the pair keeps its names.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mrcnn_edge.runtime.gpu import trt_platform
from mrcnn_edge.runtime.gpu.trt_platform import plugin_library_tensorrt_version  # re-exported: one definition

from mrcnn_edge.core.atomic import atomic_output
from mrcnn_edge.core.progress import note
from mrcnn_edge.core.errors import UserError

__all__ = [
    "LIBRARY_NAME",
    "AUTOREG_LIBRARY_NAME",
    "autoreg_library_beside",
    "DEFAULT_CUDA_ARCHS",
    "Toolchain",
    "default_plugin_path",
    "find_nvcc",
    "find_tensorrt_include",
    "find_tensorrt_libraries",
    "tensorrt_header_version",
    "nvcc_archs",
    "resolve_cuda_archs",
    "check_driver_supports_toolkit",
    "find_toolchain",
    "build_plugin_library",
    "plugin_library_tensorrt_version",
]

from mrcnn_edge.core.paths import PLUGIN_AUTOREG_LIBRARY_NAME as AUTOREG_LIBRARY_NAME  # noqa: E402
from mrcnn_edge.core.paths import PLUGIN_LIBRARY_NAME as LIBRARY_NAME  # noqa: E402
from mrcnn_edge.core.paths import plugin_build_log, plugin_library_path  # noqa: E402
# Turing, Ampere (A100, RTX 30xx, Jetson Orin = 87), Ada, Hopper; then Blackwell and Thor (101 up to
# CUDA 12.9, 110 from CUDA 13) where the toolkit has them. Keep in step with plugins/CMakeLists.txt.
DEFAULT_CUDA_ARCHS = (75, 80, 86, 87, 89, 90, 100, 101, 110, 120)
_SOURCES = (
    "multilevel_roi_align_kernel.cu",
    "multilevel_roi_align_plugin.cpp",
    "multilevel_roi_align_attributes.cpp",
    "plugin_entry.cpp",
    "tensorrt_in_process.cpp",
)
_AUTOREG_SOURCES = ("plugin_autoreg.cpp", "tensorrt_in_process.cpp")
_MIN_CMAKE = (3, 18)


@dataclass
class Toolchain:
    """What the plugin build uses; ``describe()`` prints it."""

    nvcc: Path
    cuda_home: Path
    cuda_version: str
    tensorrt_include: Path
    tensorrt_version: str
    tensorrt_libraries: list[Path] = field(default_factory=list)
    cmake: Path | None = None

    def describe(self) -> list[str]:
        libs = ", ".join(str(p) for p in self.tensorrt_libraries) or "not found (not needed to build)"
        return [
            f"nvcc:              {self.nvcc} (CUDA {self.cuda_version})",
            f"CUDA toolkit:      {self.cuda_home}",
            f"TensorRT headers:  {self.tensorrt_include} (TensorRT {self.tensorrt_version})",
            f"TensorRT library:  {libs}",
            f"CMake:             {self.cmake or 'not found: building with nvcc directly'}",
        ]


def autoreg_library_beside(plugin_library: str | os.PathLike) -> Path:
    """The self-registering library that ``build-plugin`` writes next to ``plugin_library``."""
    return Path(plugin_library).with_name(AUTOREG_LIBRARY_NAME)


def default_plugin_path() -> Path:
    """Where ``mrcnn-edge build-plugin`` writes by default and ``mrcnn-edge build`` looks:
    ``$MRCNN_EDGE_CACHE/plugins/libmrcnn_edge_plugins.so`` (``~/.cache/mrcnn-edge`` by default)."""
    return plugin_library_path()


# ---- nvcc and the CUDA toolkit ------------------------------------------------------------------


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", Path(path).parent.parent.name)) or (0,)


def find_nvcc(cuda_home: str | os.PathLike | None = None) -> Path | None:
    """First nvcc found (see the module docstring); None when there is none.

    With ``cuda_home`` given, only ``cuda_home/bin/nvcc`` is tried.
    """
    if cuda_home:
        candidates = [str(Path(cuda_home).expanduser() / "bin" / "nvcc")]
    else:
        candidates = [os.environ["CUDACXX"]] if os.environ.get("CUDACXX") else []
        for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
            if os.environ.get(var):
                candidates.append(str(Path(os.environ[var]) / "bin" / "nvcc"))
        candidates += [shutil.which("nvcc") or "", "/usr/local/cuda/bin/nvcc"]
        candidates += sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), key=_version_key, reverse=True)
    for c in candidates:
        p = Path(c).expanduser()
        if c and p.is_file() and os.access(p, os.X_OK):
            return p
    return None


def _nvcc_cuda_home(nvcc: Path) -> Path | None:
    """The toolkit nvcc belongs to; nvcc may be a wrapper script, so ask it (``--dryrun``)."""
    try:
        out = subprocess.run([str(nvcc), "--dryrun", "-E", "-x", "cu", os.devnull],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, re.MULTILINE)
        if m:
            here = Path(m.group(1).strip())
            if (here.parent / "include" / "cuda_runtime_api.h").is_file():
                return here.parent
    except (OSError, subprocess.SubprocessError):
        pass
    for home in (nvcc.resolve().parent.parent, nvcc.parent.parent, Path("/usr/local/cuda")):
        if (home / "include" / "cuda_runtime_api.h").is_file():
            return home
    return None


def _nvcc_version(nvcc: Path) -> str:
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def nvcc_archs(nvcc: Path) -> list[int]:
    """Compute capabilities nvcc can compile for (``--list-gpu-arch``), e.g. [75, 80, ..., 120]."""
    try:
        out = subprocess.run([str(nvcc), "--list-gpu-arch"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({int(m) for m in re.findall(r"compute_(\d+)\b", out)})


# ---- TensorRT -----------------------------------------------------------------------------------


def _tensorrt_include_candidates(given: str | os.PathLike | None) -> list[Path]:
    c: list[str] = []
    if given:
        c.append(str(given))
    for var in ("MRCNN_EDGE_TENSORRT_INCLUDE", "TENSORRT_INCLUDE_DIR"):
        c += [p for p in os.environ.get(var, "").split(os.pathsep) if p]
    for var in ("TENSORRT_ROOT", "TENSORRT_DIR", "TRT_ROOT"):
        if os.environ.get(var):
            c.append(str(Path(os.environ[var]) / "include"))
    c += [f"/usr/include/{platform.machine()}-linux-gnu", "/usr/include/x86_64-linux-gnu",
          "/usr/include/aarch64-linux-gnu", "/usr/include"]
    c += sorted(glob.glob("/usr/local/TensorRT*/include") + glob.glob("/opt/TensorRT*/include"), reverse=True)
    c += ["/opt/tensorrt/include", "/usr/local/tensorrt/include"]
    for pkg in ("tensorrt_libs", "tensorrt"):  # no headers in today's wheels; harmless to look
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            c += [str(Path(loc) / "include") for loc in spec.submodule_search_locations]
    return [Path(p).expanduser() for p in dict.fromkeys(c)]


def find_tensorrt_include(given: str | os.PathLike | None = None) -> Path | None:
    """Folder holding ``NvInferRuntime.h`` and ``NvInferVersion.h``; None when not found.

    An explicit ``given`` folder is the only one tried.
    """
    candidates = [Path(given).expanduser()] if given else _tensorrt_include_candidates(None)
    for d in candidates:
        if (d / "NvInferRuntime.h").is_file() and (d / "NvInferVersion.h").is_file():
            return d
    return None


def tensorrt_header_version(include: str | os.PathLike) -> str | None:
    """``"10.3.0"`` from ``NvInferVersion.h`` (also the ``TRT_*_ENTERPRISE`` spelling of 10.9+)."""
    try:
        text = (Path(include) / "NvInferVersion.h").read_text(errors="replace")
    except OSError:
        return None
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#define\s+(?:NV_TENSORRT|TRT)_{part}(?:_ENTERPRISE)?\s+(\d+)", text)
        if not m:
            return None
        parts.append(m.group(1))
    return ".".join(parts)


def find_tensorrt_libraries() -> list[Path]:
    """``libnvinfer.so*`` files found (informational: the plugin does not link them)."""
    dirs = [f"/usr/lib/{platform.machine()}-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
    for var in ("TENSORRT_ROOT", "TENSORRT_DIR", "TRT_ROOT"):
        if os.environ.get(var):
            dirs += [str(Path(os.environ[var]) / "lib"), str(Path(os.environ[var]) / "lib64")]
    dirs += glob.glob("/usr/local/TensorRT*/lib")
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is not None and spec.submodule_search_locations:
        dirs += list(spec.submodule_search_locations)
    found: list[Path] = []
    for d in dict.fromkeys(dirs):
        hits = sorted(glob.glob(os.path.join(d, "libnvinfer.so*")))
        if hits:
            found.append(Path(hits[0]))
    return found


def find_toolchain(
    tensorrt_include: str | os.PathLike | None = None,
    cuda_home: str | os.PathLike | None = None,
) -> Toolchain:
    """Everything the build needs, or a one-line UserError naming each missing piece."""
    missing: list[str] = []
    nvcc = find_nvcc(cuda_home)
    home: Path | None = None
    if nvcc is None:
        where = f"in {cuda_home}/bin" if cuda_home else "on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin"
        missing.append(
            f"nvcc not found {where} (install the CUDA toolkit: on a Jetson it comes with JetPack, "
            "sudo apt install nvidia-jetpack; or set CUDA_HOME)"
        )
    else:
        home = _nvcc_cuda_home(nvcc)
        if home is None:
            missing.append(f"the CUDA headers (cuda_runtime_api.h) of {nvcc} not found (set CUDA_HOME)")
    trt_inc = find_tensorrt_include(tensorrt_include)
    if trt_inc is None:
        if tensorrt_include:
            missing.append(f"TensorRT headers (NvInferRuntime.h, NvInferVersion.h) not in {tensorrt_include}")
        else:
            missing.append(
                "TensorRT headers (NvInferRuntime.h) not found: on a Jetson sudo apt install libnvinfer-dev "
                "(JetPack puts them in /usr/include/aarch64-linux-gnu); on a desktop install libnvinfer-dev or "
                "the TensorRT tar archive and set TENSORRT_ROOT (pip's tensorrt has no headers); "
                "or pass --tensorrt-include DIR"
            )
    trt_version = tensorrt_header_version(trt_inc) if trt_inc else None
    if trt_inc is not None and trt_version is None:
        missing.append(f"cannot read the TensorRT version from {trt_inc / 'NvInferVersion.h'}")
    elif trt_version is not None and tuple(int(x) for x in trt_version.split(".")[:2]) < (10, 3):
        missing.append(f"TensorRT {trt_version} headers in {trt_inc} are too old: the plugin needs TensorRT >= 10.3")
    if missing:
        raise UserError("cannot build the plugin: " + "; ".join(missing))
    assert nvcc is not None and home is not None and trt_inc is not None and trt_version is not None
    return Toolchain(
        nvcc=nvcc,
        cuda_home=home,
        cuda_version=_nvcc_version(nvcc),
        tensorrt_include=trt_inc,
        tensorrt_version=trt_version,
        tensorrt_libraries=find_tensorrt_libraries(),
        cmake=_find_cmake(),
    )


def _find_cmake() -> Path | None:
    cmake = shutil.which("cmake")
    if not cmake:
        return None
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\d+)\.(\d+)", out)
    return Path(cmake) if m and (int(m.group(1)), int(m.group(2))) >= _MIN_CMAKE else None


# ---- CUDA architectures -------------------------------------------------------------------------


def _local_gpu_archs(known: Sequence[int]) -> list[int]:
    """Architectures of this machine's GPUs, from the CUDA driver (a Jetson may have no nvidia-smi),
    else from the SoC name on a Jetson whose driver cannot be reached; [] when there is no GPU."""
    caps = sorted(set(trt_platform.cuda_driver().capabilities))
    if caps:
        return caps
    try:
        compatible = Path("/proc/device-tree/compatible").read_bytes().decode(errors="replace")
    except OSError:
        compatible = ""
    if "tegra234" in compatible:  # Jetson AGX Orin, Orin NX, Orin Nano
        return [87]
    if "tegra264" in compatible:  # Jetson Thor: sm_110 on CUDA 13, sm_101 on CUDA 12.8/12.9
        return [110] if 110 in known else [101]
    return []


def check_driver_supports_toolkit(cuda_version: str, driver: trt_platform.CudaDriver | None = None) -> str:
    """One warning line (or "") about the toolkit and the driver; a ``UserError`` when the toolkit's
    CUDA major is newer than the driver's: its static runtime would not start on this machine.

    Within one major, CUDA's minor-version compatibility lets the library run; only PTX (used for
    GPUs newer than the listed ones) needs a driver at least as new as the toolkit.
    """
    driver = driver if driver is not None else trt_platform.cuda_driver()
    try:
        toolkit = tuple(int(x) for x in cuda_version.split(".")[:2])
    except ValueError:
        return ""
    if driver.cuda_version is None or len(toolkit) < 2:
        return ""  # no driver here: building for another machine is fine
    have = driver.cuda_version
    if toolkit[0] > have[0]:
        raise UserError(
            f"the CUDA toolkit (nvcc {cuda_version}) is newer than this machine's driver, which supports CUDA "
            f"{have[0]}.{have[1]}: the plugin would not load here; use a CUDA {have[0]}.x toolkit "
            "(--cuda-home) or update the driver"
        )
    if toolkit > have:
        return (f"note: nvcc {cuda_version} is newer than the driver (CUDA {have[0]}.{have[1]}): the library runs "
                "(minor-version compatibility) but its PTX cannot be JIT-compiled on this driver")
    return ""


def resolve_cuda_archs(spec: str, nvcc: Path) -> list[int]:
    """``"auto"`` (this machine's GPU, else the default list), ``"all"`` (the default list), or
    ``"87"`` / ``"75,86,87"``; checked against what this nvcc can compile."""
    known = nvcc_archs(nvcc)
    spec = (spec or "auto").strip().lower()
    if spec in ("auto", "all"):
        archs = _local_gpu_archs(known) if spec == "auto" else []
        unknown = [a for a in archs if known and a not in known]
        if unknown:  # this machine's GPU, which this nvcc cannot compile for
            raise UserError(
                f"this machine's GPU is sm_{', sm_'.join(map(str, unknown))} but nvcc {nvcc} cannot compile for it "
                f"(it knows {', '.join(map(str, known))}): use a CUDA toolkit that supports it (--cuda-home)"
            )
        if not archs:
            archs = [a for a in DEFAULT_CUDA_ARCHS if not known or a in known]
            # 101 and 110 are the same chip (Thor) under two names; keep the toolkit's newer one
            if 101 in archs and 110 in archs:
                archs.remove(101)
        return archs
    try:
        archs = sorted({int(x.strip().lower().removeprefix("sm_").replace(".", "")) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--cuda-archs '{spec}' is not a list of compute capabilities like 87 or 75,86,87") from None
    if not archs:
        raise UserError("--cuda-archs is empty: give e.g. 87 (Jetson Orin) or 'auto'")
    unknown = [a for a in archs if known and a not in known]
    if unknown:
        raise UserError(
            f"nvcc {nvcc} cannot compile for sm_{', sm_'.join(map(str, unknown))} "
            f"(it knows {', '.join(map(str, known))})"
        )
    return archs


def _gencode_flags(archs: Sequence[int]) -> list[str]:
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    newest = max(archs)
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]  # PTX for later GPUs
    return flags


def _cmake_archs(archs: Sequence[int]) -> str:
    newest = max(archs)
    return ";".join([f"{a}-real" for a in archs if a != newest] + [str(newest)])


# ---- the build ----------------------------------------------------------------------------------


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode != 0:
        text = log.read_text(errors="replace").splitlines()
        errors = [ln for ln in text if re.search(r"error|Error|ERROR", ln)]
        first = (errors or text or ["no output"])[0].strip()
        raise UserError(f"building the plugin failed: {first[:300]} (full log: {log})")


def _source_dir() -> Path:
    from mrcnn_edge.plugins import SOURCE_DIR

    missing = [s for s in (*_SOURCES, *_AUTOREG_SOURCES, "CMakeLists.txt") if not (SOURCE_DIR / s).is_file()]
    if missing:
        raise UserError(f"plugin sources missing from {SOURCE_DIR}: {', '.join(missing)} (reinstall mrcnn-edge)")
    return SOURCE_DIR


def build_plugin_library(
    output: str | os.PathLike,
    toolchain: Toolchain,
    archs: Sequence[int],
    use_cmake: bool | None = None,
    jobs: int | None = None,
    log: Callable[[str], None] = note,
) -> Path:
    """Compile the plugin for ``archs`` and write ``output`` (named ``libmrcnn_edge_plugins.so``) and
    the self-registering library beside it, each atomically once both are built; return ``output``."""
    src = _source_dir()
    output = Path(output).expanduser()
    if output.name != LIBRARY_NAME:
        raise UserError(f"the plugin library must be named {LIBRARY_NAME} ({AUTOREG_LIBRARY_NAME}, written next to "
                        f"it, loads it by that name): give a folder or a path ending in /{LIBRARY_NAME}, not {output}")
    autoreg_output = autoreg_library_beside(output)
    cmake = toolchain.cmake if use_cmake in (None, True) else None
    if use_cmake and cmake is None:
        raise UserError("--cmake: cmake >= 3.18 not found on PATH (or drop --cmake to build with nvcc directly)")
    jobs = jobs or os.cpu_count() or 1
    # the compiler's full output goes next to the default library, where the error message points
    build_log = plugin_build_log()
    build_log.parent.mkdir(parents=True, exist_ok=True)
    build_log.write_text("")
    work = Path(tempfile.mkdtemp(prefix="mrcnn-edge-plugin-"))
    t0 = time.perf_counter()
    how = "CMake" if cmake else "nvcc"
    log(f"compiling the plugin with {how} for sm_{', sm_'.join(map(str, archs))} "
        f"against TensorRT {toolchain.tensorrt_version} headers ...")
    try:
        if cmake:
            build = work / "build"
            _run([str(cmake), "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                  f"-DCMAKE_CUDA_COMPILER={toolchain.nvcc}", f"-DTENSORRT_INCLUDE_DIR={toolchain.tensorrt_include}",
                  f"-DCMAKE_CUDA_ARCHITECTURES={_cmake_archs(archs)}"], build_log)
            _run([str(cmake), "--build", str(build), "--parallel", str(jobs)], build_log)
        else:
            build = work
            _nvcc_build(src, build, toolchain, archs, build_log)
        built, built_autoreg = build / LIBRARY_NAME, build / AUTOREG_LIBRARY_NAME
        for path in (built, built_autoreg):
            if not path.is_file():
                raise UserError(f"building the plugin produced no {path.name} (full log: {build_log})")
        if plugin_library_tensorrt_version(built) is None:
            raise UserError(f"the plugin library just built cannot be loaded (full log: {build_log})")
        # both complete before either replaces an older file; the self-registering one lands first,
        # and an older one beside a new plugin library still works (it only calls getCreators())
        with atomic_output(output) as tmp_lib, atomic_output(autoreg_output) as tmp_autoreg:
            for source, tmp in ((built, tmp_lib), (built_autoreg, tmp_autoreg)):
                shutil.copyfile(source, tmp)
                os.chmod(tmp, 0o755)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB) and {autoreg_output.name} beside it in "
        f"{time.perf_counter() - t0:.0f} s")
    return output


def _nvcc_build(src: Path, folder: Path, toolchain: Toolchain, archs: Sequence[int], build_log: Path) -> None:
    """The two libraries with nvcc alone, linked as plugins/CMakeLists.txt links them."""
    include = ["-I", str(src), "-isystem", str(toolchain.tensorrt_include)]
    _run([str(toolchain.nvcc), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
          "-Xlinker", "--no-undefined", "-Xlinker", f"-soname,{LIBRARY_NAME}", "--cudart", "static",
          *_gencode_flags(archs), *include, *[str(src / s) for s in _SOURCES], "-ldl",
          "-o", str(folder / LIBRARY_NAME)], build_log)
    # plain C++ (nvcc only drives the host compiler), no CUDA runtime; linked against the first by
    # its soname, found next to it ($ORIGIN), never unloaded (-z nodelete: see plugin_autoreg.cpp)
    _run([str(toolchain.nvcc), "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
          "--cudart", "none", *include, *[str(src / s) for s in _AUTOREG_SOURCES],
          str(folder / LIBRARY_NAME), "-Xlinker", "-rpath,$ORIGIN", "-Xlinker", "-z,nodelete",
          "-Xlinker", "--no-undefined", "-ldl", "-o", str(folder / AUTOREG_LIBRARY_NAME)], build_log)
