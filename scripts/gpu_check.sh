#!/usr/bin/env bash
# gpu_check.sh: the prepared check for a machine with an NVIDIA GPU (no TensorRT needed), in one
# run of under 8 minutes, ending in one table (check, result, max error, time):
#   * every test marked `gpu` (the files under tests/ that carry the marker): the NVRTC pre/post
#     kernels against the host reference, the plugin's CUDA kernel against torchvision's roi_align
#     and MultiScaleRoIAlign in fp32 and fp16 through plugins/tests/roi_align_launcher.cu (max
#     error and kernel time from CUDA events per case), and whatever else is GPU-marked;
#   * the plugin class self-tests (tests/plugins/test_compile.py -k selftest), when TensorRT headers
#     are at hand: the CPU self-test, its nvcc build, and that build's --gpu mode, which runs the
#     plugin's enqueue() on this GPU in fp32 and fp16 against the plugin's CPU build (one table line
#     per header set, with the largest error). The GPU stage leaves these to this one.
#
# On the device machine of this workplace (nvidia-h200: python3 there has torch, torchvision,
# numpy, pytest, onnx, onnxruntime, opencv and cuda-bindings, and nvcc matches the driver; nothing
# needs carrying for those):
#   once, here:  mkdir -p .trt && cp -r "$MRCNN_EDGE_TRT_HEADERS"/10.3 "$MRCNN_EDGE_TRT_HEADERS"/11.1 .trt/
#                echo /.trt/ >> .git/info/exclude
#   then:        run(command="bash scripts/gpu_check.sh", carry=[".trt"], timeout_s=540)
# A Python package missing there travels as wheels in .whl/ (carry ".whl" too; see the device
# README for `pip download`): they are installed with pip --no-index --no-deps into a scratch
# folder on PYTHONPATH. Python: $MRCNN_EDGE_PYTHON, else ./.venv/bin/python, else python3, the first
# that imports torch, torchvision, numpy and pytest. mrcnn_edge needs no install: when it is not
# importable, a scratch tree of links maps pyproject's package-dir onto the sources.
#
# Without a GPU it prints one line and exits 0. "No GPU" is the first of these that holds:
#   1. nvidia-smi is on PATH and `nvidia-smi -L` fails or lists no GPU (a driver, no usable device);
#   2. libcuda.so.1 does not load: no NVIDIA driver (with no nvidia-smi either: the line says both;
#      a Jetson has no nvidia-smi, so that alone is not "no GPU");
#   3. the driver's cuInit(0) fails (e.g. CUDA_ERROR_NO_DEVICE), or cuDeviceGetCount finds none.
# Exit status: 0 every check passed (or no GPU), 1 a check failed, errored, was skipped or timed
# out (a skipped GPU check is one that did not run; so is a stage that did not run, such as the
# self-tests without TensorRT headers: a row "SKIP" in the table), 2 no usable Python environment.
# Files: in $OUT when set (the device tool brings them back), else in a new temporary folder:
#   gpu_check.log, gpu_check_table.txt, gpu_tests.xml, selftest.xml (junit, per-test timings).
#
# `gpu_check.sh --table FILE.xml... [--not-run="NAME: WHY"]...` only prints the table of junit files
# and of stages that did not run (and exits as above).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROBE_PY="${MRCNN_EDGE_PYTHON:-python3}"
# Time limits per stage; together with set-up they stay under 8 minutes.
GPU_TESTS_TIMEOUT_S=300
SELFTEST_TIMEOUT_S=150

# The table of junit files: one row per test case, one per stage that did not run
# (--not-run="NAME: WHY"); exits 1 on a failure, error or skip, a stage not run, or no test.
print_table() {
  "$PROBE_PY" - "$@" <<'PY'
import sys
import xml.etree.ElementTree as ET

rows, notes, bad = [], {}, 0  # notes: line -> names of the checks it is about
paths = [a for a in sys.argv[1:] if not a.startswith("--not-run=")]
for stage in (a.removeprefix("--not-run=") for a in sys.argv[1:] if a.startswith("--not-run=")):
    name, _, why = stage.partition(": ")
    rows.append((name, "SKIP", "-", "-"))  # a check that did not run has not passed
    notes.setdefault(f"SKIP: not run: {why or 'no reason given'}", []).append(name)
    bad += 1
for path in paths:
    try:
        cases = list(ET.parse(path).getroot().iter("testcase"))
    except (OSError, ET.ParseError) as exc:
        rows.append((path.rsplit("/", 1)[-1], "MISSING", "-", "-"))
        notes[f"no junit results ({exc.__class__.__name__}): the run was cut short"] = [path]
        bad += 1
        continue
    if not cases:
        notes["no test selected"] = [path]
        bad += 1
    for case in cases:
        module = case.get("classname", "").rsplit(".", 1)[-1].removeprefix("test_")
        name = f"{module}::{case.get('name', '?').removeprefix('test_')}"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        result = {None: "pass", "failure": "FAIL", "error": "ERROR", "skipped": "SKIP"}[getattr(outcome, "tag", None)]
        if outcome is not None:
            bad += 1
            why = (outcome.get("message") or outcome.text or "").strip().splitlines()
            notes.setdefault(f"{result}: {why[0][:200] if why else 'no message'}", []).append(name)
        if "kernel_ms" in props:
            tv = props.get("torchvision_ms")
            took = f"{float(props['kernel_ms']):.4f} ms" + (f" (tv {float(tv):.4f})" if tv else "")
        else:
            took = f"{float(case.get('time', 'nan')):.1f} s"
        rows.append((name, result, props.get("max_abs_err", "-"), took))
width = max(len(r[0]) for r in rows) if rows else 5
print(f"{'check':<{width}}  {'result':<7} {'max err':<9} time")
for name, result, err, took in rows:
    print(f"{name:<{width}}  {result:<7} {err:<9} {took}")
for note, names in notes.items():  # one line per distinct reason: 16 skips for one cause are one line
    print(f"{names[0]}: {note}" if len(names) == 1 else f"{len(names)} checks ({names[0]}, ...): {note}")
passed = sum(r[1] == "pass" for r in rows)
print(f"{passed} passed, {len(rows) - passed} not passed" + ("" if bad else ": all GPU checks passed"))
sys.exit(1 if bad else 0)
PY
}

if [ "${1:-}" = "--table" ]; then
  shift
  print_table "$@"
  exit $?
fi

# ---- is there a GPU? One line and exit 0 when not. -------------------------------------------------
no_gpu() {
  echo "gpu_check: no GPU on this machine ($1); nothing to check"
  exit 0
}
# nvidia-smi first where there is one (desktops, servers); a Jetson has none, so its absence alone
# proves nothing and the driver library decides.
SMI_LIST=""
if command -v nvidia-smi >/dev/null 2>&1; then
  if ! SMI_LIST="$(nvidia-smi -L 2>&1)" || ! grep -q "^GPU " <<<"$SMI_LIST"; then
    no_gpu "nvidia-smi -L lists no GPU: $(head -n 1 <<<"$SMI_LIST")"
  fi
fi
# The driver API, as mrcnn_edge.runtime.gpu.trt_platform.cuda_driver asks it (stdlib only: this runs
# before any environment is set up). cuInit(unsigned int Flags): "Flags must be 0".
DRIVER="$("$PROBE_PY" - "$([ -n "$SMI_LIST" ] && echo smi)" 2>&1 <<'PY'
import ctypes
import sys

lib, errors = None, []
for name in ("libcuda.so.1", "libcuda.so"):
    try:
        lib = ctypes.CDLL(name)
        break
    except OSError as exc:
        errors.append(exc)
if lib is None:
    print(f"libcuda.so.1 does not load: {errors[0]}" if sys.argv[1]
          else "nvidia-smi not found and no NVIDIA driver: libcuda.so.1 does not load")
    raise SystemExit(1)
rc = lib.cuInit(0)
if rc != 0:
    name = ctypes.c_char_p()
    lib.cuGetErrorName(rc, ctypes.byref(name))
    print(f"cuInit failed: {(name.value or b'error').decode()} ({rc})")
    raise SystemExit(1)
count = ctypes.c_int(0)
if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
    print("the NVIDIA driver sees no CUDA device")
    raise SystemExit(1)
print(f"{count.value} CUDA device(s)")
PY
)" || no_gpu "$(head -n 1 <<<"${DRIVER:-the driver probe did not run (no $PROBE_PY)}")"

# ---- a GPU: set up, run, tabulate ----------------------------------------------------------------
OUTDIR="${OUT:-$(mktemp -d -t gpu-check.XXXXXX)}"
mkdir -p "$OUTDIR"
WORK="$(mktemp -d -t gpu-check-work.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
LOG="$OUTDIR/gpu_check.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
START=$SECONDS

say "gpu_check: the driver reports $DRIVER"
if [ -n "$SMI_LIST" ]; then
  say "gpu_check: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>&1 | head -n 1)"
fi
say "gpu_check: $(command -v nvcc >/dev/null && nvcc --version | tail -n 1 || echo 'nvcc not found: the kernel checks cannot run')"

WHEELS=("$ROOT"/.whl/*.whl)
if [ -e "${WHEELS[0]}" ]; then
  say "gpu_check: installing ${#WHEELS[@]} carried wheel(s) into a scratch folder"
  "$PROBE_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "${WHEELS[@]}" >>"$LOG" 2>&1 || { say "gpu_check: installing .whl/ failed (see $LOG)"; exit 2; }
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi

PY=""
for candidate in "${MRCNN_EDGE_PYTHON:-}" "$ROOT/.venv/bin/python" python3; do
  [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 || continue
  if "$candidate" -c 'import torch, torchvision, numpy, pytest' >/dev/null 2>&1; then PY="$candidate"; break; fi
done
if [ -z "$PY" ]; then
  say "gpu_check: no Python with torch, torchvision, numpy and pytest (set MRCNN_EDGE_PYTHON or carry wheels in .whl/)"
  exit 2
fi

# mrcnn_edge from the sources: pyproject maps mrcnn_edge.export to export/ and so on, which a plain
# PYTHONPATH cannot express; a tree of links can. PYTHONSAFEPATH keeps the working directory (the
# repository, with its unmapped mrcnn_edge/) off sys.path so that the tree is what is imported.
IMPORT_CHECK='import mrcnn_edge.export.build.plugin_library, mrcnn_edge.runtime, mrcnn_edge.plugins'
if ! (cd "$WORK" && "$PY" -c "$IMPORT_CHECK") >/dev/null 2>&1; then
  "$PY" - "$ROOT" "$WORK/src" <<'PY' >>"$LOG" 2>&1 || { say "gpu_check: cannot map the sources (see $LOG)"; exit 2; }
import sys
import tomllib
from pathlib import Path

root, tree = Path(sys.argv[1]), Path(sys.argv[2])
mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
    target = tree.joinpath(*package.split("."))
    if target.is_symlink():
        target.unlink()
    target.mkdir(parents=True, exist_ok=True)
    for entry in (root / folder).iterdir():
        link = target / entry.name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(entry)
PY
  export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
  if ! (cd "$WORK" && "$PY" -c "$IMPORT_CHECK") >>"$LOG" 2>&1; then
    say "gpu_check: $PY cannot import mrcnn_edge from $ROOT (see $LOG)"
    exit 2
  fi
fi
VERSIONS='import sys, torch, torchvision as tv; print(sys.executable, sys.version.split()[0], "torch", torch.__version__, "torchvision", tv.__version__)'
say "gpu_check: Python $("$PY" -c "$VERSIONS" 2>&1 | tail -n 1)"

if [ -z "${MRCNN_EDGE_TENSORRT_INCLUDE:-}" ]; then
  TRT_DIRS=("$ROOT"/.trt/*/include)
  [ -e "${TRT_DIRS[0]}" ] && export MRCNN_EDGE_TENSORRT_INCLUDE="$(IFS=:; echo "${TRT_DIRS[*]}")"
fi

cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PYTEST=("$PY" -m pytest -rA -p no:cacheprovider -o junit_family=xunit1)
mapfile -t GPU_FILES < <(grep -rl --include="test_*.py" "mark\.gpu" tests | sort)
say "gpu_check: pytest -m gpu over ${GPU_FILES[*]} (limit ${GPU_TESTS_TIMEOUT_S} s)"
# the self-tests need TensorRT headers and run in their own stage below
timeout "$GPU_TESTS_TIMEOUT_S" "${PYTEST[@]}" -m gpu -k "not selftest" --junitxml="$OUTDIR/gpu_tests.xml" \
  "${GPU_FILES[@]}" >>"$LOG" 2>&1
TABLE_FILES=("$OUTDIR/gpu_tests.xml")

NOT_RUN=()
if [ -n "${MRCNN_EDGE_TENSORRT_INCLUDE:-}" ]; then
  say "gpu_check: plugin class self-tests (CPU, nvcc build, --gpu) against $MRCNN_EDGE_TENSORRT_INCLUDE (limit ${SELFTEST_TIMEOUT_S} s)"
  timeout "$SELFTEST_TIMEOUT_S" "${PYTEST[@]}" -k selftest --junitxml="$OUTDIR/selftest.xml" \
    tests/plugins/test_compile.py >>"$LOG" 2>&1
  TABLE_FILES+=("$OUTDIR/selftest.xml")
else
  # the plugin class never ran on this GPU: the table says so and the run does not pass
  WHY="no TensorRT headers (carry .trt/, see the top of $0)"
  say "gpu_check: plugin class self-tests not run: $WHY"
  NOT_RUN+=("--not-run=compile::gpu_selftest_enqueue_matches_the_cpu_build: $WHY")
fi

say ""
print_table "${TABLE_FILES[@]}" ${NOT_RUN[@]+"${NOT_RUN[@]}"} | tee "$OUTDIR/gpu_check_table.txt" | tee -a "$LOG"
STATUS=${PIPESTATUS[0]}
say "gpu_check: $((SECONDS - START)) s in all; log, table and junit files in $OUTDIR"
exit "$STATUS"
