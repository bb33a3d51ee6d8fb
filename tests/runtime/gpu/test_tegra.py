"""The runtime's rules for a Jetson (Tegra): CUDA minors compared, JetPack's NVRTC found and loaded
before cuda-python looks for one, and hints that point to apt rather than pip's server builds.

cuda_util's parts are tested here without a GPU: the pure version rules, check_versions over a
stand-in of the three cuda-python calls it makes, the NVRTC lookup in a faked /usr/local/cuda, and
the preload against the real cuda-python (cuda.pathfinder) of this venv.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mrcnn_edge.runtime.gpu import cuda_util


@pytest.mark.parametrize("bindings,driver,nvrtc,tegra,words", [
    ("12.9.10", 12060, (12, 9), True, ["CUDA 12.9 runtime, newer than this Jetson's CUDA 12.6", "'cuda-python==12.6.*'"]),
    ("12.6.2.post1", 12060, (12, 9), True, ["NVRTC 12.9 is newer", "sudo apt install cuda-nvrtc-12-6", "CUDA_HOME=/usr/local/cuda"]),
    ("12.6.2.post1", 12060, (13, 0), True, ["needs NVRTC 12", "sudo apt install cuda-nvrtc-12-6"]),
    ("13.2.0", 13000, (13, 0), True, ["CUDA 13.2 runtime, newer than this Jetson's CUDA 13.0", "'cuda-python==13.0.*' (the [jetpack7] extra)"]),
    ("13.0.3", 12060, (13, 0), True, ["needs an NVIDIA driver for CUDA 13", "pip install 'cuda-python==12.6.*'"]),
])
def test_tegra_version_rules(bindings, driver, nvrtc, tegra, words):
    line = cuda_util.version_problem(bindings, driver, nvrtc, tegra)
    assert line is not None and "\n" not in line, line
    for w in words:
        assert w in line, line


@pytest.mark.parametrize("bindings,driver,nvrtc", [
    ("12.9.10", 12060, (12, 9)),      # a desktop: CUDA minor version compatibility
    ("12.6.2.post1", 12090, (12, 6)),  # a Jetson with cuda-compat 12.9: an older runtime is fine
])
def test_minors_are_compared_on_a_jetson_only(bindings, driver, nvrtc):
    assert cuda_util.version_problem(bindings, driver, nvrtc, tegra=False) is None
    assert cuda_util.version_problem("12.6.2.post1", 12060, (12, 6), tegra=True) is None


def test_check_versions_compares_minors_on_a_jetson(monkeypatch):
    """check_versions asks cuda-python (here a stand-in of its three calls) and the Tegra release."""
    class Runtime:
        @staticmethod
        def cudaDriverGetVersion():
            return (0, 12060)

        @staticmethod
        def cudaRuntimeGetVersion():
            return (0, 12090)

    class Nvrtc:
        @staticmethod
        def nvrtcVersion():
            return (0, 12, 6)

    monkeypatch.setattr(cuda_util, "cuda_modules", lambda: (None, Runtime, Nvrtc))
    monkeypatch.setattr(cuda_util, "bindings_version", lambda: "12.9.10")
    monkeypatch.setattr(cuda_util, "is_tegra", lambda root="/": False)
    cuda_util.check_versions()  # a desktop: fine
    monkeypatch.setattr(cuda_util, "is_tegra", lambda root="/": True)
    with pytest.raises(cuda_util.UserError, match=r"newer than this Jetson's CUDA 12\.6 driver.*'cuda-python==12\.6\.\*'"):
        cuda_util.check_versions()


# -- issue 22 item 5: JetPack's NVRTC found without help ------------------------------------------
def test_jetpacks_nvrtc_is_found_in_usr_local_cuda(tmp_path):
    # apt's cuda-nvrtc-12-6: the library under targets/, lib64 and /usr/local/cuda as links to it
    lib = tmp_path / "usr/local/cuda-12.6/targets/aarch64-linux/lib"
    lib.mkdir(parents=True)
    (lib / "libnvrtc.so.12.6.68").write_bytes(b"")
    (lib / "libnvrtc.so.12").symlink_to("libnvrtc.so.12.6.68")
    (tmp_path / "usr/local/cuda-12.6/lib64").symlink_to("targets/aarch64-linux/lib")
    (tmp_path / "usr/local/cuda").symlink_to("cuda-12.6")
    found = cuda_util.system_nvrtc(12, environ={}, root=tmp_path)
    assert found == tmp_path / "usr/local/cuda/lib64/libnvrtc.so.12"
    assert cuda_util.nvrtc_file_version(found) == (12, 6)
    assert cuda_util.system_nvrtc(13, environ={}, root=tmp_path) is None
    elsewhere = tmp_path / "opt/cuda/lib64/libnvrtc.so.12"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"")
    assert cuda_util.system_nvrtc(12, environ={"CUDA_HOME": str(tmp_path / "opt/cuda")}, root=tmp_path) == elsewhere


def test_a_preloaded_system_nvrtc_wins_over_the_pip_wheel(tmp_path):
    """Real cuda-python (cuda.pathfinder): the NVRTC loaded before it looks is the one it takes, not
    the wheel in site-packages. The "system" NVRTC is this venv's wheel library seen through a
    CUDA_HOME symlink, so the load succeeds; pathfinder reports how it found it."""
    pytest.importorskip("cuda.pathfinder", reason="needs cuda-python 12.9+ (cuda.pathfinder)")
    ask = "from cuda.pathfinder import load_nvidia_dynamic_lib as load; d = load('nvrtc'); print(d.found_via, d.abs_path)"
    proc = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout.startswith("site-packages "):
        pytest.skip(f"no NVRTC wheel in this venv: {(proc.stderr or proc.stdout).strip()[-200:]}")
    wheel = Path(proc.stdout.split(" ", 1)[1].strip())
    major = int(wheel.name.split(".so.")[1].split(".")[0])
    home = tmp_path / "cuda"
    (home / "lib64").mkdir(parents=True)
    (home / "lib64" / wheel.name).symlink_to(wheel)
    code = textwrap.dedent(f"""
        from mrcnn_edge.runtime.gpu import cuda_util
        cuda_util.is_tegra = lambda root="/": {{tegra}}
        cuda_util.bindings_version = lambda: "{major}.0.0"
        cuda_util.cuda_modules()
        from cuda.pathfinder import load_nvidia_dynamic_lib
        print(load_nvidia_dynamic_lib("nvrtc").found_via)
        """)
    env = {"CUDA_HOME": str(home), "PATH": "/usr/bin:/bin"}
    seen = {}
    for tegra in (True, False):
        proc = subprocess.run([sys.executable, "-c", code.replace("{tegra}", str(tegra))], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        seen[tegra] = proc.stdout.strip().splitlines()[-1]
    assert seen == {True: "was-already-loaded-from-elsewhere", False: "site-packages"}, seen
