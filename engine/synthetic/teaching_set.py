"""The demo teaching set shipped in ``resources/teaching``: synthetic phantoms with labels and masks.

Regenerate it with::

    python -m engine.synthetic.teaching_set resources/teaching

Fourteen cases from :mod:`engine.synthetic.phantoms` (fixed seed, no patient data): normals, clear nodules
and effusions, and two hard ones (the subtlest nodule and the smallest effusion among several
candidates). Images are 8-bit PNGs named ``case01.png``... in shuffled order, so neither the name
nor the order gives the answer away; ``labels.csv`` holds ``file,class,mask`` with a PNG mask for
every lesion case. Files are written atomically; an existing folder is only refreshed when it holds
this set already (its README's first line), never anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from engine.files import write_bytes_atomic
from engine.synthetic.phantoms import CLASSES, Phantom, make_phantom

README_FIRST_LINE = "Lantern demo teaching set: SYNTHETIC phantoms, no patient data."
SIZE = 256
# (class, kind): "clear" keeps the largest lesion of a few candidates, "hard" the smallest.
PLAN = (("normal", "clear"),) * 5 + (("nodule", "clear"),) * 4 + (("nodule", "hard"),) \
    + (("effusion", "clear"),) * 3 + (("effusion", "hard"),)
_CANDIDATES = 5


def _pick(rng: np.random.Generator, name: str, kind: str) -> Phantom:
    if name == "normal":
        return make_phantom(rng, 0, SIZE)
    candidates = [make_phantom(rng, CLASSES.index(name), SIZE) for _ in range(_CANDIDATES)]
    size = [int(p.mask.sum()) for p in candidates]
    return candidates[int(np.argmin(size) if kind == "hard" else np.argmax(size))]


def _to_png8(image: np.ndarray) -> bytes:
    lo, hi = np.percentile(image, (0.5, 99.5))
    gray = np.clip((image - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).round().astype(np.uint8)
    ok, data = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def _mask_png(mask: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("PNG encoding failed")
    return data.tobytes()


def write_teaching_set(out: str | Path, seed: int = 2024) -> Path:
    """Write the set into ``out`` and return the path of its labels.csv."""
    out = Path(out)
    readme = out / "README.txt"
    if out.exists() and any(out.iterdir()):
        if not readme.is_file() or readme.read_text(encoding="utf-8").splitlines()[:1] != [README_FIRST_LINE]:
            raise FileExistsError(f"{out} holds other files; write the teaching set into a new folder")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(PLAN))
    rows = ["file,class,mask"]
    hard = []
    for number, plan_index in enumerate(order, start=1):
        name, kind = PLAN[plan_index]
        phantom = _pick(rng, name, kind)
        image = f"images/case{number:02d}.png"
        write_bytes_atomic(out / image, _to_png8(phantom.image))
        mask = ""
        if phantom.mask.any():
            mask = f"masks/case{number:02d}.png"
            write_bytes_atomic(out / mask, _mask_png(phantom.mask))
        rows.append(f"{image},{name},{mask}")
        if kind == "hard":
            hard.append(f"case{number:02d}")
    labels = write_bytes_atomic(out / "labels.csv", ("\n".join(rows) + "\n").encode("utf-8"))
    write_bytes_atomic(readme, (
        f"{README_FIRST_LINE}\n\n"
        f"{len(PLAN)} cases drawn by engine/synthetic/phantoms.py (seed {seed}); regenerate with\n"
        "    python -m engine.synthetic.teaching_set resources/teaching\n"
        "labels.csv: file,class,mask (paths relative to this folder). Masks are non-zero on the lesion.\n"
        f"Hard cases (the subtlest lesion among {_CANDIDATES} candidates): {', '.join(hard)}.\n"
        "Not anatomy and not pathology: for teaching how to read the tool, never for diagnosis.\n"
    ).encode("utf-8"))
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    print(f"wrote {write_teaching_set(args.out, args.seed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
