"""What the ``lantern-engine`` subcommands do, kept apart from argument parsing."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.analysis import AnalysisOptions, analyze, load_model
from engine.errors import LanternError, ModelBundleError
from engine.trust.faithfulness import score_analyses, scores_to_dict
from engine.files import safe_name, unused_path, write_bytes_atomic, write_json_atomic
from engine.images import load_image
from engine.exports.overlay import encode_png, render_overlay


def explain_files(args: argparse.Namespace) -> int:
    if args.inputs and args.files:
        raise LanternError("give either image files or --input NAME=FILE for one case, not both")
    if not args.inputs and not args.files:
        raise LanternError("give the images to explain (or --input NAME=FILE for each input of a multi-input model)")
    if args.inputs:
        return explain_case(args)
    model = load_model(args.model, args.engine)
    options = AnalysisOptions(methods=(args.method,), mc_samples=args.mc, seed=args.seed)
    sources = {f.resolve() for f in args.files}
    args.out.mkdir(parents=True, exist_ok=True)
    failures = []
    started = time.perf_counter()
    for n, path in enumerate(args.files, 1):
        prefix = f"[{n}/{len(args.files)}] {path.name}"
        try:
            image = load_image(path, frame=args.frame)
            result = analyze(image, model, options)
        except LanternError as exc:
            failures.append(exc)
            print(f"{prefix}: FAILED: {exc.reason}", file=sys.stderr)
            continue
        stem = path.stem + (f"-frame{args.frame}" if image.n_frames > 1 else "")
        folder = unused_path(args.out / stem)
        record = result.to_dict(args.method)
        if getattr(args, "faithfulness", None):
            scores = score_analyses([result], model, classes=args.faithfulness)[0]
            record["faithfulness"] = scores_to_dict(scores, result.classes)
        written = [write_json_atomic(folder / "result.json", record)]
        maps = next(iter(result.maps.values()))
        for index, name in enumerate(result.classes):
            target = folder / f"overlay-{index}-{safe_name(name, 'class')}.png"
            if target.resolve() in sources:
                raise LanternError("refusing to write over a source file", target)
            written.append(write_bytes_atomic(target, encode_png(render_overlay(image, maps.normalized_map(index)))))
        flag = ""
        if result.uncertainty is not None:
            flag = f", confidence {result.uncertainty.confidence:.2f}" + (" FLAGGED" if result.uncertainty.flagged else "")
        print(f"{prefix}: {result.predicted_class} ({result.probabilities[result.predicted]:.2f}{flag}) -> {folder}",
              file=sys.stderr)
    done = len(args.files) - len(failures)
    print(f"Analysed {done} of {len(args.files)} file(s) in {time.perf_counter() - started:.1f} s; "
          f"results in {args.out}", file=sys.stderr)
    return 1 if failures else 0


def _case_files(pairs: list[str]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for pair in pairs:
        name, sep, file = pair.partition("=")
        if not sep or not name or not file:
            raise LanternError(f"--input takes NAME=FILE (e.g. PA=pa.dcm), not '{pair}'")
        if name in files:
            raise LanternError(f"--input {name} is given twice")
        files[name] = Path(file)
    return files


def explain_case(args: argparse.Namespace) -> int:
    """One case through a multi-input model: one result.json, one overlay per input and class."""
    model = load_model(args.model, args.engine)
    files = _case_files(args.inputs)
    options = AnalysisOptions(methods=(args.method,), mc_samples=args.mc, seed=args.seed)
    started = time.perf_counter()
    case = {name: load_image(path, frame=args.frame) for name, path in files.items()}
    result = analyze(case, model, options)
    first = files[model.bundle.input_names[0]]
    folder = unused_path(args.out / f"{first.stem}-case")
    sources = {f.resolve() for f in files.values()}
    written = [write_json_atomic(folder / "result.json", result.to_dict(args.method))]
    for view in result.views:
        maps = view.maps[args.method]
        for index, name in enumerate(result.classes):
            target = folder / f"overlay-{view.name}-{index}-{safe_name(name, 'class')}.png"
            if target.resolve() in sources:
                raise LanternError("refusing to write over a source file", target)
            written.append(write_bytes_atomic(target, encode_png(render_overlay(case[view.name],
                                                                                maps.normalized_map(index)))))
    flag = ""
    if result.uncertainty is not None:
        flag = f", confidence {result.uncertainty.confidence:.2f}" + (" FLAGGED" if result.uncertainty.flagged else "")
    print(f"case ({', '.join(f'{n}={p.name}' for n, p in files.items())}): {result.predicted_class} "
          f"({result.probabilities[result.predicted]:.2f}{flag}) -> {folder} "
          f"in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return 0


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        # weights_only: a checkpoint is data, never code to run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for unsafe or broken files
        raise ModelBundleError(f"could not read it as a PyTorch state dict (only plain tensors are "
                               f"accepted, never pickled code): {exc}", path) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ModelBundleError("the file does not hold a state dict (a mapping of names to tensors)", path)
    # DataParallel checkpoints prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def bundle_command(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from engine.backends.torch_backend import TorchBackend
    from engine.bundle import load_bundle, parse_manifest

    if args.out.exists() and any(args.out.iterdir()):
        raise ModelBundleError("the output folder exists and is not empty; choose a new folder", args.out)
    size = args.size * 2 if len(args.size) == 1 else args.size[:2]
    input_spec = {"channels": args.channels, "size": size, "resize": args.resize, "intensity": args.intensity}
    if args.normalization:
        input_spec["normalization"] = args.normalization
    manifest = {
        "format_version": 1, "name": args.name or args.out.name, "version": args.version,
        "architecture": args.arch, "classes": [c.strip() for c in args.classes.split(",") if c.strip()],
        "input": input_spec, "head": {"dropout": args.dropout}, "weights": "model.safetensors",
        "intended_use": args.intended_use,
    }
    if args.target_layer:
        manifest["target_layer"] = args.target_layer
    parse_manifest(manifest, args.out)
    state = _read_state_dict(args.weights)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(args.out / "model.safetensors"))
    write_json_atomic(args.out / "manifest.json", manifest)
    try:
        TorchBackend(load_bundle(args.out))  # proves the weights fit before anyone relies on it
    except LanternError:
        for f in ("manifest.json", "model.safetensors"):
            (args.out / f).unlink(missing_ok=True)
        raise
    print(f"Wrote model bundle {args.out} ({args.arch}, {len(manifest['classes'])} classes)", file=sys.stderr)
    return 0
