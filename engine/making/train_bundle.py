"""After the last epoch: the bundle, and what makes it trusted, explained and small.

In this order, each step recorded in the manifest as it is done (so a refusal late leaves a bundle
that says what it has):

1. ``model.safetensors`` (float32) and ``manifest.json`` whose model card holds the training
   record, the split and the refused images; ``split.csv`` was written before training.
2. Temperature scaling fitted on the validation split (the evaluation code, evaluation_run, on
   cases training never used for gradients), stored as ``evaluate --fit-temperature`` stores it.
3. With ``--export``: ONNX (onnx_export.export_bundle), and with ``int8`` the quantized model
   (quantization.quantize_bundle), each verified and validated as those commands do.
4. The out-of-distribution statistics (engine/ood.py) fitted on the training split's features
   (the un-augmented prepared inputs: what analyze computes for those images), with a threshold
   for every engine the bundle now has.
5. The held-out test split through ``analyze``, by the evaluation code: its metrics and
   reliability go into the model card (temperature applied), its full report, figures and
   mistakes into ``training/test-evaluation``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from engine.analysis import load_model
from engine.backends import available_engines, open_backend
from engine.bundle import ModelBundle, load_bundle, update_manifest
from engine.errors import LanternError
from engine.files import write_bytes_atomic, write_json_atomic
from engine.making.train_data import TEST, TRAIN, VALIDATION, TrainingData
from engine.ood import MIN_IMAGES_PER_CLASS as OOD_MIN_PER_CLASS
from engine.ood import fit_ood, manifest_entry, save_ood
from engine.steps import run_to_end
from engine.trust.temperature import store_temperature
from engine.workflows.evaluation_outputs import write_outputs
from engine.workflows.evaluation_run import build_report, evaluation_steps, fitted_temperature

FEATURE_BATCH = 32


def write_bundle(out: Path, manifest: dict, weights: dict, card: dict) -> ModelBundle:
    from safetensors.torch import save

    data = save({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
                 for k, v in weights.items()})
    write_bytes_atomic(out / "model.safetensors", data)
    write_json_atomic(out / "manifest.json", {**manifest, "model_card": card})
    return load_bundle(out)


def _run(bundle: ModelBundle, data: TrainingData, part: int):
    """One split through analyze (the PyTorch engine), as ``evaluate`` runs a labelled folder."""
    return run_to_end(evaluation_steps(data.subset(part), load_model(bundle.folder, "torch")))


def fit_validation_temperature(bundle: ModelBundle, data: TrainingData, log: Callable[[str], None]) -> ModelBundle:
    run = _run(bundle, data, VALIDATION)
    temperature = fitted_temperature(run)
    reliability = build_report(run, temperature)["reliability"]
    after = reliability["after"] or reliability["before"]
    stored = store_temperature(bundle, temperature, f"the validation split of {data.labelled.csv.name} (split.csv)",
                               len(run.results), reliability["before"]["ece"], after["ece"])
    log(f"temperature {temperature:.3f} fitted on the validation split ({len(run.results)} images): "
        f"ECE {reliability['before']['ece']:.3f} -> {after['ece']:.3f}")
    return stored


def export_bundle_as(bundle: ModelBundle, kind: str, log: Callable[[str], None],
                     quantize_limits: dict | None = None) -> tuple[ModelBundle, str | None]:
    """ONNX, then (``int8``) the quantized model. A refusal is returned in words, not raised: the
    bundle stands on the engines it has."""
    from engine.making.onnx_export import export_bundle
    from engine.making.quantization import quantize_bundle

    try:
        bundle = export_bundle(bundle.folder, log=log)
    except LanternError as exc:
        return bundle, f"the ONNX export was refused, the bundle runs on the PyTorch engine only: {exc.reason}"
    if kind != "int8":
        return bundle, None
    try:
        bundle = quantize_bundle(bundle.folder, log=log, **(quantize_limits or {}))
    except LanternError as exc:
        return bundle, f"the int8 model was refused, the bundle runs on torch and onnx: {exc.reason}"
    return bundle, None


def _features(backend, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([backend.forward_features(inputs[i : i + FEATURE_BATCH])[1]
                           for i in range(0, len(inputs), FEATURE_BATCH)])


def fit_training_ood(bundle: ModelBundle, data: TrainingData, log: Callable[[str], None]) -> ModelBundle:
    """The out-of-distribution check fitted on the training split, as ``evaluate --fit-ood`` fits it
    on a labelled folder; skipped, saying why, when a class has too few training images."""
    idx = data.indices(TRAIN)
    counts = np.bincount(data.labels[idx], minlength=len(data.classes))
    if counts.min() < OOD_MIN_PER_CLASS:
        log(f"out-of-distribution check not fitted: it needs {OOD_MIN_PER_CLASS} training images of every class "
            f"(the training split has {', '.join(f'{c} {int(n)}' for c, n in zip(data.classes, counts))})")
        return bundle
    inputs = data.inputs[idx]
    engines = available_engines(bundle)
    # Fitted on the PyTorch engine's features; every other engine gets its own threshold.
    others = {e: _features(open_backend(bundle, e), inputs) for e in engines if e != "torch"}
    stats = fit_ood(_features(open_backend(bundle, "torch"), inputs), data.labels[idx], len(data.classes),
                    other_engines=others, fitted_on=f"the training split of {data.labelled.csv.name} (split.csv)")
    save_ood(stats, bundle.folder)
    log(f"out-of-distribution check fitted on {stats.images} training images: threshold {stats.threshold:.2f}")
    return update_manifest(bundle, ood=manifest_entry(stats))


def evaluate_test_split(bundle: ModelBundle, data: TrainingData, training: Path,
                        log: Callable[[str], None]) -> ModelBundle:
    """The test split's figures into the model card; the full report beside the checkpoint."""
    run = _run(bundle, data, TEST)
    report = build_report(run)
    folder = write_outputs(report, training, "test-evaluation")
    m = report["metrics"]
    figures = {"split": "test", "cases": m["cases"], "accuracy": m["accuracy"], "per_class": m["per_class"],
               "confusion_matrix": m["confusion_matrix"], "temperature": report["temperature"],
               "engine": run.engine, "report": str(folder.relative_to(bundle.folder))}
    if report["pointing_game"]:
        figures["pointing_game"] = report["pointing_game"]
        figures["pointing_game_definition"] = report["pointing_game_definition"]
    figures.update(_int8_on_test(bundle, data, run.logits))
    reliability = report["reliability"]
    card = {**bundle.model_card, "metrics": figures, "reliability": reliability["after"] or reliability["before"]}
    aucs = ", ".join(f"{c} {v['auc']:.3f}" for c, v in m["per_class"].items() if v["auc"] is not None)
    log(f"test split ({m['cases']} images): accuracy {m['accuracy']:.3f}, AUC {aucs}"
        + (f"; int8 accuracy {figures['int8']['accuracy']:.3f}" if "int8" in figures else "")
        + f"; report in {folder}")
    return update_manifest(bundle, model_card=card)


def _int8_on_test(bundle: ModelBundle, data: TrainingData, torch_logits: np.ndarray) -> dict:
    """Where the bundle has an int8 model: its accuracy on the test split and its agreement with the
    PyTorch engine there (quantization validates on phantoms; this is the user's own images)."""
    if "onnx-int8" not in available_engines(bundle):
        return {}
    idx = data.indices(TEST)
    backend = open_backend(bundle, "onnx-int8")
    logits = np.concatenate([backend.forward(data.inputs[idx][i : i + FEATURE_BATCH])
                             for i in range(0, len(idx), FEATURE_BATCH)])
    predicted = logits.argmax(axis=1)
    figures = {"accuracy": float(np.mean(predicted == data.labels[idx]))}
    if len(torch_logits) == len(idx):  # every test image analysed on torch (none skipped)
        figures["top1_agreement_with_torch"] = float(np.mean(predicted == torch_logits.argmax(axis=1)))
    return {"int8": figures}
