"""The epochs of ``lantern-engine train``: loss, optimizer, schedule, validation, early stopping,
a checkpoint after every epoch, and ``--resume`` from it.

Exactness: torch is seeded at every epoch's start from the run's seed and the epoch (shuffling,
augmentation and dropout all draw from it), and the checkpoint holds the model, the optimizer and
the scheduler exactly; so a run stopped after any epoch and resumed ends with the same weights as
one never stopped (tests/engine/making/test_train_command.py checks it bit for bit).

Speed: channels-last memory layout throughout and, where the CPU computes bfloat16 in hardware,
bf16 autocast (training.hardware_bf16, as train-demo); weights, optimizer state and the loss stay
float32.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.bundle import InputSpec
from engine.errors import LanternError
from engine.making.train_augment import Augmenter
from engine.making.train_checkpoint import epoch_seed, part, read_checkpoint, restore, save_checkpoint
from engine.making.train_data import TRAIN, VALIDATION, TrainingData
from engine.making.train_options import TrainOptions
from engine.workflows.evaluation import metrics

FOCAL_GAMMA = 2.0  # Lin et al.'s default: a well-classified case (p 0.9) weighs 1/100 of its CE
MIN_IMPROVEMENT = 1e-4  # smaller changes of the watched figure are noise, not progress
EVAL_BATCH = 64


@dataclass
class LoopResult:
    weights: dict[str, torch.Tensor]  # the bundle's: the best epoch's with early stopping, else the last
    history: list[dict]
    best_epoch: int | None
    stopped_early: bool
    interrupted: bool  # stopped by --stop-after before the last epoch: --resume continues
    seconds: float
    images_per_second: float


def loss_function(kind: str, train_labels: np.ndarray, n_classes: int) -> Callable:
    """ce: cross-entropy; weighted: each class weighted by N / (C * its count) in the training split,
    so every class counts as much in total; focal: cross-entropy scaled by (1 - p_true)^2."""
    if kind == "weighted":
        counts = np.bincount(train_labels, minlength=n_classes).astype(np.float64)
        weight = torch.tensor(counts.sum() / (n_classes * np.maximum(counts, 1)), dtype=torch.float32)
        return lambda logits, y: F.cross_entropy(logits, y, weight=weight)
    if kind == "focal":
        def focal(logits, y):
            ce = F.cross_entropy(logits, y, reduction="none")
            return ((1.0 - torch.exp(-ce)) ** FOCAL_GAMMA * ce).mean()
        return focal
    return F.cross_entropy


def make_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    if options.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=options.learning_rate, momentum=0.9, nesterov=True,
                               weight_decay=options.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)


def make_scheduler(optimizer, options: TrainOptions, steps_per_epoch: int):
    """cosine: to zero over the whole run, stepped every batch; step: a tenth every third of the
    run; plateau: a tenth when the validation loss has not improved for half the patience."""
    if options.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, options.epochs // 3), gamma=0.1)
    if options.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                          patience=max(1, options.patience // 2))
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs * steps_per_epoch)


def validate(model: nn.Module, x: torch.Tensor, y: np.ndarray, classes: tuple[str, ...], bf16: bool) -> dict:
    """Loss, accuracy and AUC (the mean of the one-vs-rest AUCs evaluate computes) on the validation split."""
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = torch.cat([model(x[i : i + EVAL_BATCH].contiguous(memory_format=torch.channels_last)).float()
                            for i in range(0, len(x), EVAL_BATCH)])
    loss = float(F.cross_entropy(logits, torch.from_numpy(y)))
    figures = metrics(y, torch.softmax(logits, dim=1).numpy(), classes)
    aucs = [v["auc"] for v in figures["per_class"].values() if v["auc"] is not None]
    return {"loss": loss, "accuracy": figures["accuracy"], "auc": float(np.mean(aucs)) if aucs else None}


def _improved(value: float | None, best: dict | None, watch: str) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value > best["value"] + MIN_IMPROVEMENT if watch == "auc" else value < best["value"] - MIN_IMPROVEMENT


def _clock(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run_training(model: nn.Module, data: TrainingData, options: TrainOptions, spec: InputSpec, folder: Path,
                 bf16: bool, log: Callable[[str], None] = print, progress: Callable[[str], None] | None = None,
                 writer=None) -> LoopResult:
    """Train for ``options.epochs`` (fewer with early stopping or --stop-after); ``spec``: the
    bundle's input (augmentations undo its normalisation); ``folder`` holds the checkpoint;
    ``writer``: a TensorBoard SummaryWriter, or None."""
    train_idx, val_idx = data.indices(TRAIN), data.indices(VALIDATION)
    x_all = torch.from_numpy(data.inputs)
    y_all = torch.from_numpy(data.labels)
    val_x = x_all[val_idx]
    batch = min(options.batch, len(train_idx))
    # A last batch of one image is dropped: BatchNorm cannot normalise a batch of one.
    starts = [s for s in range(0, len(train_idx), batch) if len(train_idx) - s >= 2]
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, options)
    scheduler = make_scheduler(optimizer, options, len(starts))
    loss_fn = loss_function(options.loss, data.labels[train_idx], len(data.classes))
    augment = Augmenter(options.augment, spec)
    identity = {"options": options.trajectory(bf16), "data": data.fingerprint()}
    state = {"epoch": 0, "history": [], "best": None, "bad_epochs": 0, "stopped_early": False,
             "seconds": 0.0, "train_seconds": 0.0, "images": 0, **identity}
    best_weights = None
    if options.resume:
        tensors, record = read_checkpoint(folder)
        changed = [k for k, v in identity["options"].items() if record["options"].get(k) != v]
        if changed:
            raise LanternError(f"--resume continues only the same training; these options differ from the "
                               f"checkpoint's: {', '.join(changed)}", folder)
        if record["data"] != identity["data"]:
            raise LanternError("--resume continues only the same training, but the images, labels or split differ "
                               "from those the checkpoint was trained on", folder)
        restore(model, optimizer, scheduler, tensors, record)
        state = {k: record[k] for k in state}
        best_weights = part(tensors, "best") or None
        log(f"resuming after epoch {state['epoch']} of {options.epochs}")
    run_started, run_epochs = time.perf_counter(), 0
    interrupted = False
    for epoch in range(state["epoch"], options.epochs):
        if state["stopped_early"]:
            break
        if options.stop_after is not None and epoch >= options.stop_after:
            interrupted = True
            break
        started = time.perf_counter()
        torch.manual_seed(epoch_seed(options.seed, epoch))
        order = train_idx[torch.randperm(len(train_idx)).numpy()]
        model.train()
        lr = optimizer.param_groups[0]["lr"]  # the rate the epoch starts with (cosine lowers it every batch)
        total = 0.0
        seen = 0
        for n, start in enumerate(starts):
            idx = torch.from_numpy(order[start : start + batch])
            x = augment(x_all[idx]) if augment else x_all[idx].contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = loss_fn(logits.float(), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if options.schedule == "cosine":
                scheduler.step()
            total += loss.item() * len(idx)
            seen += len(idx)
            if progress is not None:
                progress(f"epoch {epoch + 1}/{options.epochs}: batch {n + 1}/{len(starts)}, loss {total / seen:.3f}")
        train_seconds = time.perf_counter() - started
        val = validate(model, val_x, data.labels[val_idx], data.classes, bf16)
        if not (math.isfinite(total) and math.isfinite(val["loss"])):
            raise LanternError(f"training diverged in epoch {epoch + 1} (the loss is not a finite number): start "
                               f"again in a new folder with a lower --lr")
        if options.schedule == "plateau":
            scheduler.step(val["loss"])
        elif options.schedule == "step":
            scheduler.step()
        if options.early_stop:
            value = val[options.early_stop]
            if _improved(value, state["best"], options.early_stop):
                state["best"], state["bad_epochs"] = {"epoch": epoch + 1, "value": value}, 0
                best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                state["bad_epochs"] += 1
                state["stopped_early"] = state["bad_epochs"] >= options.patience
        state["history"].append({"epoch": epoch + 1, "loss": total / seen, "validation": val, "lr": lr,
                                 "seconds": round(time.perf_counter() - started, 2)})
        state["epoch"] = epoch + 1
        state["seconds"] += time.perf_counter() - started
        state["train_seconds"] += train_seconds
        state["images"] += seen
        save_checkpoint(folder, model, optimizer, scheduler, state, best_weights)
        if writer is not None:
            _tensorboard(writer, state["history"][-1])
        run_epochs += 1
        left = (time.perf_counter() - run_started) / run_epochs * (options.epochs - epoch - 1)
        auc = "n/a" if val["auc"] is None else f"{val['auc']:.3f}"
        log(f"epoch {epoch + 1}/{options.epochs}: loss {total / seen:.3f}; validation loss {val['loss']:.3f}, "
            f"accuracy {val['accuracy']:.3f}, AUC {auc}; lr {lr:.2g}; {state['history'][-1]['seconds']:.0f} s"
            + ("" if state["stopped_early"] or epoch + 1 == options.epochs else f", about {_clock(left)} left")
            + (f" (early stop: no better validation {options.early_stop} for {options.patience} epochs)"
               if state["stopped_early"] else ""))
    use_best = options.early_stop and best_weights is not None
    weights = best_weights if use_best else {k: v.detach().clone() for k, v in model.state_dict().items()}
    return LoopResult(weights, state["history"], state["best"]["epoch"] if state["best"] else None,
                      state["stopped_early"], interrupted, state["seconds"],
                      state["images"] / state["train_seconds"] if state["train_seconds"] else 0.0)


def _tensorboard(writer, entry: dict) -> None:
    step, val = entry["epoch"], entry["validation"]
    writer.add_scalar("loss/train", entry["loss"], step)
    writer.add_scalar("loss/validation", val["loss"], step)
    writer.add_scalar("accuracy/validation", val["accuracy"], step)
    if val["auc"] is not None:
        writer.add_scalar("auc/validation", val["auc"], step)
    writer.add_scalar("lr", entry["lr"], step)
    writer.flush()
