"""Packaging: what each install pulls in, and that the README's install commands match pyproject.toml.

The Jetson install must keep JetPack's GStreamer-enabled OpenCV (so no OpenCV wheel may come with
the base install or the Jetson extras), must not pull torch, and must pick a cuda-python whose CUDA
major *and minor* match the JetPack line's driver (a Jetson runs no newer runtime than its driver:
cuda-python 12.9 fails on JetPack 6's CUDA 12.6). One extra and one constraints file per line of
mrcnn_edge/core/jetpack.py, and the pins resolve to aarch64 wheels for the line's Python on the
package index (asked the way ``pip download --platform ... --only-binary=:all:`` asks).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mrcnn_edge.core.jetpack import JETPACK_LINES, JetPackLine

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME = canonicalize_name(PROJECT["name"])
EXTRAS = PROJECT["optional-dependencies"]
README = (ROOT / "README.md").read_text()

OPENCV = {"opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"}
HEAVY = {"torch", "torchvision", "onnx", "onnxscript", "onnxruntime"}


def _resolve(extras: list[str]) -> list[Requirement]:
    """Requirements of the base install plus ``extras``, following ``mrcnn-edge[...]`` references."""
    out, seen, todo = [Requirement(r) for r in PROJECT["dependencies"]], set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in EXTRAS, f"extra [{extra}] is named but pyproject.toml does not define it"
        for text in EXTRAS[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == NAME:
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


def _names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def _allowed(reqs: list[Requirement], name: str, version: str) -> bool:
    """Whether every requirement on ``name`` admits ``version``."""
    specs = [r.specifier for r in reqs if canonicalize_name(r.name) == name]
    assert specs, f"{name} is not required"
    return all(s.contains(Version(version), prereleases=True) for s in specs)


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    level = heading.split(" ")[0]
    rest = text[start + len(heading):]
    ends = [m.start() for m in re.finditer(r"^#{1,%d} " % len(level), rest, re.M)]
    return heading + rest[: ends[0] if ends else len(rest)]


def _shell_lines(section: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]


def _extras_named(text: str) -> set[str]:
    return {e.strip() for group in re.findall(r"mrcnn-edge\[([^\]]+)\]", text) for e in group.split(",")} | {
        e.strip() for group in re.findall(r"'\.\[([^\]]+)\]'", text) for e in group.split(",")}


# -- pyproject.toml ---------------------------------------------------------------------------------
def test_base_install_has_no_opencv_and_no_torch():
    """pip's OpenCV would shadow JetPack's GStreamer build; torch does not belong on the device."""
    base = _names([Requirement(r) for r in PROJECT["dependencies"]])
    assert not base & OPENCV, f"the base install pulls {base & OPENCV}"
    assert not base & HEAVY, f"the base install pulls {base & HEAVY}"


LINES = {line.extra: line for line in JETPACK_LINES}
CUDA_PACKAGES = ("cuda-python", "cuda-bindings")


def _constraints(line: JetPackLine) -> list[Requirement]:
    text = (ROOT / line.constraints).read_text()
    return [Requirement(r) for r in (ln.split("#")[0].strip() for ln in text.splitlines()) if r]


def test_one_extra_per_jetpack_line():
    jetson = {name for name in EXTRAS if name.startswith("jetpack")}
    assert jetson == set(LINES), f"pyproject.toml's Jetson extras {sorted(jetson)} vs the JetPack lines {sorted(LINES)}"


@pytest.mark.parametrize("extra", sorted(LINES))
def test_jetson_extras_pin_the_jetpack_cuda_minor(extra):
    line, reqs = LINES[extra], _resolve([extra])
    names = _names(reqs)
    assert not names & OPENCV and not names & HEAVY, names
    major, minor = line.cuda
    # cuda-python's CUDA minor is its own major.minor (12.6.2.post1: CUDA 12.6): exactly the driver's
    ok = [f"{major}.{minor}.0", f"{major}.{minor}.2.post1", f"{major}.{minor}.9"]
    bad = [f"{major}.{minor + 1}.0", f"{major}.9.10", f"{major + 1}.0.0", f"{major - 1}.9.0"]
    if minor:
        bad.append(f"{major}.{minor - 1}.9")
    for package in [p for p in CUDA_PACKAGES if p in names]:
        assert all(_allowed(reqs, package, v) for v in ok), (extra, package, ok)
        bad_here = [v for v in bad if v.split(".")[:2] != [str(major), str(minor)]]
        assert not any(_allowed(reqs, package, v) for v in bad_here), (extra, package, bad_here)
    assert "cuda-python" in names
    if major >= 13:  # cuda-python 13 is a metapackage; the binary is cuda-bindings, pinned alike
        assert "cuda-bindings" in names
    # JetPack's OpenCV and TensorRT bindings are seen through --system-site-packages: numpy 1.x
    assert _allowed(reqs, "numpy", "1.26.4") and not _allowed(reqs, "numpy", "2.0.0")


@pytest.mark.parametrize("extra", sorted(LINES))
def test_each_line_ships_constraints_saying_what_its_extra_pins(extra):
    """The constraints file keeps a later ``pip install`` in the venv from moving what the extra pinned."""
    line = LINES[extra]
    pinned = {canonicalize_name(r.name): str(r.specifier) for r in _resolve([extra])
              if canonicalize_name(r.name) in {"numpy", *CUDA_PACKAGES}}
    constrained = {canonicalize_name(r.name): str(r.specifier) for r in _constraints(line)}
    assert constrained == pinned, (line.constraints, constrained, pinned)


def _index_resolves(line: JetPackLine, requirements: list[str], tmp: Path) -> dict[str, str]:
    """Ask the package index which wheels pip would install on the line's device: aarch64 Linux,
    the line's Python, any manylinux tag its glibc runs; binary wheels only. Returns name -> version.
    Skips only when the index cannot be reached."""
    glibc_major, glibc_minor = line.glibc
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_{glibc_major}_{m}_aarch64" for m in range(17, glibc_minor + 1)]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", str(tmp / "report.json"), "--target", str(tmp / "target"), "--only-binary=:all:",
           "--python-version", line.python, "--timeout", "20", "--retries", "1",
           "-c", str(ROOT / line.constraints)]
    for platform in platforms:
        cmd += ["--platform", platform]
    proc = subprocess.run(cmd + requirements, capture_output=True, text=True, timeout=600)
    unreachable = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                   "Network is unreachable", "ConnectTimeout", "ReadTimeout", "Could not fetch URL", "ProxyError")
    if proc.returncode != 0 and any(u in proc.stderr for u in unreachable):
        pytest.skip(f"the package index cannot be reached: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp / "report.json").read_text())
    for item in report["install"]:
        assert item["download_info"]["url"].endswith(".whl"), item["download_info"]["url"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in report["install"]}


@pytest.mark.slow
@pytest.mark.parametrize("extra", sorted(LINES))
def test_jetson_extras_resolve_to_wheels_for_the_device(extra, tmp_path):
    """What ``pip install -c constraints/<line>.txt '.[<line>]'`` installs on the device exists as wheels:
    aarch64, cp310 for JetPack 6, cp312 for JetPack 7, with the pinned CUDA minor."""
    line = LINES[extra]
    requirements = [str(r) for r in _resolve([extra])]
    versions = _index_resolves(line, requirements, tmp_path)
    for package in [p for p in CUDA_PACKAGES if p in versions]:
        assert Version(versions[package]).release[:2] == line.cuda, (package, versions[package], line.cuda_text)
    assert "cuda-python" in versions and Version(versions["numpy"]).major == 1, versions
    assert not set(versions) & OPENCV and not set(versions) & HEAVY, versions


@pytest.mark.parametrize("extra,cuda_major", [("cuda12", 12), ("cuda13", 13)])
def test_desktop_cuda_extras_pin_one_major(extra, cuda_major):
    reqs = _resolve([extra])
    assert _allowed(reqs, "cuda-python", f"{cuda_major}.9.0")
    assert not _allowed(reqs, "cuda-python", f"{cuda_major + 1}.0.0")
    assert not _allowed(reqs, "cuda-python", f"{cuda_major - 1}.9.0")


def test_desktop_and_dev_installs_still_get_opencv():
    """synth, validate and the demo import cv2: [model], [export] and [dev] bring pip's OpenCV."""
    for extra in ("opencv", "model", "export", "dev"):
        assert _names(_resolve([extra])) & OPENCV, extra


# -- the README's commands --------------------------------------------------------------------------
def test_readme_jetson_install_is_consistent_with_pyproject():
    """The JetPack 6.1/6.2 paste: a clone, a --system-site-packages venv, the constraints made the venv's
    own, the line's extra installed under them, the plugin built, and the doctor checking the result."""
    section = _section(README, "### Install on a Jetson")
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    lines = _shell_lines(f"```bash\n{block}```")
    assert any(line.startswith("git clone ") for line in lines), lines
    venv = [line for line in lines if " -m venv " in line]
    assert venv and all("--system-site-packages" in line for line in venv), venv
    line6 = LINES["jetpack6"]
    pips = [line for line in lines if re.match(r"(python -m )?pip install ", line)]
    installs = [line for line in pips if "jetpack" in line]
    assert installs == [f"pip install -c {line6.constraints} '.[{line6.extra}]'"], installs
    guard = [line for line in lines if line.startswith("pip config --site set install.constraint")]
    assert guard and line6.constraints in guard[0], guard
    assert lines.index(guard[0]) < lines.index(installs[0])
    for line in pips:
        assert not re.search(r"opencv", line, re.I), f"the Jetson install must not pip-install OpenCV: {line}"
    assert any(line.startswith("mrcnn-edge build-plugin") for line in lines)
    assert lines[-1] == "mrcnn-edge doctor --for jetson", lines[-1]
    apt = " ".join(line for line in lines if line.startswith("sudo apt install"))
    # the TensorRT headers are in libnvinfer-dev (python3-libnvinfer-dev holds none)
    assert "python3-libnvinfer" in apt and "libnvinfer-dev" in apt.replace("python3-libnvinfer-dev", "")
    assert "python3-venv" in apt and "git" in apt.split()
    # every JetPack line is named with its extra and its constraints file
    named = _extras_named(section)
    assert set(LINES) <= named, named
    for extra in named:
        _resolve([extra])  # raises for an extra pyproject.toml lacks
    for line in JETPACK_LINES:
        assert line.constraints in section and (ROOT / line.constraints).is_file(), line.constraints


def test_troubleshooting_starts_with_the_doctor():
    trouble = _section(README, "## Troubleshooting")
    first = re.search(r"^- (.*)$", trouble, re.M)
    assert first and "mrcnn-edge doctor" in first.group(1), first


def test_readme_job2_builds_and_runs_with_the_base_install():
    job2 = _section(README, "## Job 2:")
    lines = _shell_lines(job2)
    assert any(line.startswith("mrcnn-edge build ") and ".onnx" in line for line in lines)
    assert any(line.startswith("mrcnn-edge run ") and "csi://0" in line for line in lines)
    pips = [line for line in lines if "pip install" in line]
    assert not [line for line in pips if re.search(r"\[(export|model|dev)\]", line)], pips
    # cuda-python only through an extra that pins the JetPack's CUDA major, never bare
    assert not [line for line in pips if "cuda-python" in line], pips


def test_every_extra_the_project_names_exists():
    """Hints like "pip install 'mrcnn-edge[X]'" in READMEs and error messages name real extras."""
    files = [ROOT / "README.md", *(ROOT / "runtime").glob("*.md"), *(ROOT / "runtime").glob("*.py"),
             *(ROOT / "mrcnn_edge").rglob("*.py"), *(ROOT / "export").glob("*.py")]
    named: dict[str, set[str]] = {}
    for path in files:
        text = path.read_text()
        extras = _extras_named(text)
        # errors.require(module, extra, ...) builds the hint from its second argument
        extras |= set(re.findall(r"\brequire\(\s*['\"][\w.]+['\"]\s*,\s*['\"]([\w-]+)['\"]", text))
        for extra in extras:
            named.setdefault(extra, set()).add(str(path.relative_to(ROOT)))
    missing = {e: sorted(p) for e, p in named.items() if e not in EXTRAS and not re.fullmatch(r"\{[\w.]+\}", e)}
    assert not missing, f"extras named but not defined in pyproject.toml: {missing}"
