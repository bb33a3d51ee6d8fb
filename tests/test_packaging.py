"""Packaging: what each install pulls in, and that the README's install commands match pyproject.toml.

The Jetson install must keep JetPack's GStreamer-enabled OpenCV (so no OpenCV wheel may come with
the base install or the Jetson extras), must not pull torch, and must pick a cuda-python whose
major matches the JetPack's CUDA driver (cuda.bindings 13 does not run on JetPack 6's CUDA 12).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

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


@pytest.mark.parametrize("extra,cuda_major", [("jetpack6", 12), ("jetpack7", 13)])
def test_jetson_extras_match_the_jetpack_cuda_major(extra, cuda_major):
    reqs = _resolve([extra])
    names = _names(reqs)
    assert not names & OPENCV and not names & HEAVY, names
    # JetPack 6: cuda-python 12.6 .. 12.9 (12.6.2.post1 is the oldest 12.x with a cp310 aarch64 wheel)
    ok = {12: ["12.6.2.post1", "12.9.10"], 13: ["13.0.0", "13.4.4"]}[cuda_major]
    bad = {12: ["13.0.0", "12.5.0"], 13: ["12.9.10", "14.0.0"]}[cuda_major]
    assert all(_allowed(reqs, "cuda-python", v) for v in ok), (extra, ok)
    assert not any(_allowed(reqs, "cuda-python", v) for v in bad), (extra, bad)
    # JetPack's OpenCV and TensorRT bindings are seen through --system-site-packages: numpy 1.x
    assert _allowed(reqs, "numpy", "1.26.4") and not _allowed(reqs, "numpy", "2.0.0")


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
    section = _section(README, "### Install on a Jetson")
    lines = _shell_lines(section)
    venv = [line for line in lines if " -m venv " in line]
    assert venv and all("--system-site-packages" in line for line in venv), venv
    pips = [line for line in lines if re.match(r"(python -m )?pip install ", line)]
    installs = [line for line in pips if "mrcnn-edge" in line]
    assert installs == ["pip install 'mrcnn-edge[jetpack6]'"], installs  # the JetPack 6.1 paste
    for line in pips:
        assert not re.search(r"opencv", line, re.I), f"the Jetson install must not pip-install OpenCV: {line}"
    named = _extras_named(section)
    assert {"jetpack6", "jetpack7"} <= named
    for extra in named:
        _resolve([extra])  # raises for an extra pyproject.toml lacks
    apt = " ".join(line for line in lines if line.startswith("sudo apt install"))
    assert "python3-libnvinfer" in apt and "python3-venv" in apt


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
    missing = {e: sorted(p) for e, p in named.items() if e not in EXTRAS and not re.fullmatch(r"\{\w+\}", e)}
    assert not missing, f"extras named but not defined in pyproject.toml: {missing}"
