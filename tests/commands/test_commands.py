"""``mrcnn-edge demo`` and ``mrcnn-edge benchmark`` through the CLI, at the smallest settings they take.

The demo runs once per module (64x64 canvas, 2 frames, 1 validation image; its two exports take
most of its time) and its portable ONNX is reused by the benchmark test. Bad input must be one
line on stderr, a non-zero exit and nothing written.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="demo and benchmark need the [export] extra")
pytest.importorskip("onnxruntime", reason="demo and benchmark need the [export] extra")

from mrcnn_edge.commands.cli import main  # noqa: E402 - after the skips

CANVAS = "64x64"


def _cli(argv: list[str], capsys) -> tuple[int, str, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def _table_rows(text: str) -> dict[str, list[str]]:
    """Rows of the first markdown table in ``text`` whose header starts with ``| backend``, by backend."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| backend |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    captured: dict[str, object] = {}
    with pytest.MonkeyPatch.context() as mp:
        import io
        import sys

        stdout, stderr = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", stdout)
        mp.setattr(sys, "stderr", stderr)
        code = main(["demo", "--out", str(out), "--input-size", CANVAS, "--frames", "2", "--validate-images", "1"])
    captured.update(code=code, out=out, stdout=stdout.getvalue(), stderr=stderr.getvalue())
    return captured


@pytest.mark.slow
def test_demo_writes_every_artefact_and_a_report(demo_run):
    out: Path = demo_run["out"]
    assert demo_run["code"] == 0, demo_run["stderr"][-2000:]
    for name in ("demo_tensorrt.onnx", "demo_portable.onnx", "synthetic.mp4", "segmented.mp4", "contact_sheet.png",
                 "report.md", "validation_tensorrt.md", "validation_portable.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    import cv2

    cap = cv2.VideoCapture(str(out / "segmented.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    cap.release()
    assert cv2.imread(str(out / "contact_sheet.png")) is not None
    report = (out / "report.md").read_text()
    steps = dict(re.findall(r"^\| (load|export tensorrt|export portable|validate|segment video|sheet) \| ([^|]+) \|",
                            report, re.M))
    assert set(steps) == {"load", "export tensorrt", "export portable", "validate", "segment video", "sheet"}
    assert all(float(sec) >= 0 for sec in steps.values())
    assert "| validate |" in report and "PASS" in report and "canvas 64x64" in report
    # the runtime step names the backend that ran it: the one 'auto' picks here (OpenVINO on an x86
    # CPU where installed, else ONNX Runtime), not a fixed "ONNX Runtime"
    from mrcnn_edge.runtime.backends import backend_for

    ran = backend_for(out / "demo_portable.onnx").name
    assert re.search(rf"== 4/5 segment a synthetic video \(2 frames\) with the runtime: {ran} \(", demo_run["stderr"])
    assert re.search(rf"^\| segment video \| [\d.]+ \| \S*segmented\.mp4 \({ran} \(", report, re.M)
    assert re.search(r"^demo finished in [\d.]+ min: .*report\.md", demo_run["stdout"], re.M)
    # the validation table went to stdout too, both flavors
    assert demo_run["stdout"].count("**PASS**") == 2
    # validated on annotated images of the demo's validation split: AP per runner in both tables
    assert (out / "validation_set" / "annotations.json").is_file()
    for flavor in ("tensorrt", "portable"):
        assert "mask AP" in (out / f"validation_{flavor}.md").read_text(), flavor
    # and bf16 judged as 'validate --annotations' judges it: what the line says is in the model and is what ran
    from mrcnn_edge.core.contract import validated_drop
    from mrcnn_edge.core.metadata import read_onnx_metadata

    recorded = validated_drop(read_onnx_metadata(out / "demo_portable.onnx")[1], "bf16") is not None
    line = re.search(r"^OpenVINO bf16 on 1 annotated images: .*$", demo_run["stderr"], re.M)
    if ran == "openvino" and line:
        assert ("recorded in the model's metadata" in line.group(0)) == recorded
        assert re.search(r"with the runtime: openvino \(CPU, " + ("bf16" if recorded else "fp32"), demo_run["stderr"])
    else:
        assert not recorded


@pytest.mark.parametrize("argv,words", [
    (["--input-size", "100x64"], "multiples of 32"),
    (["--frames", "0"], "--frames"),
    (["--input-size", "big"], "is not HxW"),
])
def test_demo_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "out"
    code, _, err = _cli(["demo", "--out", str(out), *argv], capsys)
    assert code != 0 and len(err) == 1 and err[0].startswith("mrcnn-edge: error: ") and words in err[0]
    assert not out.exists()


def test_demo_refuses_a_file_as_its_folder(tmp_path, capsys):
    out = tmp_path / "report.txt"
    out.write_text("keep me")
    code, _, err = _cli(["demo", "--out", str(out), "--input-size", CANVAS], capsys)
    assert code != 0 and len(err) == 1 and "is not a folder" in err[0]
    assert out.read_text() == "keep me"


@pytest.mark.slow
def test_benchmark_prints_and_writes_a_table_of_numbers(demo_run, tmp_path, capsys):
    """Rows over a set of frames (the demo's validation split): mean and median per frame, the
    speed-up of the means, a floor where the row is an ONNX model, AP beside each row."""
    assert demo_run["code"] == 0
    onnx = demo_run["out"] / "demo_portable.onnx"
    js, md = tmp_path / "bench.json", tmp_path / "bench.md"
    code, stdout, err = _cli(["benchmark", "--input-size", CANVAS, "--frames", "2", "--warmup", "0",
                              "--backends", "torchvision,edge,onnx", "--onnx", str(onnx), "--gemm-limits",
                              "fp32=100,int8=400", "--json", str(js), "--markdown", str(md)], capsys)
    assert code == 0, err[-5:]
    rows = {k.replace("**", "").replace(" (run's default)", ""): v for k, v in _table_rows(stdout).items()}
    assert list(rows) == ["torchvision", "edge", "onnx"]
    for name, cells in rows.items():
        mean, median, p90, infer = (float(c) for c in cells[:4])
        assert 0 < median <= p90 and mean > 0 and 0 < infer <= mean, (name, cells)
        assert re.fullmatch(r"\d+\.\d\dx", cells[4]), cells[4]
        assert (cells[5] == "-") == (name != "onnx"), cells  # a floor for the ONNX model only
        box_ap, mask_ap = float(cells[7]), float(cells[8])
        assert 0 <= box_ap <= 1 and 0 <= mask_ap <= 1
    assert rows["torchvision"][4] == "1.00x"
    assert md.read_text() == stdout[stdout.index("| backend |"):].rstrip("\n") + "\n"
    data = json.loads(js.read_text())
    assert data["canvas"] == [64, 64] and data["runs"] == 1 and "2 images" in data["frames"]
    assert set(data["results"]) == set(rows)
    for res in data["results"].values():
        numbers = [res["fps"], *res["total_ms"].values(), *(v for st in res["stages_ms"].values() for v in st.values())]
        assert all(isinstance(x, float) and math.isfinite(x) and x >= 0 for x in numbers)


@pytest.mark.parametrize("argv,words", [
    (["--backends", "torchvision,gpu"], "unknown backends ['gpu']"),
    (["--runs", "0"], "--runs"),
    (["--input-size", "70x64"], "multiples of 32"),
])
def test_benchmark_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, words):
    js, md = tmp_path / "bench.json", tmp_path / "bench.md"
    code, stdout, err = _cli(["benchmark", "--input-size", CANVAS, "--backends", "edge", *argv,
                              "--json", str(js), "--markdown", str(md)], capsys)
    assert code != 0 and len(err) == 1 and err[0].startswith("mrcnn-edge: error: ") and words in err[0], err
    assert not js.exists() and not md.exists() and "| backend |" not in stdout


def test_benchmark_rows_parse_labels_models_and_options():
    from mrcnn_edge.commands.benchmark import parse_row
    from mrcnn_edge.core.errors import UserError

    row = parse_row("fast=onnxruntime:m.onnx:device=cpu,threads=2")
    assert (row.label, row.backend, row.model, row.options) == ("fast", "onnxruntime", "m.onnx", {"device": "cpu", "threads": 2})
    row = parse_row("triton:triton://host:8001/mrcnn")  # colons of a URL stay in the model
    assert (row.label, row.model, row.options) == ("triton", "triton://host:8001/mrcnn", {})
    row = parse_row("onnx::threads=1")  # the --backends name, the default model, an option
    assert (row.label, row.backend, row.model, row.options) == ("onnx", "onnxruntime", None, {"threads": 1})
    with pytest.raises(UserError, match="unknown backend 'gpu'"):
        parse_row("gpu:m.onnx")


@pytest.mark.parametrize("argv,words", [
    (["--row", "edge", "--row", "edge"], "same label"),
    (["--row", "edge", "--backends", "edge"], "either --row or --backends"),
    (["--row", "tensorrt"], "needs a model"),
])
def test_benchmark_bad_rows_are_one_line_and_write_nothing(tmp_path, capsys, argv, words):
    js = tmp_path / "bench.json"
    code, stdout, err = _cli(["benchmark", "--input-size", CANVAS, "--runs", "1", "--warmup", "0", *argv,
                              "--json", str(js)], capsys)
    assert code != 0 and len(err) == 1 and words in err[0], err
    assert not js.exists() and "| backend |" not in stdout


@pytest.mark.parametrize("argv,words", [
    (["--source", "a.mp4", "--source", "b.mp4"], "--no-display"),
    (["--source", "a.mp4", "--source", "b.mp4", "--no-display", "--output", "o.mp4"], "2 sources but 1 outputs"),
    (["--source", "a.mp4", "--output", "o1.mp4", "--output", "o2.mp4", "--no-display"], "one --output per --source"),
])
def test_run_with_several_sources_checks_its_options(tmp_path, capsys, argv, words):
    code, _, err = _cli(["run", str(tmp_path / "m.onnx"), *argv], capsys)
    assert code != 0 and len(err) == 1 and words in err[0], err


@pytest.mark.slow
def test_run_segments_two_sources_at_once(demo_run, tmp_path, capsys):
    video = demo_run["out"] / "synthetic.mp4"
    outs = [tmp_path / "a.mp4", tmp_path / "b.mp4"]
    code, stdout, err = _cli(["run", str(demo_run["out"] / "demo_portable.onnx"), "--source", str(video), "--source",
                              str(video), "--output", str(outs[0]), "--output", str(outs[1]), "--no-display"], capsys)
    assert code == 0, err[-5:]
    lines = stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(video), str(video), "model"]  # one model for both
    assert "one model for 2 sources" in lines[-1]
    assert all(o.is_file() and o.stat().st_size > 0 for o in outs)
