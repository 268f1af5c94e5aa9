"""``lantern-engine train``: fine-tune (or train from scratch) a classifier on a labelled folder and
write a bundle that explains, knows its uncertainty, its calibration and what it was fitted on
(docs/training.md). ``--benchmark``: training images per second on this machine instead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.errors import LanternError

# The options that only a training run needs; --benchmark goes without them.
RUN_ONLY = ("data", "out")


def _names(values: list[str]) -> tuple[str, ...]:
    """--augment rotate,contrast or --augment rotate contrast, alike."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip())


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a classifier on your own labelled images (split by patient) into "
                       "a bundle with temperature, out-of-distribution statistics and test metrics (docs/training.md)")
    p.add_argument("--data", type=Path, help="folder with the images and the labels file")
    p.add_argument("--labels", type=Path, default=Path("labels.csv"),
                   help="labels CSV (file,class[,mask][,group]), relative to --data or absolute (default: labels.csv)")
    p.add_argument("--out", type=Path, help="new bundle folder (training/ inside it keeps the checkpoint)")
    p.add_argument("--arch", required=True, help="a torchvision classifier: resnet18, efficientnet_b0, densenet121, "
                   "convnext_tiny, vit_b_16 ... (docs/model-bundle.md lists them all)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="input channels (default 1: grey)")
    p.add_argument("--size", type=int, nargs="+", default=[224], metavar="S", help="input size: S or H W (default 224)")
    p.add_argument("--classes", help="comma-separated class names in output order (default: the labels file's, "
                   "in order of first appearance); any other class in the labels file is refused")
    p.add_argument("--init", type=Path, help="starting weights for the same architecture: .safetensors or a "
                   "weights-only .pt/.pth state dict (never downloaded; default: from scratch)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3 for adamw, 1e-2 for sgd; 0.3 times that with --init)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--schedule", choices=("cosine", "step", "plateau"), default="cosine")
    p.add_argument("--loss", choices=("ce", "weighted", "focal"), default="ce",
                   help="ce; weighted: class-weighted cross-entropy; focal: focal loss (both for imbalance)")
    p.add_argument("--augment", nargs="+", default=[], metavar="NAME",
                   help="rotate, flip, contrast (comma- or space-separated; flip only if left and right may swap)")
    p.add_argument("--early-stop", choices=("auc", "loss"), default=None,
                   help="stop when the validation AUC (or loss) has not improved for --patience epochs; the "
                        "bundle gets the best epoch's weights")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initialisation and every epoch")
    p.add_argument("--split", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                   help="shares of the images for training, validation and test (default 0.7 0.15 0.15)")
    p.add_argument("--dropout", type=float, default=0.2, help="head dropout (MC-dropout uncertainty)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bfloat16 autocast where the CPU has it in hardware, else float32")
    p.add_argument("--resize", default="letterbox", help="stretch, letterbox or center_crop")
    p.add_argument("--intensity", default="percentile", help="percentile, window, minmax or unit8")
    p.add_argument("--normalization", default=None, help="imagenet or xray (default: xray for 1 channel, "
                   "imagenet for 3)")
    p.add_argument("--name", help="the bundle's name (default: the output folder's)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--intended-use", default="")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last "
                   "checkpoint (same options and data: the result is that of an uninterrupted run)")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs, keeping the checkpoint (continue later with --resume)")
    p.add_argument("--export", choices=("onnx", "int8"), default=None,
                   help="also export to ONNX (onnx) and quantize it (int8), each validated")
    p.add_argument("--benchmark", action="store_true",
                   help="instead of training: training images per second for --arch at --size on this machine")
    p.add_argument("--benchmark-steps", type=int, default=6)
    p.add_argument("--json", action="store_true", help="with --benchmark: print one JSON object")
    p.set_defaults(run=train_command)


def options_from(args: argparse.Namespace):
    from engine.making.train_options import TrainOptions

    size = tuple(args.size * 2 if len(args.size) == 1 else args.size[:2])
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None
    return TrainOptions(
        data=args.data or Path("."), labels=args.labels, out=args.out or Path("."), arch=args.arch,
        channels=args.channels, size=size, classes=classes, init=args.init, epochs=args.epochs, batch=args.batch,
        lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
        loss=args.loss, augment=_names(args.augment), early_stop=args.early_stop, patience=args.patience,
        seed=args.seed, split=tuple(args.split), dropout=args.dropout, precision=args.precision,
        resize=args.resize, intensity=args.intensity, normalization=args.normalization, name=args.name,
        version=args.version, intended_use=args.intended_use, resume=args.resume, stop_after=args.stop_after,
        export=args.export)


def train_command(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
        raise LanternError("train needs PyTorch and torchvision: install Lantern with its torch extra "
                           "(pip install -e '.[torch]')")
    options = options_from(args)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if args.benchmark:
        from engine.making.train_benchmark import benchmark_training

        figures = benchmark_training(options, steps=args.benchmark_steps, log=say)
        if args.json:
            print(json.dumps(figures))
        return 0
    missing = [f"--{name}" for name in RUN_ONLY if getattr(args, name) is None]
    if missing:
        raise LanternError(f"train needs {' and '.join(missing)} (or --benchmark)")
    from engine.making.train_run import train_model

    live = sys.stderr.isatty()  # a batch counter only where it can be redrawn in place

    def progress(text: str) -> None:
        print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)

    def log(message: str) -> None:
        say(("\r\033[K" if live else "") + message)

    try:
        result = train_model(options, log=log, progress=progress if live else None)
    except KeyboardInterrupt:
        log("interrupted: the checkpoint of the last finished epoch is kept; continue with --resume")
        raise
    return 1 if result.problems else 0
