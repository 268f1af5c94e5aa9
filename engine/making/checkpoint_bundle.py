"""``lantern-engine bundle --from``: a Hugging Face or timm checkpoint folder made a model bundle.

A checkpoint folder opens as it is on the PyTorch engine (engine/checkpoints.py), but it has no
manifest, so nothing can record an exported ONNX model, a fitted temperature or cut-offs in it.
This copies the checkpoint's own files (``config.json``, ``model.safetensors`` and, for Hugging
Face, ``preprocessor_config.json``) into a new folder and writes a manifest describing what
Lantern read from them: the architecture stays ``huggingface:<class>`` / ``timm:<name>`` (the
PyTorch engine still builds the model with its library), the classes, input size and
preprocessing are those of the checkpoint. Then the bundle is exported to ONNX, so the packaged
app, which has neither torch nor transformers nor timm, runs it on the ``onnx`` engine (and on
``onnx-int8`` after ``lantern-engine quantize``). Nothing is fetched and nothing is unpickled.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from engine.bundle import FORMAT_VERSION, MANIFEST_NAME, ModelBundle, load_bundle, parse_manifest
from engine.checkpoints import (
    CONFIG_NAME, DEFAULT_HEAD_DROPOUT, PREPROCESSOR_NAME, WEIGHTS_NAME, checkpoint_summary, is_checkpoint_folder,
    library_name, load_checkpoint_folder,
)
from engine.errors import LanternError, ModelBundleError
from engine.files import write_json_atomic


def checkpoint_manifest(checkpoint: ModelBundle, *, name: str, version: str, dropout: float,
                        target_layer: str | None, intended_use: str) -> dict:
    """The manifest saying what Lantern read from the checkpoint (see docs/model-bundle.md)."""
    spec = checkpoint.input
    source = {"channels": spec.channels, "size": list(spec.size), "resize": spec.resize, "intensity": spec.intensity,
              "normalization": {"mean": list(spec.mean), "std": list(spec.std)}}
    if spec.crop != 1.0:
        source["crop"] = spec.crop
    how = (f"Made by 'lantern-engine bundle --from' from a {library_name(checkpoint.architecture)} checkpoint folder "
           f"('{checkpoint.folder.name}'); the model keeps that library's format.")
    card = {**checkpoint.model_card, "summary": checkpoint_summary(how, dropout)}
    manifest = {
        "format_version": FORMAT_VERSION, "name": name, "version": version,
        "architecture": checkpoint.architecture, "classes": list(checkpoint.classes), "input": source,
        "head": {"dropout": dropout}, "weights": WEIGHTS_NAME, "map_alignment": checkpoint.map_alignment,
        "intended_use": intended_use, "model_card": card,
    }
    if target_layer:
        manifest["target_layer"] = target_layer
    return manifest


def bundle_from_checkpoint(source: str | Path, out: str | Path, *, name: str | None = None, version: str = "1.0.0",
                           dropout: float = DEFAULT_HEAD_DROPOUT, target_layer: str | None = None,
                           intended_use: str = "", export: bool = True, verify_images: int = 8,
                           log: Callable[[str], None] = lambda _m: None) -> ModelBundle:
    """Write the bundle, prove the PyTorch engine opens it, then (``export``) export it to ONNX.
    A refused export leaves the bundle (it runs on the PyTorch engine) and raises, saying so."""
    from engine.backends.torch_backend import TorchBackend
    from engine.making.onnx_export import export_bundle

    source, out = Path(source), Path(out)
    if not is_checkpoint_folder(source):
        raise ModelBundleError("--from needs a Hugging Face or timm checkpoint folder (config.json and "
                               "model.safetensors, no manifest.json)", source)
    checkpoint = load_checkpoint_folder(source)  # every problem named by file and field
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelBundleError("the output folder exists and is not empty; choose a new folder", out)
    if out.resolve().is_relative_to(source.resolve()):
        raise ModelBundleError("the bundle cannot be made inside the checkpoint folder", out)
    manifest = checkpoint_manifest(checkpoint, name=name or out.name, version=version, dropout=dropout,
                                   target_layer=target_layer, intended_use=intended_use)
    parse_manifest(manifest, out)  # refuses before anything is written
    files = [CONFIG_NAME, WEIGHTS_NAME] + [PREPROCESSOR_NAME] * (source / PREPROCESSOR_NAME).is_file()
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for file in files:
            shutil.copyfile(source / file, out / file)
        write_json_atomic(out / MANIFEST_NAME, manifest)
        TorchBackend(load_bundle(out))  # proves the model builds and its weights fit
    except BaseException:
        for file in [*files, MANIFEST_NAME]:
            (out / file).unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    log(f"wrote model bundle {out} ({checkpoint.architecture}, {checkpoint.num_classes} classes)")
    if not export:
        return load_bundle(out)
    try:
        return export_bundle(out, verify_images=verify_images, log=log)
    except LanternError as exc:
        raise type(exc)(f"the bundle was written and runs on the PyTorch engine, but its ONNX export was "
                        f"refused: {exc.reason}", out) from exc
