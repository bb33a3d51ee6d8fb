"""CLI commands on checkpoints: ``inspect``, ``train``, ``evaluate``. Torch is imported inside the commands."""
from __future__ import annotations

import argparse
import json
import sys

from mrcnn_edge.core.cliutil import non_negative_int, positive_float, positive_int
from mrcnn_edge.core.config import PRESETS
from mrcnn_edge.core.errors import UserError


DESCRIPTION_INSPECT = (
    "Print what a checkpoint holds: architecture, classes, parameter count, input normalisation and "
    "resize. Accepts torchvision state dicts, training-reference checkpoints and mrcnn-edge's own format."
)
DESCRIPTION_TRAIN = (
    "Train a Mask R-CNN from scratch on a COCO-format dataset (e.g. from 'mrcnn-edge synth') on the CPU "
    "and write a checkpoint in mrcnn-edge's format. The 'demo' preset is the recipe of the shipped demo model."
)
DESCRIPTION_EVALUATE = "COCO box and mask AP of a checkpoint on a COCO-format dataset (torchvision eager inference)."


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint file (.pth)")
    p.add_argument("--arch", default=None, help="architecture, when it must be checked (read from the tensors otherwise)")
    p.add_argument("--num-classes", type=positive_int, default=None, help="class count incl. background (checked against the tensors)")
    p.add_argument("--class-names", default=None, help="text file with one class name a line")


def _load(args):
    from mrcnn_edge.model.checkpoint import load_checkpoint

    return load_checkpoint(args.checkpoint, arch=args.arch, num_classes=args.num_classes, class_names=args.class_names)


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the configuration as JSON")


def run_inspect(args) -> int:
    model, cfg = _load(args)
    n_params = sum(p.numel() for p in model.parameters())
    if args.json:
        print(json.dumps({**cfg.to_dict(), "parameters": n_params}, indent=2))
        return 0
    names = cfg.class_names or []
    shown = ", ".join(names[1:13]) + (f", ... ({len(names) - 13} more)" if len(names) > 13 else "")
    print(f"checkpoint     {args.checkpoint}")
    print(f"arch           {cfg.arch} (FPN {cfg.fpn_channels} ch, backbone stages {cfg.resolved_returned_layers()})")
    print(f"classes        {cfg.num_classes - 1} + background: {shown}")
    print(f"parameters     {n_params / 1e6:.2f} M")
    print(f"input          RGB in [0,1], mean {cfg.image_mean}, std {cfg.image_std}")
    print(f"resize         shorter side {cfg.min_size}, longer side at most {cfg.max_size}")
    print(f"anchors        sizes {cfg.default_anchor_sizes()}, aspect ratios {cfg.aspect_ratios}")
    print(f"mask head      {len(cfg.mask_layers)} convs x {cfg.mask_layers[0]} ch, 28x28 masks")
    return 0


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="training dataset folder (annotations.json + images/)")
    p.add_argument("--out", required=True, help="checkpoint to write")
    p.add_argument("--preset", default="demo", choices=list(PRESETS), help="architecture recipe")
    p.add_argument("--iterations", type=positive_int, default=2400)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--lr", type=positive_float, default=8e-4, help="peak AdamW learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--val", default=None, help="validation dataset: its AP is printed and stored in the checkpoint")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (same preset and classes)")
    p.add_argument("--save-every", type=non_negative_int, default=0, help="also write a snapshot every N iterations")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default float16, half the size)")


def run_train(args) -> int:
    from mrcnn_edge.data.train import train

    summary = train(args.data, args.out, preset=args.preset, iterations=args.iterations, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed, threads=args.threads, val=args.val, half=not args.fp32,
                    save_every=args.save_every, init=args.init)
    print(json.dumps(summary, indent=2))
    return 0


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--data", required=True, help="dataset folder (annotations.json + images/)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N images only")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")


def run_evaluate(args) -> int:
    from mrcnn_edge.data.coco import load_dataset
    from mrcnn_edge.data.train import evaluate_model

    ds = load_dataset(args.data)
    model, cfg = _load(args)
    extra = set(ds.class_names[1:]) - set((cfg.class_names or [])[1:])
    if len(ds.class_names) > cfg.num_classes:
        raise UserError(f"the dataset has category ids up to {len(ds.class_names) - 1}, the model only {cfg.num_classes - 1} classes")
    if extra and all(not n.startswith("class_") for n in extra):
        print(f"warning: dataset classes {sorted(extra)} are not among the model's class names", file=sys.stderr)
    stats = evaluate_model(model, ds, limit=args.limit, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"images    {min(len(ds.image_ids), args.limit or len(ds.image_ids))}")
    for kind in ("box", "mask"):
        print(f"{kind:<5} AP {stats[f'{kind}_AP']:.3f}   AP50 {stats[f'{kind}_AP50']:.3f}   AP75 {stats[f'{kind}_AP75']:.3f}"
              f"   APs {stats[f'{kind}_APs']:.3f}   APm {stats[f'{kind}_APm']:.3f}   APl {stats[f'{kind}_APl']:.3f}")
    if args.json:
        from mrcnn_edge.core.atomic import atomic_output

        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(stats, indent=2) + "\n")
    return 0
