"""scripts/gpu_check.sh on a machine without a GPU, its table, and the kernel launcher's build.

The script's GPU path runs on a device machine only; what runs here is every way of finding no GPU
(each says which, in one line, exit 0, nothing written), the table it prints from pytest's junit
files (the same code the GPU path ends with), and the launcher compiled with plain nvcc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mrcnn_edge.export.build import plugin_library as plugin_build

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
CC = shutil.which("gcc") or shutil.which("cc")

# A stand-in for the driver library, for the script's driver probe, built with CUINIT_RESULT and
# DEVICE_COUNT defined. CUDA driver API: "CUresult cuInit(unsigned int Flags) ... Flags must be 0";
# on a machine whose driver sees no device it returns "CUDA_ERROR_NO_DEVICE = 100: This indicates
# that no CUDA-capable devices were detected by the installed CUDA driver." cuGetErrorName "Sets
# *pStr to the address of a NULL-terminated string description of the name of the enum error code
# error" and returns CUDA_ERROR_INVALID_VALUE (1) for a code it does not know. cuDeviceGetCount
# "Returns in *count the number of devices ... If there is no such device, cuDeviceGetCount()
# returns 0", and is refused with CUDA_ERROR_NOT_INITIALIZED (3) before cuInit succeeded.
FAKE_LIBCUDA = r"""
static int initialised = 0;
int cuInit(unsigned int flags)
{
    if (flags != 0) return 1;
    initialised = CUINIT_RESULT == 0;
    return CUINIT_RESULT;
}
int cuGetErrorName(int error, const char** pStr)
{
    if (error != 100) { *pStr = 0; return 1; }
    *pStr = "CUDA_ERROR_NO_DEVICE";
    return 0;
}
int cuDeviceGetCount(int* count)
{
    if (!initialised) return 3;
    *count = DEVICE_COUNT;
    return 0;
}
"""
NO_SMI = "this machine has nvidia-smi: the test needs a PATH without one"


def _run_script(tmp_path: Path, *args: str, path_prefix: Path | None = None,
                ld_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path / "out"), MRCNN_EDGE_PYTHON=sys.executable)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    if ld_path is not None:
        env["LD_LIBRARY_PATH"] = str(ld_path)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)


def _fake_nvidia_smi(tmp_path: Path, output: str, status: int) -> Path:
    """A bin/ folder whose nvidia-smi prints `output` and exits with `status`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
    smi.chmod(0o755)
    return bin_dir


def _assert_one_line_no_gpu(proc: subprocess.CompletedProcess, tmp_path: Path, why: str) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("gpu_check: no GPU on this machine (") and why in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or ctypes.util.find_library("cuda") is not None,
                    reason="this machine has an NVIDIA driver")
def test_no_driver_is_one_line_and_exit_0(tmp_path):
    proc = _run_script(tmp_path)
    _assert_one_line_no_gpu(proc, tmp_path, "nvidia-smi not found and no NVIDIA driver: libcuda.so.1 does not load")


def test_driver_without_a_gpu_is_one_line_and_exit_0(tmp_path):
    # what nvidia-smi says (exit 6) where the driver is loaded and finds no device
    bin_dir = _fake_nvidia_smi(tmp_path, "No devices were found", 6)
    proc = _run_script(tmp_path, path_prefix=bin_dir)
    _assert_one_line_no_gpu(proc, tmp_path, "nvidia-smi -L lists no GPU: No devices were found")


@pytest.mark.skipif(ctypes.util.find_library("cuda") is not None, reason="this machine has libcuda")
def test_no_driver_library_is_one_line_and_exit_0(tmp_path):
    bin_dir = _fake_nvidia_smi(tmp_path, "GPU 0: Stand-in (UUID: GPU-0)", 0)
    proc = _run_script(tmp_path, path_prefix=bin_dir, ld_path=tmp_path / "empty")
    _assert_one_line_no_gpu(proc, tmp_path, "libcuda.so.1 does not load: ")


@pytest.mark.skipif(CC is None, reason="no C compiler (gcc) on this machine")
@pytest.mark.parametrize("smi", [True, False], ids=["nvidia-smi", "jetson-no-nvidia-smi"])
@pytest.mark.parametrize(("cuinit", "devices", "why"), [
    (100, 1, "cuInit failed: CUDA_ERROR_NO_DEVICE (100)"),
    (0, 0, "the NVIDIA driver sees no CUDA device"),
], ids=["cuinit-fails", "no-device"])
def test_driver_without_a_device_is_one_line_and_exit_0(tmp_path, smi, cuinit, devices, why):
    if not smi and shutil.which("nvidia-smi") is not None:
        pytest.skip(NO_SMI)
    bin_dir = _fake_nvidia_smi(tmp_path, "GPU 0: Stand-in (UUID: GPU-0)", 0) if smi else None
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    (tmp_path / "fake_cuda.c").write_text(FAKE_LIBCUDA)
    subprocess.run([CC, "-shared", "-fPIC", f"-DCUINIT_RESULT={cuinit}", f"-DDEVICE_COUNT={devices}",
                    str(tmp_path / "fake_cuda.c"), "-o", str(lib_dir / "libcuda.so.1")], check=True)
    proc = _run_script(tmp_path, path_prefix=bin_dir, ld_path=lib_dir)
    _assert_one_line_no_gpu(proc, tmp_path, why)


SAMPLE_TESTS = textwrap.dedent('''
    import pytest

    def test_kernel_case(record_property):
        record_property("max_abs_err", "3.1e-06")
        record_property("kernel_ms", "0.01234")
        record_property("torchvision_ms", "0.5")

    def test_plain():
        pass

    def test_broken():
        assert 1 == 2, "kernel and torchvision differ"

    def test_not_run():
        pytest.skip("torch sees no CUDA device")
''')


def _junit(tmp_path: Path, select: str) -> Path:
    """pytest's own junit file (as gpu_check.sh asks for it) for the tests of SAMPLE_TESTS in `select`."""
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    xml = tmp_path / f"{select.replace(' ', '_')}.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                    "-k", select, f"--junitxml={xml}", str(tmp_path / "test_sample.py")],
                   capture_output=True, cwd=tmp_path, timeout=120)
    return xml


def test_table_shows_each_check_and_fails_on_a_failure_or_skip(tmp_path):
    xml = _junit(tmp_path, "kernel_case or plain or broken or not_run")
    proc = _run_script(tmp_path, "--table", str(xml))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("sample::")}
    assert rows["sample::kernel_case"][:4] == ["pass", "3.1e-06", "0.0123", "ms"]
    assert "(tv 0.5000)" in " ".join(rows["sample::kernel_case"])
    assert rows["sample::plain"][:2] == ["pass", "-"] and rows["sample::plain"][-1] == "s"
    assert rows["sample::broken"][0] == "FAIL" and rows["sample::not_run"][0] == "SKIP"
    assert "sample::broken: FAIL: AssertionError: kernel and torchvision differ" in proc.stdout
    assert "sample::not_run: SKIP: torch sees no CUDA device" in proc.stdout
    assert "2 passed, 2 not passed" in proc.stdout


def test_table_passes_when_every_check_passed_and_not_on_missing_results(tmp_path):
    xml = _junit(tmp_path, "kernel_case or plain")
    proc = _run_script(tmp_path, "--table", str(xml))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 not passed: all GPU checks passed"
    # a run cut short by its time limit leaves no junit file: that is a failure, said so
    proc = _run_script(tmp_path, "--table", str(xml), str(tmp_path / "selftest.xml"))
    assert proc.returncode == 1
    assert re.search(r"^selftest\.xml +MISSING", proc.stdout, re.M) and "the run was cut short" in proc.stdout
    # a run that selected nothing is a failure too
    empty = _junit(tmp_path, "no_such_test")
    proc = _run_script(tmp_path, "--table", str(empty))
    assert proc.returncode == 1 and "no test selected" in proc.stdout


def test_a_stage_that_did_not_run_is_not_a_pass(tmp_path):
    """Every GPU test passed but the plugin's self-test stage did not run (no TensorRT headers): the
    table shows it as skipped and the run does not pass."""
    xml = _junit(tmp_path, "kernel_case or plain")
    stage = "compile::gpu_selftest_enqueue_matches_the_cpu_build"
    proc = _run_script(tmp_path, "--table", str(xml), f"--not-run={stage}: no TensorRT headers (carry .trt/)")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(rf"^{re.escape(stage)} +SKIP ", proc.stdout, re.M), proc.stdout
    assert f"{stage}: SKIP: not run: no TensorRT headers (carry .trt/)" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 passed, 1 not passed"
    assert "all GPU checks passed" not in proc.stdout


def test_the_script_reports_the_self_test_stage_when_it_does_not_run():
    """The GPU path (run on a device only) hands the table a --not-run row where it skips the stage."""
    script = SCRIPT.read_text()
    branch = re.search(r'else\n(.*?)\nfi\n', script[script.index('-k selftest --junitxml'):], re.S)
    assert branch and 'NOT_RUN+=("--not-run=' in branch.group(1), "the self-test stage's else branch changed"
    assert re.search(r'^print_table "\$\{TABLE_FILES\[@\]\}" \$\{NOT_RUN\[@\]\+', script, re.M)


@pytest.mark.slow
def test_launcher_compiles_with_plain_nvcc_and_refuses_bad_arguments(tmp_path):
    """The GPU test's launcher builds here (one architecture, Orin's) and loads without a GPU."""
    if plugin_build.find_nvcc() is None:
        pytest.skip("nvcc not found (install the CUDA toolkit or set CUDA_HOME)")
    sys.path.insert(0, str(ROOT / "tests" / "plugins"))  # the GPU test's launcher helpers
    from test_kernel_gpu import _Launch, build_launcher, load_launcher

    lib = load_launcher(build_launcher(tmp_path, "sm_87"))  # checks the ABI version and struct size
    invalid_value = 1  # cudaErrorInvalidValue
    assert lib.roi_align_launch(None, None) == invalid_value
    args = _Launch(feature_type=7)  # neither float32 (0) nor float16 (1): refused before any CUDA call
    assert lib.roi_align_launch(ctypes.byref(args), None) == invalid_value
    assert lib.roi_align_launcher_error_string(invalid_value) == b"invalid argument"


def test_the_gpu_self_test_runs_once_in_the_self_test_stage():
    """The GPU stage leaves the self-tests (they need TensorRT headers) to the self-test stage, whose
    selection holds the --gpu self-test: one table line per header set, not two."""
    script = SCRIPT.read_text()
    gpu_stage = re.search(r'-m gpu -k "([^"]+)"', script)
    selftest_stage = re.search(r'-k (\S+) --junitxml="\$OUTDIR/selftest\.xml"', script)
    assert gpu_stage and selftest_stage, "gpu_check.sh no longer selects its stages with -k"

    def collected(*select: str) -> set[str]:
        proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               *select, "tests/plugins/test_compile.py"], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        return {line.split("[")[0] for line in proc.stdout.splitlines() if "::" in line}  # any header sets

    gpu_test = "tests/plugins/test_compile.py::test_gpu_selftest_enqueue_matches_the_cpu_build"
    assert gpu_test in collected("-k", selftest_stage.group(1))
    assert gpu_test not in collected("-m", "gpu", "-k", gpu_stage.group(1))
