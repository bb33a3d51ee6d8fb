"""Checkpoint loading: every listed arch in every format, and every bad input as one line."""
from __future__ import annotations


import pytest
import torch

from mrcnn_edge.model.checkpoint import ARCHS, ModelConfig, build_model, infer_config, load_checkpoint, save_checkpoint
from mrcnn_edge.commands.cli import main
from mrcnn_edge.core.errors import UserError


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {arch: build_model(ModelConfig(arch=arch, num_classes=4)) for arch in ARCHS}


def _torchvision_builders():
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    return {
        "resnet50_fpn": lambda: maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=7),
        "resnet50_fpn_v2": lambda: maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=7),
    }


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("fmt", ["state_dict", "reference", "project"])
def test_every_arch_every_format(tmp_path, models, arch, fmt):
    model = models[arch]
    path = tmp_path / "ckpt.pth"
    if fmt == "state_dict":
        torch.save(model.state_dict(), path)
    elif fmt == "reference":  # torchvision's training reference writes this
        torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 3, "args": None}, path)
    else:
        save_checkpoint(model, ModelConfig(arch=arch, num_classes=4), path)
    loaded, cfg = load_checkpoint(path)
    assert cfg.arch == arch
    assert cfg.num_classes == 4
    assert not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_torchvision_builders_are_recognised(tmp_path):
    for arch, make in _torchvision_builders().items():
        path = tmp_path / f"{arch}.pth"
        torch.save(make().state_dict(), path)
        _, cfg = load_checkpoint(path, arch=arch, num_classes=7)
        assert cfg.arch == arch and cfg.num_classes == 7


def test_custom_widths_are_read_from_tensors(tmp_path):
    cfg = ModelConfig(arch="mobilenet_v3_large_fpn", num_classes=3, fpn_channels=64, returned_layers=[2, 3, 4],
                      representation_size=128, mask_layers=[64, 64], mask_dim_reduced=32)
    inferred = infer_config(build_model(cfg).state_dict())
    assert (inferred.fpn_channels, inferred.returned_layers, inferred.representation_size) == (64, [2, 3, 4], 128)
    assert (inferred.mask_layers, inferred.mask_dim_reduced) == ([64, 64], 32)


def test_class_names(tmp_path, models):
    path = tmp_path / "c.pth"
    torch.save(models["resnet18_fpn"].state_dict(), path)
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    _, cfg = load_checkpoint(path, class_names=names)
    assert cfg.class_names == ["__background__", "cat", "dog", "bird"]
    names.write_text("cat\n")
    with pytest.raises(UserError, match="class names"):
        load_checkpoint(path, class_names=names)


def test_coco_names_for_91_classes(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(build_model(ModelConfig(arch="resnet18_fpn", num_classes=91)).state_dict(), path)
    _, cfg = load_checkpoint(path)
    assert cfg.class_names[1] == "person" and len(cfg.class_names) == 91


def test_fp16_project_checkpoint_loads_as_fp32(tmp_path, models):
    path = tmp_path / "h.pth"
    save_checkpoint(models["mobilenet_v3_large_fpn"], ModelConfig(arch="mobilenet_v3_large_fpn", num_classes=4), path, half=True)
    model, _ = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path, models):
    sd = models["resnet18_fpn"].state_dict()
    cases = {}
    cases["missing"] = (tmp_path / "nope.pth", "not found")
    p = tmp_path / "good.pth"
    torch.save(sd, p)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    cases["truncated"] = (trunc, "truncated, corrupt")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 100)
    cases["corrupt"] = (junk, "cannot read checkpoint")
    whole = tmp_path / "whole.pth"
    torch.save(models["resnet18_fpn"], whole)
    cases["pickled module"] = (whole, "pickled Python object")
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    frcnn = tmp_path / "frcnn.pth"
    torch.save(fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).state_dict(), frcnn)
    cases["other family"] = (frcnn, "Faster R-CNN")
    from torchvision.models import resnet18

    cls = tmp_path / "cls.pth"
    torch.save(resnet18().state_dict(), cls)
    cases["classifier"] = (cls, "not a Mask R-CNN")
    return p, cases


def test_bad_checkpoints_give_one_line(tmp_path, models, capsys):
    good, cases = _bad(tmp_path, models)
    for name, (path, needle) in cases.items():
        with pytest.raises(UserError, match=needle):
            load_checkpoint(path)
        code = main(["inspect", str(path)])
        err = capsys.readouterr().err
        assert code != 0, name
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
    with pytest.raises(UserError, match="contradicts"):
        load_checkpoint(good, num_classes=9)
    with pytest.raises(UserError, match="contradicts"):
        load_checkpoint(good, arch="resnet50_fpn")
    with pytest.raises(UserError, match="unknown arch"):
        load_checkpoint(good, arch="resnet999_fpn")


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(UserError):
        main(["inspect", str(tmp_path / "missing.pth"), "--debug"])


def test_inspect_prints_the_model(tmp_path, models, capsys):
    path = tmp_path / "m.pth"
    save_checkpoint(models["mobilenet_v3_large_fpn"], ModelConfig(arch="mobilenet_v3_large_fpn", num_classes=4,
                                                                  class_names=["__background__", "a", "b", "c"]), path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mobilenet_v3_large_fpn" in out and "3 + background: a, b, c" in out and "mean [0.485" in out


def test_weights_only_is_always_used(tmp_path, monkeypatch, models):
    seen = {}
    real = torch.load

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "m.pth"
    torch.save(models["resnet18_fpn"].state_dict(), path)
    load_checkpoint(path)
    assert seen.get("weights_only") is True


def test_a_new_architecture_is_one_row(tmp_path, monkeypatch):
    """A row added to the architecture table builds, saves and is recognised from its tensors alone;
    the same tensors without the row are refused in one line naming what is missing."""
    from mrcnn_edge.core.config import ARCHS as TABLE, Arch

    monkeypatch.setitem(TABLE, "resnet26_fpn", Arch("resnet", (1, 2, 3, 4), blocks=(2, 2, 2, 2), bottleneck=True))
    monkeypatch.setitem(TABLE, "resnet18_fpn_v2", Arch("resnet", (1, 2, 3, 4), blocks=(2, 2, 2, 2), v2=True))
    torch.manual_seed(0)
    for arch in ("resnet26_fpn", "resnet18_fpn_v2"):
        model = build_model(ModelConfig(arch=arch, num_classes=3))
        path = tmp_path / f"{arch}.pth"
        torch.save(model.state_dict(), path)  # a plain state dict: nothing but tensors to go by
        loaded, cfg = load_checkpoint(path)
        assert cfg.arch == arch
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    monkeypatch.delitem(TABLE, "resnet18_fpn_v2")
    with pytest.raises(UserError, match="v2 \\(conv\\) box head on the backbone of resnet18_fpn"):
        load_checkpoint(tmp_path / "resnet18_fpn_v2.pth")
    monkeypatch.delitem(TABLE, "resnet26_fpn")
    with pytest.raises(UserError, match=r"unrecognised ResNet backbone \(\[2, 2, 2, 2\] blocks per stage, bottleneck=True\)"):
        load_checkpoint(tmp_path / "resnet26_fpn.pth")
