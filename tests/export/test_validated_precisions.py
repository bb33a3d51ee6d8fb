"""How a model gets its ``validated_precisions`` record (issue 20): ``mrcnn-edge validate --annotations``
measures OpenVINO bf16 against fp32 and writes bf16 into the model only within its bound; the
record is removed when a new measurement no longer supports it; nothing else in the model moves."""
from __future__ import annotations

import contextlib
import shutil

import pytest

import mrcnn_edge
from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.contract import VALIDATED_PRECISION_BOUNDS
from mrcnn_edge.runtime.testing import make_contract_model

onnx = pytest.importorskip("onnx")

from mrcnn_edge.export.validated_precisions import bf16_record, write_validated_precisions  # noqa: E402


def _meta(path):
    from mrcnn_edge.core.metadata import read_onnx_metadata

    return read_onnx_metadata(path)[1]


def test_records_are_written_and_removed_and_nothing_else_moves(tmp_path):
    model = make_contract_model(tmp_path / "m.onnx")
    before = _meta(model)
    graph = onnx.load(str(model)).graph.SerializeToString()
    record = bf16_record(0.60, 0.595, 100, "val")
    write_validated_precisions(model, {"bf16": record})
    after = _meta(model)
    assert after["validated_precisions"] == {"bf16": record}
    assert {k: v for k, v in after.items() if k != "validated_precisions"} == before
    assert onnx.load(str(model)).graph.SerializeToString() == graph  # the graph itself untouched
    write_validated_precisions(model, {"bf16": None})
    assert _meta(model) == before
    assert not [p for p in tmp_path.iterdir() if p.name != "m.onnx"]  # no temporary left beside it


@pytest.mark.slow
def test_validate_measures_bf16_and_records_it_only_within_the_bound(tmp_path, capsys, demo_onnx, demo_canvas):
    ov = pytest.importorskip("openvino", reason="bf16 is measured with OpenVINO")
    from mrcnn_edge.runtime.backends.openvino import cpu_has_bf16

    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions: validate says so and measures nothing")
    model = tmp_path / "portable.onnx"
    shutil.copyfile(demo_onnx("portable"), model)
    model.chmod(0o644)
    size = f"{demo_canvas[0]}x{demo_canvas[1]}"
    assert main(["synth", "--out", str(tmp_path / "val"), "--images", "3", "--seed", "2", "--size", size, "--quiet"]) == 0
    argv = ["validate", "--checkpoint", str(mrcnn_edge.demo_checkpoint()), "--model", str(model),
            "--annotations", str(tmp_path / "val")]
    untouched = model.read_bytes()
    assert main([*argv, "--no-bf16-check"]) == 0
    assert model.read_bytes() == untouched
    capsys.readouterr()
    assert main(argv) == 0
    line = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("OpenVINO bf16 on 3 annotated images")]
    assert len(line) == 1, line
    record = (_meta(model).get("validated_precisions") or {}).get("bf16")
    if "recorded in the model's metadata" in line[0]:
        assert record is not None and record["images"] == 3 and record["annotations"] == "val"
        assert record["fp32_mask_AP"] - record["mask_AP"] <= VALIDATED_PRECISION_BOUNDS["bf16"]
        assert f"{record['mask_AP']:.4f} vs fp32 {record['fp32_mask_AP']:.4f}" in line[0]
    else:
        assert "not recorded" in line[0] and record is None


def test_a_model_that_finds_nothing_right_gets_no_record(tmp_path):
    """bf16 equal to fp32 at a mask AP near 0 (random weights, the wrong images) vouches for nothing:
    below the bound, losing all of the AP would be within the bound too."""
    ov = pytest.importorskip("openvino", reason="bf16 is measured with OpenVINO")
    from mrcnn_edge.export.validate import collect_images
    from mrcnn_edge.export.validated_precisions import check_cpu_precisions
    from mrcnn_edge.runtime.backends.openvino import cpu_has_bf16

    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    model = make_contract_model(tmp_path / "m.onnx")  # three fixed boxes, whatever the image
    write_validated_precisions(model, {"bf16": bf16_record(0.6, 0.6, 10, "old")})  # an earlier record
    assert main(["synth", "--out", str(tmp_path / "val"), "--images", "2", "--seed", "2", "--quiet"]) == 0
    items, dataset = collect_images(None, str(tmp_path / "val"), 2)
    checked = check_cpu_precisions(model, items, dataset, "val", log=lambda s: None)
    assert checked is not None and checked.fp32_mask_AP <= VALIDATED_PRECISION_BOUNDS["bf16"]
    assert checked.bf16_mask_AP == checked.fp32_mask_AP  # bf16 lost nothing, and still no record
    assert not checked.recorded and "nothing to judge by" in checked.line and "not recorded" in checked.line
    assert "validated_precisions" not in _meta(model)  # the earlier record is gone too


@pytest.fixture
def model_on_a_small_disk(tmp_path, media_tools):
    """``with model_on_a_small_disk(kb) as model``: a contract model on a real ``kb`` KB tmpfs (the
    tests' helper, tests/runtime/io/media_tools.py), unmounted after; skipped where no tmpfs can be
    mounted (not root)."""
    @contextlib.contextmanager
    def on_disk(size_kb):
        with media_tools.small_disk(tmp_path / "disk", size_kb) as mounted:
            if not mounted:
                pytest.skip("no tmpfs can be mounted here (not root)")
            yield make_contract_model(tmp_path / "disk" / "m.onnx")

    return on_disk


def _bf16_check(model, tmp_path, logged):
    from mrcnn_edge.export.validate import collect_images
    from mrcnn_edge.export.validated_precisions import check_cpu_precisions
    from mrcnn_edge.runtime.backends.openvino import cpu_has_bf16

    ov = pytest.importorskip("openvino", reason="bf16 is measured with OpenVINO")
    if not cpu_has_bf16(ov.Core()):
        pytest.skip("this CPU has no BF16 instructions")
    if not (tmp_path / "val").exists():
        assert main(["synth", "--out", str(tmp_path / "val"), "--images", "2", "--seed", "2", "--quiet"]) == 0
    items, dataset = collect_images(None, str(tmp_path / "val"), 2)
    return check_cpu_precisions(model, items, dataset, "val", log=logged.append)


def test_a_model_in_a_read_only_folder_is_validated_and_says_why_no_record(tmp_path, model_on_a_small_disk):
    """The record goes into the model file: on a read-only mount (a model store) validate used to
    pass its comparison, measure bf16 and then fail on the write ('permission denied'). Now the
    check says why before measuring, and nothing fails."""
    import subprocess

    from mrcnn_edge.core.atomic import unwritable

    with model_on_a_small_disk(512) as model:
        before = model.read_bytes()
        ro = subprocess.run(["mount", "-o", "remount,ro", str(model.parent)], capture_output=True)
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.decode().strip()}")
        assert unwritable(model.parent) == "read-only file system"
        logged: list[str] = []
        assert _bf16_check(model, tmp_path, logged) is None
        assert len(logged) == 1 and "bf16 not measured" in logged[0] and "read-only file system" in logged[0], logged
        assert model.read_bytes() == before


def test_a_record_that_cannot_be_written_leaves_the_model_and_says_so(tmp_path, model_on_a_small_disk):
    """A full disk under the model: the measurement stands, the record is not written, one line says
    so, and the model and its folder are as they were."""
    with model_on_a_small_disk(256) as model:
        before = model.read_bytes()
        with contextlib.suppress(OSError):  # fill what is left
            with open(model.parent / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        logged: list[str] = []
        assert _bf16_check(model, tmp_path, logged) is None
        assert any("bf16 measured" in ln and "but not recorded" in ln for ln in logged), logged
        assert model.read_bytes() == before and sorted(p.name for p in model.parent.iterdir()) == ["filler", "m.onnx"]
