"""What ``lantern-engine train`` is asked to do, checked before any image is read.

One frozen record is passed through the whole run (data, loop, bundle). The options that decide
the trained weights (:meth:`TrainOptions.trajectory`) are stored in every checkpoint: ``--resume``
continues only a run made with the same ones, which is what makes it reproduce an uninterrupted
run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.bundle import ARCHITECTURES, INTENSITY_RULES, NORMALIZATIONS, RESIZE_RULES
from engine.errors import LanternError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "plateau")
LOSSES = ("ce", "weighted", "focal")
AUGMENTATIONS = ("rotate", "flip", "contrast")
EARLY_STOP_METRICS = ("auc", "loss")
PRECISIONS = ("auto", "bf16", "fp32")
EXPORTS = ("onnx", "int8")
# AdamW's usual rate for a CNN from scratch; SGD with momentum wants about ten times more. Starting
# weights want less: at these rates the first epochs of a fine-tuning undo what they bring (one
# measurement, ResNet-18 from the demo's weights on 65 phantoms: validation loss 0.9 after the first
# epoch at 3e-4, 13.7 at 1e-3).
DEFAULT_LR = {"adamw": 1e-3, "sgd": 1e-2}
FINE_TUNING_LR_FACTOR = 0.3
TRANSFORMER_PREFIXES = ("vit_", "swin_")


@dataclass(frozen=True)
class TrainOptions:
    data: Path  # the folder of the images and the labels file
    labels: Path  # the labels CSV (paths in it are relative to its own folder)
    out: Path  # the bundle folder to write
    arch: str
    channels: int = 1
    size: tuple[int, int] = (224, 224)
    classes: tuple[str, ...] | None = None  # None: the labels file's, in order of first appearance
    init: Path | None = None  # starting weights (safetensors or weights-only .pt); None: from scratch
    epochs: int = 20
    batch: int = 32
    lr: float | None = None  # None: DEFAULT_LR of the optimizer (times FINE_TUNING_LR_FACTOR with --init)
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    loss: str = "ce"
    augment: tuple[str, ...] = ()
    early_stop: str | None = None  # "auc" or "loss" on the validation split
    patience: int = 5
    seed: int = 0
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test
    dropout: float = 0.2
    precision: str = "auto"
    resize: str = "letterbox"
    intensity: str = "percentile"
    normalization: str | None = None  # None: xray for 1 channel, imagenet for 3
    name: str | None = None
    version: str = "1.0.0"
    intended_use: str = ""
    resume: bool = False
    stop_after: int | None = None  # stop (as if interrupted) after this many epochs in all
    export: str | None = None  # "onnx" or "int8"

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR[self.optimizer] * (FINE_TUNING_LR_FACTOR if self.init is not None else 1.0)

    @property
    def labels_csv(self) -> Path:
        """The labels file: relative to the data folder, as ``evaluate`` takes it, unless absolute
        or found as given."""
        inside = self.labels if self.labels.is_absolute() else self.data / self.labels
        return inside if inside.is_file() or not self.labels.is_file() else self.labels

    def check(self) -> None:
        """Refuse impossible options in plain words, before anything is read or written."""
        problems = []
        if self.arch not in ARCHITECTURES:
            problems.append(f"unknown architecture '{self.arch}' (docs/model-bundle.md lists them)")
        if self.channels not in (1, 3):
            problems.append("--channels must be 1 or 3")
        for value, name, known in ((self.optimizer, "--optimizer", OPTIMIZERS), (self.schedule, "--schedule", SCHEDULES),
                                   (self.loss, "--loss", LOSSES), (self.precision, "--precision", PRECISIONS),
                                   (self.resize, "--resize", RESIZE_RULES), (self.intensity, "--intensity", INTENSITY_RULES)):
            if value not in known:
                problems.append(f"{name} must be one of {', '.join(known)}, not '{value}'")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            problems.append(f"--normalization must be one of {', '.join(NORMALIZATIONS)}")
        unknown = [a for a in self.augment if a not in AUGMENTATIONS]
        if unknown:
            problems.append(f"unknown augmentation(s) {', '.join(unknown)} (known: {', '.join(AUGMENTATIONS)})")
        if self.early_stop is not None and self.early_stop not in EARLY_STOP_METRICS:
            problems.append(f"--early-stop must be auc or loss, not '{self.early_stop}'")
        if self.export is not None and self.export not in EXPORTS:
            problems.append(f"--export must be onnx or int8, not '{self.export}'")
        if self.epochs < 1 or self.batch < 2 or self.patience < 1:
            problems.append("--epochs and --patience must be at least 1, --batch at least 2")
        if not self.learning_rate > 0 or self.weight_decay < 0:
            problems.append("--lr must be positive and the weight decay not negative")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("--dropout must be in [0, 1)")
        train, validation, test = self.split
        if min(self.split) <= 0 or abs(sum(self.split) - 1.0) > 1e-6 or train < 0.5:
            problems.append("--split takes three positive shares (train, validation, test) adding up to 1, "
                            "train at least 0.5")
        if self.stop_after is not None and self.stop_after < 1:
            problems.append("--stop-after must be at least 1 epoch")
        if self.arch.startswith(TRANSFORMER_PREFIXES) and self.size[0] != self.size[1]:
            problems.append(f"a {self.arch} takes a square input")
        if problems:
            raise LanternError("; ".join(problems))

    def trajectory(self, bf16: bool) -> dict:
        """Everything that decides the weights, as plain data (compared on --resume). The data
        itself is compared by its fingerprint (train_data.TrainingData.fingerprint)."""
        return {"arch": self.arch, "channels": self.channels, "size": list(self.size),
                "classes": list(self.classes) if self.classes else None,
                "init": str(self.init) if self.init else None, "epochs": self.epochs, "batch": self.batch,
                "lr": self.learning_rate, "optimizer": self.optimizer, "weight_decay": self.weight_decay,
                "schedule": self.schedule, "loss": self.loss, "augment": list(self.augment),
                "early_stop": self.early_stop, "patience": self.patience, "seed": self.seed,
                "split": list(self.split), "dropout": self.dropout,
                "precision": "bfloat16 autocast" if bf16 else "float32", "resize": self.resize,
                "intensity": self.intensity, "normalization": self.normalization}

    def manifest(self, classes: tuple[str, ...]) -> dict:
        """The bundle's manifest before training (the model card is added as the run goes)."""
        spec = {"channels": self.channels, "size": list(self.size), "resize": self.resize, "intensity": self.intensity}
        if self.normalization:
            spec["normalization"] = self.normalization
        return {
            "format_version": 1, "name": self.name or self.out.name, "version": self.version,
            "architecture": self.arch, "classes": list(classes), "input": spec,
            "head": {"dropout": self.dropout}, "weights": "model.safetensors",
            "intended_use": self.intended_use or (
                "Trained with 'lantern-engine train' on a local labelled folder; its intended use has not "
                "been stated. Not a medical device."),
        }
