"""``mrcnn-edge doctor`` against faked Jetsons (the runtime's Tegra rules it shares: tests/runtime/gpu/test_tegra.py).

A fake Jetson is a root folder (``/etc/nv_tegra_release``, ``/dev/video*``, ``/proc/*/comm``,
JetPack's ``/usr/local/cuda-12.6`` NVRTC, site folders) plus stand-in Python packages on the probe's
``sys.path`` (run with ``-S``, so nothing of this venv leaks in): numpy that only says its version,
OpenCV builds that behave at import as the real ones do (a numpy-1 build refuses numpy 2) and carry
their build text in a binary as OpenCV's libraries do, and cuda-python's version calls.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from mrcnn_edge.commands import doctor
from mrcnn_edge.commands.cli import main
from mrcnn_edge.runtime.gpu.trt_platform import CudaDriver

# /etc/nv_tegra_release of JetPack 6.2 (L4T 36.4.3), as the device writes it
TEGRA_RELEASE = ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
                 "DATE: Wed Jan  8 01:49:37 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n")
ORIN = CudaDriver(devices=1, capabilities=[87], cuda_version=(12, 6))


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def fake_numpy(site: Path, version: str) -> None:
    _write(site / "numpy" / "__init__.py", f"__version__ = {version!r}\n")


def fake_opencv(site: Path, version: str, gstreamer: bool, numpy_built: str, dist: str | None = None) -> None:
    """An OpenCV build: cv2 refuses numpy 2 when built against numpy 1.x, as the real one does (numpy 2
    raises for "A module that was compiled using NumPy 1.x", and numpy 1.x's import_array() turns that
    into "numpy.core.multiarray failed to import"); its build text lives in its binary as well."""
    build = (f"General configuration for OpenCV {version}\n  Video I/O:\n    GStreamer:"
             f"                   {'YES (1.20.3)' if gstreamer else 'NO'}\n  Python 3:\n    numpy:"
             f"                       /usr/lib/python3/dist-packages/numpy/core/include (ver {numpy_built})\n")
    _write(site / "cv2" / "__init__.py", textwrap.dedent(f'''
        import numpy
        BUILD = {build!r}
        if int(numpy.__version__.split(".")[0]) >= 2 and {numpy_built!r}.startswith("1."):
            raise ImportError("numpy.core.multiarray failed to import")
        __version__ = {version!r}
        def getBuildInformation():
            return BUILD
        '''))
    _write(site / "cv2" / "cv2.cpython-310-aarch64-linux-gnu.so", b"\x7fELF\0\0" + build.encode() + b"\0")
    if dist:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        _write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        _write(info / "RECORD", "cv2/__init__.py,sha256=x,10\ncv2/cv2.cpython-310-aarch64-linux-gnu.so,sha256=y,20\n")


def _elf(path: Path) -> Path:
    """A real (small) shared library under another library's file name, so that loading it works."""
    import _ctypes

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_ctypes.__file__, path)
    return path


def fake_cuda_python(site: Path, bindings: str, runtime: int, nvrtc_wheel: tuple[int, int] | None) -> None:
    """cuda-python's calls the doctor makes, ``(error, value...)`` with 0 for success; NVRTC is found
    as cuda.pathfinder finds it: "Already loaded in the current process" first, then the NVIDIA wheel
    in site-packages (``nvrtc_wheel``: its CUDA version; pip's wheel names its library
    ``libnvrtc.so.12``, without the minor), else the loader's error."""
    major = bindings.split(".")[0]
    _write(site / "cuda" / "__init__.py", "")
    _write(site / "cuda" / "bindings" / "__init__.py", "")
    _write(site / "cuda" / "bindings" / "runtime.py", f"def cudaRuntimeGetVersion():\n    return (0, {runtime})\n")
    _write(site / "cuda" / "bindings" / "nvrtc.py", textwrap.dedent(f'''
        import ctypes, re
        from pathlib import Path
        WHEEL = Path(__file__).parents[2] / "nvidia" / "cuda_nvrtc" / "lib" / "libnvrtc.so.{major}"
        def _loaded():
            for line in Path("/proc/self/maps").read_text().splitlines():
                if "libnvrtc.so" in line:
                    return line.split()[-1]
        def nvrtcVersion():
            path = _loaded()
            if path is None:
                if not WHEEL.exists():
                    raise RuntimeError("Failure finding libnvrtc.so.{major}")
                ctypes.CDLL(str(WHEEL))
                return (0, *{nvrtc_wheel!r})
            m = re.search(r"libnvrtc\\.so\\.(\\d+)\\.(\\d+)", Path(path).name)
            return (0, int(m.group(1)), int(m.group(2))) if m else (0, *{nvrtc_wheel!r})
        '''))
    if nvrtc_wheel is not None:
        _elf(site / "nvidia" / "cuda_nvrtc" / "lib" / f"libnvrtc.so.{major}")
    _write(site / f"cuda_bindings-{bindings}.dist-info" / "METADATA", f"Name: cuda-bindings\nVersion: {bindings}\n")


def fake_tensorrt(site: Path, root: Path, version: str = "10.3.0") -> None:
    """TensorRT's Python package loads libnvinfer with ctypes when imported, as the real one does; the
    library answers getInferLibVersion ("(MAJOR * 100 + MINOR) * 100 + PATCH", NvInferRuntimeBase.h)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("a C compiler is needed to build the stand-in libnvinfer")
    major, minor, patch = (int(v) for v in version.split("."))
    lib = root / "usr/lib/aarch64-linux-gnu" / f"libnvinfer.so.{version}"
    source = _write(root / "src" / "nvinfer.c", f"int getInferLibVersion(void) {{ return {(major * 100 + minor) * 100 + patch}; }}\n")
    lib.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(lib), str(source)], check=True, timeout=120)
    _write(site / "tensorrt" / "__init__.py", f"import ctypes\n_lib = ctypes.CDLL({str(lib)!r})\n__version__ = {version!r}\n")


def fake_jetson(root: Path, python: str = "3.10", nvrtc: bool = True) -> dict[str, Path]:
    """JetPack 6.2's files: the release, a camera, nvargus-daemon, CUDA 12.6's NVRTC (a real shared
    library under NVRTC's file name, so that loading it works), JetPack's OpenCV (GStreamer, numpy 1.21)."""
    _write(root / "etc" / "nv_tegra_release", TEGRA_RELEASE)
    _write(root / "dev" / "video0", "")
    _write(root / "proc" / "812" / "comm", "nvargus-daemon\n")
    lib = root / "usr/local/cuda-12.6/targets/aarch64-linux/lib"
    lib.mkdir(parents=True)
    if nvrtc:  # apt's cuda-nvrtc-12-6
        _elf(lib / "libnvrtc.so.12.6.68")
        (lib / "libnvrtc.so.12").symlink_to("libnvrtc.so.12.6.68")
    (root / "usr/local/cuda-12.6/lib64").symlink_to("targets/aarch64-linux/lib")
    (root / "usr/local/cuda").symlink_to("cuda-12.6")
    apt = root / f"usr/lib/python{python}/dist-packages"
    fake_opencv(apt, "4.8.0", gstreamer=True, numpy_built="1.21.5")
    fake_tensorrt(apt, root)
    return {"apt": apt, "local": root / f"usr/local/lib/python{python}/dist-packages"}


def make_venv(folder: Path, system_site_packages: bool = True) -> Path:
    """A real venv (no pip): the probe finds its pyvenv.cfg as CPython does. Returns its python."""
    venv.create(folder, system_site_packages=system_site_packages, with_pip=False, symlinks=True)
    return folder / "bin" / "python"


@pytest.fixture
def jetson(tmp_path, monkeypatch):
    root = tmp_path / "root"
    sites = fake_jetson(root)
    python = make_venv(tmp_path / "venv")
    site = tmp_path / "venv" / "site"  # the venv's own site folder, first on the probe's path
    fake_numpy(site, "1.26.4")
    # a pip NVRTC 12.9 wheel too (an earlier 'pip install nvidia-cuda-nvrtc-cu12'): JetPack's must still win
    fake_cuda_python(site, "12.6.2.post1", 12060, nvrtc_wheel=(12, 9))
    cache = tmp_path / "cache"
    _write(cache / "plugins" / "libmrcnn_edge_plugins.so", b"\x7fELF")
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(cache))
    return {"root": root, "venv": site, "python": python, **sites}


def _machine(root: Path, sites: list[Path], python: Path, driver: CudaDriver = ORIN,
             plugin: str | None = "10.3.0") -> doctor.Machine:
    """The probe runs with -S and the site folders on PYTHONPATH: nothing of this test's venv leaks in."""
    return doctor.Machine(root=root, environ={"PYTHONPATH": ":".join(map(str, sites)), "PATH": "/usr/bin:/bin"},
                          python=(str(python), "-S"), driver=lambda: driver, plugin_tensorrt=lambda _: plugin)


def _run(machine: doctor.Machine, targets: list[str]) -> tuple[int, dict[str, str], str]:
    out = io.StringIO()
    status = doctor.render(doctor.diagnose(machine), targets, out)
    text = out.getvalue()
    lines = {line.split(":", 1)[0][2:]: line for line in text.splitlines()[:-1]}
    return status, lines, text


# -- a healthy JetPack 6.2 install ---------------------------------------------------------------
def test_a_complete_jetpack6_install_is_ready_for_jetson(jetson):
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), ["jetson", "csi"])
    assert status == 0, text
    assert text.splitlines()[-1] == "ready for jetson, csi"
    assert lines["L4T"].startswith("✔ L4T: L4T R36.4.3: JetPack 6.1 / 6.2 (CUDA 12.6, TensorRT 10.3, Python 3.10")
    assert lines["Python"].endswith(f", venv {jetson['python'].parent.parent} seeing the system's site packages")
    assert "'.[jetpack6]' with constraints/jetpack6.txt" in lines["L4T"]
    assert lines["GPU"] == "✔ GPU: 1 device(s) (sm_87), driver runs CUDA 12.6"
    assert lines["cuda-python"] == "✔ cuda-python: cuda-python 12.6.2.post1 (CUDA 12.6 runtime)"
    # the probe loaded JetPack's NVRTC first, as the runtime does on a Jetson
    assert lines["NVRTC"] == "✔ NVRTC: NVRTC 12.6 from /usr/local/cuda-12.6/targets/aarch64-linux/lib/libnvrtc.so.12.6.68"
    assert lines["OpenCV"] == "✔ OpenCV: OpenCV 4.8.0 from /usr/lib/python3.10/dist-packages/cv2 (GStreamer: YES)"
    assert lines["numpy"] == ("✔ numpy: numpy 1.26.4 (cv2 built against 1.21.5); a later pip install may still move "
                              "numpy to 2.x: pip config --site set install.constraint \"$PWD/constraints/jetpack6.txt\" "
                              "(from the clone)")
    assert lines["cameras"] == "✔ cameras: /dev/video0; nvargus-daemon running"
    assert lines["TensorRT"] == "✔ TensorRT: TensorRT 10.3.0, library 10.3.0 (/usr/lib/aarch64-linux-gnu/libnvinfer.so.10.3.0)"
    assert lines["plugin"].startswith("✔ plugin: ") and "built against TensorRT 10.3.0" in lines["plugin"]


def test_a_plugin_built_for_another_tensorrt_major_is_named(jetson):
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"], plugin="11.1.0"), [])
    assert status == 1, text
    assert lines["plugin"].endswith("built against TensorRT 11.1.0, but TensorRT 10.3.0 is installed; "
                                    "fix: mrcnn-edge build-plugin"), lines["plugin"]


def test_absent_parts_fail_only_the_targets_that_need_them(tmp_path, monkeypatch):
    """A CPU-only desktop: no L4T, no driver, no cameras; fine until a target needs them."""
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(tmp_path / "cache"))
    site = tmp_path / "site"
    fake_numpy(site, "2.1.0")
    fake_opencv(site, "4.10.0", gstreamer=False, numpy_built="2.0.2", dist="opencv-python-headless")
    machine = _machine(tmp_path / "root", [site], make_venv(tmp_path / "venv", False),
                       CudaDriver(why="no NVIDIA driver (libcuda.so.1 not found)"), None)
    status, lines, text = _run(machine, [])
    assert status == 0, text
    assert lines["L4T"] == "– L4T: not a Jetson (no /etc/nv_tegra_release); to get it: csi:// and the Jetson install need a Jetson with JetPack 6.1 or newer"
    assert lines["GPU"].startswith("– GPU: no NVIDIA driver (libcuda.so.1 not found)")
    assert lines["cuda-python"].startswith("– cuda-python: not installed (the GPU runtime needs it)")
    assert "pip install 'mrcnn-edge[cuda12]'" in lines["cuda-python"]
    assert lines["OpenCV"].startswith("– OpenCV: OpenCV 4.10.0 from ") and "GStreamer: NO" in lines["OpenCV"]
    assert lines["cache"].startswith("✔ cache: ") and "made at first use" in lines["cache"]
    status, lines, text = _run(machine, ["gpu"])
    assert status == 1 and text.splitlines()[-1].startswith("not ready for gpu: GPU, cuda-python, NVRTC"), text
    assert lines["GPU"].startswith("✘ GPU: ") and "fix: install the NVIDIA driver" in lines["GPU"]
    assert lines["OpenCV"].startswith("– OpenCV")  # gpu does not need GStreamer
    status, lines, text = _run(machine, ["csi"])
    assert status == 1 and lines["L4T"].startswith("✘ L4T") and lines["OpenCV"].startswith("✘ OpenCV")


# -- issue 22 item 2: cuda-python and NVRTC newer than the Jetson's driver -------------------------
def test_a_cuda_python_and_nvrtc_newer_than_the_jetson_driver_are_named_with_their_fix(jetson):
    """cuda-python 12.9 (what 'cuda-python>=12.6,<13' resolved to) and pip's NVRTC 12.9 wheel, with
    JetPack's cuda-nvrtc-12-6 not installed."""
    for stale in [jetson["venv"] / "cuda", *jetson["venv"].glob("cuda_bindings-12.6*")]:
        shutil.rmtree(stale)
    fake_cuda_python(jetson["venv"], "12.9.10", 12090, nvrtc_wheel=(12, 9))
    for lib in (jetson["root"] / "usr/local/cuda-12.6/targets/aarch64-linux/lib").iterdir():
        lib.unlink()
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), ["gpu"])
    assert status == 1, text
    assert lines["cuda-python"] == (
        "✘ cuda-python: cuda-python 12.9.10 is a CUDA 12.9 runtime, newer than this Jetson's CUDA 12.6 driver, "
        "which a Jetson cannot run (cudaErrorInsufficientDriver): pip install 'cuda-python==12.6.*' (the [jetpack6] "
        "extra), or add NVIDIA's cuda-compat-12-9")
    assert lines["NVRTC"].startswith(f"✘ NVRTC: NVRTC 12.9 from {jetson['venv']}/nvidia/cuda_nvrtc/lib/libnvrtc.so.12: ")
    assert ("is newer than this Jetson's CUDA 12.6 driver: sudo apt install cuda-nvrtc-12-6 and export "
            "CUDA_HOME=/usr/local/cuda (JetPack's NVRTC; remove pip's server build: pip uninstall -y "
            "nvidia-cuda-nvrtc-cu12)") in lines["NVRTC"]
    # the same versions on a desktop driver of the same major are fine: minor compatibility holds there
    (jetson["root"] / "etc" / "nv_tegra_release").unlink()
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), ["gpu"])
    assert status == 0 and lines["cuda-python"].startswith("✔") and lines["NVRTC"].startswith("✔"), text


# -- issue 22 item 3: a pip OpenCV in another site folder hides JetPack's ---------------------------
@pytest.mark.parametrize("python,dist,command", [
    ("3.10", "opencv-python", "sudo python3.10 -m pip uninstall -y opencv-python"),
    ("3.10", None, "sudo rm -r /usr/local/lib/python3.10/dist-packages/cv2"),
    ("3.12", "opencv-contrib-python", "sudo python3.12 -m pip uninstall -y opencv-contrib-python --break-system-packages"),
])
def test_a_pip_opencv_in_usr_local_hiding_jetpacks_is_named_with_the_command_that_removes_it(
        tmp_path, monkeypatch, python, dist, command):
    monkeypatch.setenv("MRCNN_EDGE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "root"
    sites = fake_jetson(root, python)
    if python == "3.12":  # Ubuntu 24.04 marks its Python as managed by apt (PEP 668)
        _write(root / "usr/lib/python3.12/EXTERNALLY-MANAGED", "[externally-managed]\n")
    site = tmp_path / "venv" / "site"
    fake_numpy(site, "1.26.4")
    fake_opencv(sites["local"], "4.10.0", gstreamer=False, numpy_built="2.0.2", dist=dist)  # once: sudo pip install
    # a --system-site-packages venv's order: its own site, then /usr/local's, then apt's
    status, lines, text = _run(_machine(root, [site, sites["local"], sites["apt"]], make_venv(tmp_path / "venv")), [])
    assert status == 1, text  # on a Jetson a hidden JetPack OpenCV is broken, whatever the target
    who = f"pip's {dist}" if dist else "a cv2"
    assert lines["OpenCV"] == (
        f"✘ OpenCV: OpenCV 4.10.0 from /usr/local/lib/python{python}/dist-packages/cv2 (GStreamer: NO, which csi:// "
        f"cameras need): {who} in /usr/local/lib/python{python}/dist-packages hides JetPack's OpenCV in "
        f"/usr/lib/python{python}/dist-packages; fix: {command}")


# -- issue 22 item 4: numpy 2 under JetPack's numpy-1 cv2 -------------------------------------------
def test_numpy_2_under_a_numpy_1_opencv_names_both_versions_and_the_guard(jetson):
    shutil.rmtree(jetson["venv"] / "numpy")
    fake_numpy(jetson["venv"], "2.1.0")  # a later pip install moved it
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), [])
    assert status == 1, text
    assert lines["numpy"] == (
        "✘ numpy: numpy 2.1.0 is installed, but the cv2 in /usr/lib/python3.10/dist-packages/cv2 was built against "
        "numpy 1.21.5 and does not import under numpy 2; fix: pip install 'numpy<2'; keep it there: pip config "
        "--site set install.constraint \"$PWD/constraints/jetpack6.txt\" (from the clone)")
    assert lines["OpenCV"] == ("✘ OpenCV: cv2 at /usr/lib/python3.10/dist-packages/cv2 does not import: "
                               "numpy.core.multiarray failed to import; fix: see the numpy line")


def test_the_runtime_says_the_numpy_versions_when_cv2_does_not_import(tmp_path):
    site = tmp_path / "site"
    fake_numpy(site, "2.1.0")
    fake_opencv(site, "4.8.0", gstreamer=True, numpy_built="1.21.5")
    proc = subprocess.run([sys.executable, "-c", "import mrcnn_edge.runtime.io.opencv"], capture_output=True,
                          text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("mrcnn_edge.runtime.io.opencv.OpenCVMissing: "), proc.stderr
    assert "numpy 2.1.0 is installed and this cv2 was built against numpy 1.x" in last
    assert "pip install 'numpy<2'" in last


def test_an_l4t_release_older_than_jetpack_61_is_refused(jetson):
    _write(jetson["root"] / "etc" / "nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 1, BOARD: generic\n")
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"], driver=CudaDriver()), [])
    assert status == 1 and lines["L4T"].startswith("✘ L4T: L4T R36.3.0 is older than JetPack 6.1"), text


def test_nvargus_daemon_not_running_fails_csi_only(jetson):
    (jetson["root"] / "proc" / "812" / "comm").write_text("bash\n")
    machine = _machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"])
    status, lines, _ = _run(machine, ["gpu"])
    assert status == 0 and lines["cameras"].startswith("– cameras: /dev/video0; nvargus-daemon NOT running")
    status, lines, _ = _run(machine, ["csi"])
    assert status == 1 and lines["cameras"].endswith("fix: sudo systemctl restart nvargus-daemon")


def test_the_command_runs_here_and_fails_a_target_this_machine_cannot_meet(capsys):
    """The real probes on this machine (no Jetson): every line printed, --for csi refused with exit 1."""
    assert main(["doctor", "--for", "csi"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0][2:] for line in out[:-1]] == [
        "L4T", "Python", "GPU", "cuda-python", "NVRTC", "TensorRT", "plugin", "OpenCV", "numpy", "cameras", "cache"]
    assert out[0].startswith("✘ L4T: not a Jetson") and out[-1].startswith("not ready for csi: L4T")


def test_a_venv_that_does_not_see_jetpacks_packages_is_named(jetson, tmp_path):
    python = make_venv(tmp_path / "plain-venv", system_site_packages=False)
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], python), [])
    assert status == 1, text
    cfg = tmp_path / "plain-venv" / "pyvenv.cfg"
    assert lines["Python"].endswith(
        f"the venv {tmp_path / 'plain-venv'} does not see JetPack's tensorrt and cv2 (made without "
        f"--system-site-packages); fix: set include-system-site-packages = true in {cfg}"), lines["Python"]


def test_without_any_nvrtc_the_jetson_fix_is_apt(jetson):
    shutil.rmtree(jetson["venv"] / "nvidia")
    for lib in (jetson["root"] / "usr/local/cuda-12.6/targets/aarch64-linux/lib").iterdir():
        lib.unlink()
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), [])
    assert status == 1, text
    assert lines["NVRTC"] == ("✘ NVRTC: cuda-python 12.6.2.post1 cannot load NVRTC 12: Failure finding libnvrtc.so.12; "
                              "fix: sudo apt install cuda-nvrtc-12-6 and export CUDA_HOME=/usr/local/cuda (JetPack's "
                              "NVRTC; remove pip's server build: pip uninstall -y nvidia-cuda-nvrtc-cu12)")


def test_the_venvs_own_constraints_file_is_seen_as_the_numpy_guard(jetson):
    # what 'pip config --site set install.constraint FILE' writes into the venv
    _write(jetson["python"].parent.parent / "pip.conf", "[install]\nconstraint = /home/u/mrcnn-edge/constraints/jetpack6.txt\n")
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), [])
    assert status == 0 and lines["numpy"] == "✔ numpy: numpy 1.26.4 (cv2 built against 1.21.5)", text


def test_a_pip_opencv_inside_the_venv_is_removed_with_the_venvs_pip(jetson):
    fake_opencv(jetson["venv"], "4.10.0", gstreamer=False, numpy_built="2.0.2", dist="opencv-python-headless")
    status, lines, text = _run(_machine(jetson["root"], [jetson["venv"], jetson["apt"]], jetson["python"]), [])
    assert status == 1, text
    assert lines["OpenCV"].endswith(f"pip's opencv-python-headless in {jetson['venv']} hides JetPack's OpenCV in "
                                    "/usr/lib/python3.10/dist-packages; fix: pip uninstall -y opencv-python-headless")
