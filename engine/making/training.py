"""Training the shipped demo model on synthetic phantoms (needs the torch engine).

Every phantom goes through the same ``prepare_input`` as at run time, so the model is trained on
exactly what it will see. Fresh phantoms each epoch: the generator is the augmentation. The model
card's figures are measured on held-out phantoms through ``analyze`` itself, after the weights
are rounded to the float16 they are shipped in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from engine.bundle import ModelBundle, parse_manifest
from engine.trust.calibration import reliability_diagram
from engine.workflows.evaluation import pointing_hit, pointing_tolerance
from engine.files import write_json_atomic
from engine.images import ImageMetadata, SourceImage, Window
from engine.synthetic.phantoms import CLASSES, make_dataset
from engine.preprocess import prepare_input
from engine.cam import METHOD_NAMES

DEMO_MANIFEST = {
    "format_version": 1,
    "name": "lantern-demo-chest-phantom",
    "version": "1.1.0",
    "architecture": "resnet18",
    "classes": list(CLASSES),
    "input": {"channels": 1, "size": [256, 256], "resize": "letterbox",
              "intensity": "percentile", "normalization": "xray"},
    "target_layer": "layer4",
    "head": {"dropout": 0.3},
    "weights": "model.safetensors",
    "synthetic_demo": True,
    # What it was made for: the reader is told when an image is not that (engine/intended_inputs.py).
    "intended_inputs": {"description": "chest radiographs", "modalities": ["DX", "CR"], "body_parts": ["CHEST"],
                        "view_positions": ["PA", "AP"], "photometric": ["MONOCHROME1", "MONOCHROME2"],
                        "min_size": [128, 128], "non_dicom": True},
    "intended_use": (
        "Demonstration and teaching only. Trained on synthetic chest-radiograph-like phantoms "
        "made by Lantern; it has never seen a real patient image. Not a medical device and not "
        "for diagnosis."
    ),
}


def phantom_image(pixels: np.ndarray, name: str = "phantom") -> SourceImage:
    lo, hi = np.percentile(pixels, (0.5, 99.5))
    rows, cols = pixels.shape
    meta = ImageMetadata(modality="DX", photometric="MONOCHROME2", rows=rows, columns=cols)
    return SourceImage(Path(name), pixels, Window((lo + hi) / 2, max(hi - lo, 1.0)), meta)


def phantom_batch(images: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    return np.concatenate([prepare_input(phantom_image(img), bundle.input).tensor for img in images])


def evaluate(bundle: ModelBundle, model, n: int, seed: int, methods=METHOD_NAMES) -> dict:
    """Accuracy and pointing game on held-out phantoms, through the run-time analysis path."""
    from engine.analysis import AnalysisOptions, LoadedModel, analyze
    from engine.backends.torch_backend import TorchBackend

    loaded = LoadedModel(bundle, TorchBackend(bundle, model))
    images, masks, labels = make_dataset(n, seed=seed)
    tolerance = pointing_tolerance(images.shape[1])
    correct = 0
    confidences, right = [], []
    strict = {m: {c: [] for c in CLASSES[1:]} for m in methods}
    tolerant = {m: {c: [] for c in CLASSES[1:]} for m in methods}
    for image, mask, label in zip(images, masks, labels):
        result = analyze(phantom_image(image), loaded, AnalysisOptions(methods=methods, mc_samples=0))
        correct += int(result.predicted == label)
        confidences.append(float(result.probabilities[result.predicted]))
        right.append(result.predicted == label)
        if label > 0:
            for m in methods:
                peak = result.maps[m].peak(int(label))
                strict[m][CLASSES[label]].append(pointing_hit(mask, peak, 0))
                tolerant[m][CLASSES[label]].append(pointing_hit(mask, peak, tolerance))

    def rates(hits):
        return {m: {c: round(float(np.mean(v)), 4) for c, v in per.items()} for m, per in hits.items()}

    return {
        "heldout_phantoms": int(n),
        "accuracy": round(correct / n, 4),
        "pointing_game": rates(tolerant),
        "pointing_game_tolerance_px": round(tolerance, 1),
        "pointing_game_strict": rates(strict),
        # Where the model card's calibration comes from (engine.trust.calibration reads it there).
        "reliability": reliability_diagram(np.array(confidences), np.array(right)).to_dict(),
    }


def explained_shape(model, bundle: ModelBundle) -> tuple[int, int, int]:
    """(channels, height, width) of the explained layer's output for the bundle's input size."""
    import torch

    grab = {}
    handle = model.get_submodule(bundle.target_layer).register_forward_hook(
        lambda _m, _i, output: grab.__setitem__("shape", tuple(output.shape[1:])))
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, bundle.input.channels, *bundle.input.size))
    finally:
        handle.remove()
    return grab["shape"]


def lesion_grid(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Share of each cell of the explained layer's grid covered by lesion: (N, 1, gh, gw)."""
    return np.stack([cv2.resize(m.astype(np.float32), (grid[1], grid[0]), interpolation=cv2.INTER_AREA)
                     for m in masks])[:, None]


def hardware_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX). There, bf16 autocast
    trains the demo about 2.7x faster than float32; elsewhere it is emulated and slower."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: stay with float32
        return False


def train_demo(out: Path, epochs: int = 6, per_epoch: int = 3000, batch: int = 32, seed: int = 0,
               log: Callable[[str], None] = print, lesion_weight: float = 1.0, precision: str = "auto",
               heldout: int = 600) -> dict:
    """Train the demo model.

    Besides the class label, the explained layer gets an auxiliary target: where the lesion is
    (phantoms come with masks), so that its channels locate lesions and the demo's maps mean
    something to a class. The auxiliary 1x1 head is dropped after training; the shipped model is
    a plain torchvision ResNet-18.

    ``precision`` "auto" trains under bfloat16 autocast where the CPU has it in hardware, else
    float32 ("bf16" / "fp32" force one). Weights and optimizer state stay float32 either way, and
    channels-last memory layout (about 1.2x faster on CPU) is used throughout.
    """
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from engine.backends.architectures import build_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = parse_manifest(DEMO_MANIFEST, out)
    bf16 = precision == "bf16" or (precision == "auto" and hardware_bf16())
    log(f"training in {'bfloat16 autocast' if bf16 else 'float32'}, channels-last")
    torch.manual_seed(seed)
    model = build_model(bundle)
    explained = model.get_submodule(bundle.target_layer)
    channels, *grid = explained_shape(model, bundle)
    lesion_head = nn.Conv2d(channels, 1, kernel_size=1)
    captured = {}
    hook = explained.register_forward_hook(lambda _m, _i, output: captured.__setitem__("features", output))
    steps = epochs * (per_epoch // batch)
    optimizer = torch.optim.AdamW([*model.parameters(), *lesion_head.parameters()], lr=2e-3, weight_decay=1e-4)
    lesion_loss = nn.BCEWithLogitsLoss()
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    val_images, _, val_labels = make_dataset(300, seed=seed + 50_000)
    val_x = torch.from_numpy(phantom_batch(val_images, bundle)).contiguous(memory_format=torch.channels_last)
    model = model.to(memory_format=torch.channels_last)
    lesion_head = lesion_head.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    for epoch in range(epochs):
        images, masks, labels = make_dataset(per_epoch, seed=seed + 1000 * (epoch + 1))
        x_all = torch.from_numpy(phantom_batch(images, bundle)).contiguous(memory_format=torch.channels_last)
        y_all = torch.from_numpy(labels)
        m_all = torch.from_numpy(lesion_grid(masks, grid))
        order = torch.randperm(per_epoch)
        model.train()
        total_loss = 0.0
        for start in range(0, per_epoch - batch + 1, batch):
            idx = order[start : start + batch]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x_all[idx].contiguous(memory_format=torch.channels_last))
                lesion_logits = lesion_head(captured["features"])
            loss = loss_fn(logits.float(), y_all[idx])
            loss = loss + lesion_weight * lesion_loss(lesion_logits.float(), m_all[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * batch
        model.eval()
        with torch.inference_mode():
            val_acc = float((model(val_x).argmax(1).numpy() == val_labels).mean())
        log(f"epoch {epoch + 1}/{epochs}: loss {total_loss / per_epoch:.3f}, validation accuracy "
            f"{val_acc:.3f} ({time.perf_counter() - started:.0f} s)")
    hook.remove()
    # Shipped as float16 to fit the repository budget; measure what is shipped.
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    metrics = evaluate(bundle, model, n=heldout, seed=seed + 90_000)
    metrics["training"] = {"phantoms_seen": epochs * per_epoch, "epochs": epochs,
                           "seconds": round(time.perf_counter() - started), "weights_dtype": "float16",
                           "precision": "bfloat16 autocast" if bf16 else "float32",
                           "threads": torch.get_num_threads()}
    manifest = dict(DEMO_MANIFEST)
    reliability = metrics.pop("reliability")
    manifest["model_card"] = {
        "reliability": reliability,
        "summary": "ResNet-18, single-channel input, trained from scratch on synthetic phantoms "
                   "(normal, nodule, effusion) generated by engine.synthetic.phantoms, with an auxiliary "
                   "lesion-location target on the explained layer (dropped after training).",
        "metrics": metrics,
        "pointing_game_definition": "share of held-out lesion phantoms whose map peak for the true "
                                    "class lies on the true lesion mask, within the tolerance of the "
                                    "original pointing game (15 px at 224-px scale); "
                                    "pointing_game_strict allows no tolerance",
        "limitations": "Synthetic data only; says nothing about real radiographs.",
    }
    write_json_atomic(out / "manifest.json", manifest)
    log(f"held-out accuracy {metrics['accuracy']:.3f}; pointing game {metrics['pointing_game']}")
    fit_demo_ood(out, seed, log)
    return metrics


OOD_FIT_IMAGES = 900


def fit_demo_ood(folder: Path, seed: int = 0, log: Callable[[str], None] = print) -> None:
    """Fit the demo bundle's out-of-distribution statistics on fresh phantoms (a seed neither
    training nor evaluation uses) and store them: what ``evaluate --fit-ood`` does for a
    labelled folder."""
    from engine.backends.architectures import build_model, load_weights
    from engine.backends.torch_backend import TorchBackend
    from engine.bundle import load_bundle, update_manifest
    from engine.backends import available_engines, open_backend
    from engine.ood import fit_ood, manifest_entry, save_ood

    bundle = load_bundle(folder)
    model = build_model(bundle)
    load_weights(model, bundle)
    images, _, labels = make_dataset(OOD_FIT_IMAGES, seed=seed + 70_000)
    batches = [phantom_batch(images[i:i + 32], bundle) for i in range(0, len(images), 32)]

    def features(backend) -> np.ndarray:
        return np.concatenate([backend.forward_features(b)[1] for b in batches])

    # Fitted on the PyTorch engine; each ONNX engine the bundle has gets its own threshold.
    others = {e: features(open_backend(bundle, e)) for e in available_engines(bundle) if e != "torch"}
    stats = fit_ood(features(TorchBackend(bundle, model)), labels, bundle.num_classes, other_engines=others,
                    fitted_on=f"{OOD_FIT_IMAGES} phantoms (seed {seed + 70_000})")
    save_ood(stats, bundle.folder)
    update_manifest(bundle, ood=manifest_entry(stats))
    log(f"out-of-distribution check fitted on {stats.images} phantoms: threshold {stats.threshold:.2f}")


def reevaluate_demo(folder: Path, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """Measure a trained demo bundle again (same held-out phantoms) and rewrite its model card's
    metrics, keeping its training record: for when the analysis path changes, not the model."""
    from engine.backends.architectures import build_model, load_weights
    from engine.bundle import load_bundle, update_manifest

    bundle = load_bundle(folder)
    model = build_model(bundle)
    load_weights(model, bundle)
    metrics = evaluate(bundle, model.eval(), n=600, seed=seed + 90_000)
    card = dict(bundle.model_card)
    metrics["training"] = card.get("metrics", {}).get("training")
    card["reliability"] = metrics.pop("reliability")
    card["metrics"] = metrics
    update_manifest(bundle, model_card=card)
    log(f"held-out accuracy {metrics['accuracy']:.3f}; pointing game {metrics['pointing_game']}")
    fit_demo_ood(folder, seed, log)
    return metrics
