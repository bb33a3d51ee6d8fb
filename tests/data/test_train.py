"""Trainer and evaluation on a tiny synthetic dataset (a few iterations: it runs, writes, reloads)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import mrcnn_edge
from mrcnn_edge.model.checkpoint import load_checkpoint
from mrcnn_edge.commands.cli import main
from mrcnn_edge.data.dataset import generate_dataset
from mrcnn_edge.core.config import PRESETS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("d") / "tiny", 4, 3, size=(96, 96), progress=False)


def test_presets_and_cli_need_no_torch():
    """The presets live in the torch-free config module: the CLI lists them without importing torch."""
    code = ("import sys; from mrcnn_edge.commands.cli import _build_parser; from mrcnn_edge.core.config import PRESETS; "
            "_build_parser(); print(sorted(PRESETS)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == str(sorted(PRESETS)) and "demo" in PRESETS
    assert out[1] == "False"


def test_train_writes_a_loadable_checkpoint(tiny, tmp_path, capsys):
    out = tmp_path / "m.pth"
    assert main(["train", "--data", str(tiny), "--out", str(out), "--iterations", "2", "--batch-size", "2", "--threads", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2 and summary["train_images"] >= 1
    model, cfg = load_checkpoint(out)
    assert cfg.arch == "mobilenet_v3_large_fpn" and cfg.class_names[1:] == ["circle", "square", "triangle", "star", "cross"]
    assert torch.load(out, weights_only=True)["train"]["preset"] == "demo"
    # a second schedule starts from it; a checkpoint of another recipe is refused
    out2 = tmp_path / "m2.pth"
    assert main(["train", "--data", str(tiny), "--out", str(out2), "--iterations", "1", "--batch-size", "1", "--init", str(out)]) == 0
    assert out2.exists()
    capsys.readouterr()
    assert main(["train", "--data", str(tiny), "--out", str(tmp_path / "x.pth"), "--iterations", "1",
                 "--preset", "resnet18_fpn", "--init", str(out)]) == 2
    assert "is not a 'resnet18_fpn' model" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_train_bad_input(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "m.pth")]) == 2
    assert "no COCO annotations" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_the_demo_model(tiny, capsys):
    assert main(["evaluate", str(mrcnn_edge.demo_checkpoint()), "--data", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "mask  AP" in out and "box   AP" in out
