"""``lantern-engine bench --ood``: how well the out-of-distribution check separates the demo
model's world from images it was not made for.

In distribution: held-out phantoms (a seed no fit ever used). Out of distribution: every image
among pydicom's own test files that opens as a picture (CT, MR, US, NM, CR of other body parts,
RGB secondary captures...), and phantoms of other kinds (engine/synthetic/other_phantoms.py).
Printed: AUROC of the Mahalanobis score (and, for comparison, of the energy score and of the
maximum softmax probability, which read only the logits), the share of held-out phantoms flagged
at the bundle's threshold, the share of the OOD set flagged by tags or score, per group, and the
score's added cost per analysis.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.analysis import load_model
from engine.errors import LanternError
from engine.images import load_image
from engine.intended_inputs import check_inputs
from engine.making.training import phantom_image
from engine.ood import OodStatistics, fit_ood
from engine.preprocess import prepare_input
from engine.synthetic.other_phantoms import KINDS, make_other
from engine.synthetic.phantoms import make_dataset
from engine.source_image import ImageMetadata, SourceImage, Window
from engine.workflows.evaluation import roc_curve

HELD_OUT_SEED = 424242  # never used for training (train-demo) or fitting (FIT_SEED)
FIT_SEED = 5150
TARGETS = {"auroc": 0.95, "in_distribution_flagged": 0.05, "ood_flagged": 0.90, "cost_ms": 1.0}


def _pydicom_pictures() -> list[Path]:
    import pydicom

    root = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", "") and
                  not p.name.startswith("."))


def _features(model, images: list[SourceImage]) -> tuple[np.ndarray, np.ndarray]:
    logits, features = [], []
    for start in range(0, len(images), 16):
        batch = np.concatenate([prepare_input(img, model.bundle.input).tensor for img in images[start:start + 16]])
        lg, ft = model.backend.forward_features(batch)
        logits.append(lg)
        features.append(ft.reshape(len(ft), -1))
    return np.concatenate(logits), np.concatenate(features)


def _energy(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))  # higher = more unusual


def _msp(logits: np.ndarray) -> np.ndarray:
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return -(p / p.sum(axis=1, keepdims=True)).max(axis=1)  # higher = more unusual


def _other_image(kind: str, rng: np.random.Generator) -> SourceImage:
    pixels = make_other(kind, rng)
    if pixels.ndim == 3:
        meta = ImageMetadata(photometric="RGB", rows=pixels.shape[0], columns=pixels.shape[1])
        return SourceImage(Path(f"{kind}.png"), pixels, Window(127.5, 255.0), meta)
    return phantom_image(pixels, f"{kind}.png")


def ood_bench(model_path: Path, engine: str = "auto", held_out: int = 300, others: int = 30,
              fit_images: int = 600) -> dict:
    model = load_model(model_path, engine)
    stats: OodStatistics | None = model.ood  # with this engine's threshold
    fitted_here = stats is None
    if fitted_here:  # no statistics in the bundle: fit them the way train-demo does
        images, _, labels = make_dataset(fit_images, seed=FIT_SEED)
        _, features = _features(model, [phantom_image(i) for i in images])
        stats = fit_ood(features, labels, model.bundle.num_classes, fitted_on="phantoms (bench)")
    images, _, _ = make_dataset(held_out, seed=HELD_OUT_SEED)
    inside = [phantom_image(i, f"held-out-{n}.png") for n, i in enumerate(images)]
    groups: dict[str, list[SourceImage]] = defaultdict(list)
    skipped = 0
    for path in _pydicom_pictures():
        try:
            image = load_image(path, with_tags=False)
        except LanternError:
            skipped += 1  # not a picture (RT, SR, SEG...) or not decodable here: refused, as it should be
            continue
        groups[f"pydicom {image.metadata.modality or 'no modality'}"].append(image)
    rng = np.random.default_rng(HELD_OUT_SEED)
    for kind in KINDS:
        groups[f"phantom {kind}"] = [_other_image(kind, rng) for _ in range(others)]
    outside = [img for imgs in groups.values() for img in imgs]
    in_logits, in_features = _features(model, inside)
    out_logits, out_features = _features(model, outside)
    truth = np.r_[np.zeros(len(inside)), np.ones(len(outside))].astype(bool)
    scores = {"mahalanobis": np.r_[stats.scores(in_features), stats.scores(out_features)],
              "energy": np.r_[_energy(in_logits), _energy(out_logits)],
              "max_softmax": np.r_[_msp(in_logits), _msp(out_logits)]}
    auroc = {name: roc_curve(s, truth).auc for name, s in scores.items()}
    intended = model.bundle.intended_inputs

    def flagged(images, features) -> np.ndarray:
        return np.array([check_inputs(intended, [img], stats, f).outside for img, f in zip(images, features)])

    in_flagged = flagged(inside, in_features)
    out_flagged = flagged(outside, out_features)
    per_group, start = {}, 0
    for name, imgs in groups.items():
        part = out_flagged[start:start + len(imgs)]
        by_tags = [bool(intended and intended.mismatches(img)) for img in imgs]
        by_score = stats.scores(out_features[start:start + len(imgs)]) > stats.threshold
        per_group[name] = {"images": len(imgs), "flagged": int(part.sum()), "by_tags": int(sum(by_tags)),
                           "by_score": int(by_score.sum())}
        start += len(imgs)
    one = in_features[0]
    timing = []
    for _ in range(200):
        t = time.perf_counter()
        stats.score(one)
        timing.append(time.perf_counter() - t)
    return {
        "model": model.bundle.name, "engine": model.engine, "statistics": "fitted here (the bundle has none)"
        if fitted_here else f"the bundle's ({stats.images} images, {stats.fitted_on})",
        "threshold": stats.threshold, "percentile": stats.percentile,
        "in_distribution": len(inside), "out_of_distribution": len(outside), "pydicom_refused": skipped,
        "auroc": auroc, "in_distribution_flagged": float(in_flagged.mean()),
        "ood_flagged": float(out_flagged.mean()), "groups": per_group,
        "cost_ms": float(np.median(timing) * 1000), "targets": TARGETS,
    }


def print_ood_report(r: dict) -> None:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    t = r["targets"]
    print(f"Out-of-distribution check: {r['model']} on {r['engine']}; statistics: {r['statistics']}")
    print(f"  threshold {r['threshold']:.2f} (the {r['percentile']:g}th percentile of out-of-fold in-distribution scores)")
    print(f"  {r['in_distribution']} held-out phantoms vs {r['out_of_distribution']} other images "
          f"({r['pydicom_refused']} pydicom files refused before any score: not pictures or not decodable)")
    for name, value in r["auroc"].items():
        note = f"  target >= {t['auroc']}: {mark(value >= t['auroc'])}" if name == "mahalanobis" else ""
        print(f"  AUROC {name:12s} {value:.3f}{note}")
    print(f"  held-out phantoms flagged: {r['in_distribution_flagged']:.1%}  target <= "
          f"{t['in_distribution_flagged']:.0%}: {mark(r['in_distribution_flagged'] <= t['in_distribution_flagged'])}")
    print(f"  other images flagged (tags or score): {r['ood_flagged']:.1%}  target >= {t['ood_flagged']:.0%}: "
          f"{mark(r['ood_flagged'] >= t['ood_flagged'])}")
    for name, g in r["groups"].items():
        print(f"    {name:24s} {g['flagged']:3d} of {g['images']:3d} flagged ({g['by_tags']} by tags, "
              f"{g['by_score']} by score)")
    print(f"  added cost per analysis: {r['cost_ms']:.3f} ms  target < {t['cost_ms']} ms: "
          f"{mark(r['cost_ms'] < t['cost_ms'])}")
