"""``lantern-engine train``: a labelled folder in, a trusted, explained (and, asked, quantized) bundle out.

The steps, each in its own module of engine/making/:

    train_options   the options, checked before anything is read
    train_data      labels -> images (load_image + prepare_input, once) -> split by patient
    train_weights   the starting model: random, or local weights adapted (1 channel, new head)
    train_loop      epochs with validation, early stopping and a checkpoint per epoch (--resume)
    train_bundle    the bundle: temperature (validation split), ONNX / int8, out-of-distribution
                    statistics (training split), test-split metrics in the model card

The output folder is the bundle; ``training/`` inside it holds what only training needs (the
checkpoint, TensorBoard's event files, the test split's full evaluation) and may be deleted once
training is done: a bundle is complete without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.bundle import ModelBundle, parse_manifest
from engine.errors import LanternError
from engine.files import write_bytes_atomic, write_json_atomic
from engine.making.train_data import SPLITS, load_training_data, read_training_labels
from engine.making.train_options import TrainOptions

TRAINING_FOLDER = "training"


@dataclass
class TrainResult:
    folder: Path
    bundle: ModelBundle | None  # None: stopped by --stop-after, resume to finish
    problems: list[str] = field(default_factory=list)  # refused images, refused exports


def use_bf16(precision: str) -> bool:
    from engine.making.training import hardware_bf16

    return precision == "bf16" or (precision == "auto" and hardware_bf16())


def tensorboard_writer(folder: Path, log: Callable[[str], None]):
    """A SummaryWriter into ``folder``, or None (said once) when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("TensorBoard is not installed: no event files written (pip install tensorboard to get them)")
        return None
    # Event files are append-only logs TensorBoard reads while they grow: they cannot be written
    # atomically, and nothing else depends on them.
    return SummaryWriter(str(folder))


def _prepare_folder(options: TrainOptions) -> Path:
    out = options.out
    if options.resume:
        if not (out / TRAINING_FOLDER).is_dir():
            raise LanternError("--resume needs the folder of an earlier 'lantern-engine train' run", out)
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LanternError("the output folder exists and is not empty; choose a new folder (or --resume)", out)
    data = options.labels_csv.parent.resolve()
    if out.resolve() == data:
        raise LanternError("the bundle cannot be written into the labelled folder itself", out)
    return out / TRAINING_FOLDER


def _card(options: TrainOptions, data, init: dict, loop, bf16: bool) -> dict:
    import torch

    folder = data.labelled.csv.parent.resolve()
    start = "trained from scratch" if options.init is None else f"fine-tuned from {options.init.name}"
    return {
        "summary": f"{options.arch}, {options.channels}-channel {options.size[0]} x {options.size[1]} input, {start} "
                   f"with 'lantern-engine train' on {len(data.cases)} images of {data.labelled.csv.name} "
                   f"({', '.join(data.classes)}).",
        "training": {"command": "lantern-engine train", "options": options.trajectory(bf16), "init": init,
                     "epochs_run": len(loop.history), "best_epoch": loop.best_epoch,
                     "stopped_early": loop.stopped_early, "weights": "the best epoch's" if options.early_stop
                     and loop.best_epoch else "the last epoch's", "seconds": round(loop.seconds),
                     "images_per_second": round(loop.images_per_second, 1), "threads": torch.get_num_threads(),
                     "history": loop.history},
        "split": {**data.summary(), "seed": options.seed, "shares": dict(zip(SPLITS, options.split))},
        "refused": [{"line": c.line, "file": str(c.path.relative_to(folder)) if c.path.is_relative_to(folder)
                     else c.path.name, "reason": reason} for c, reason in data.refused],
        "limitations": "Measured on a test split of the same labelled folder: the same sites, devices and "
                       "labelling as its training images. That says little about images from elsewhere; "
                       "evaluate it on those ('lantern-engine evaluate') before relying on it.",
    }


def train_model(options: TrainOptions, log: Callable[[str], None] = print,
                progress: Callable[[str], None] | None = None, quantize_limits: dict | None = None) -> TrainResult:
    """Train and write the bundle (see the module's text). ``quantize_limits``: tests only, the
    validation limits quantize_bundle takes (a tiny test model's maps are not a real one's)."""
    from engine.making import train_bundle
    from engine.making.train_loop import run_training
    from engine.making.train_weights import starting_model

    options.check()
    training = _prepare_folder(options)
    labelled = read_training_labels(options.labels_csv, options.classes)
    manifest = options.manifest(labelled.classes)
    bundle = parse_manifest(manifest, options.out)  # refused before anything is read
    # Starting weights that do not fit are refused before thousands of images are read.
    model, init = starting_model(bundle, options.init, options.seed)
    spec, bf16 = bundle.input, use_bf16(options.precision)
    data = load_training_data(labelled, spec, options.split, options.seed, log)
    counts = data.summary()["images"]
    log("split by patient: " + "; ".join(f"{part} {sum(c.values())} ({', '.join(f'{k} {v}' for k, v in c.items())})"
                                         for part, c in counts.items()))
    write_bytes_atomic(options.out / "split.csv", data.split_csv())
    training.mkdir(parents=True, exist_ok=True)
    log(f"training a {options.arch} in {'bfloat16 autocast' if bf16 else 'float32'}, channels-last, "
        f"{'from ' + options.init.name if options.init else 'from scratch'}")
    writer = tensorboard_writer(training, log)
    try:
        loop = run_training(model, data, options, spec, training, bf16, log, progress, writer)
    finally:
        if writer is not None:
            writer.close()
    write_json_atomic(training / "history.json", loop.history)
    problems = [f"line {c.line}: {reason}" for c, reason in data.refused]
    if loop.interrupted:
        log(f"stopped after epoch {len(loop.history)} (--stop-after); continue with --resume")
        return TrainResult(options.out, None, problems)
    started = time.perf_counter()
    bundle = train_bundle.write_bundle(options.out, manifest, loop.weights,
                                       _card(options, data, init, loop, bf16))
    bundle = train_bundle.fit_validation_temperature(bundle, data, log)
    if options.export:
        bundle, refused = train_bundle.export_bundle_as(bundle, options.export, log, quantize_limits)
        if refused:
            log(refused)
            problems.append(refused)
    bundle = train_bundle.fit_training_ood(bundle, data, log)
    bundle = train_bundle.evaluate_test_split(bundle, data, training, log)
    log(f"wrote the bundle {options.out} ({', '.join(available(bundle))}) in "
        f"{time.perf_counter() - started:.0f} s after training")
    return TrainResult(options.out, bundle, problems)


def available(bundle: ModelBundle) -> list[str]:
    from engine.backends import available_engines

    return available_engines(bundle)
