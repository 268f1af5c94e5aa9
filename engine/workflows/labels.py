"""Labelled sets: the one reader for a labels CSV (teaching sessions and model evaluation).

The CSV has a header row with the columns ``file`` and ``class`` and optionally ``mask`` and
``group``: the image file and the mask (a PNG, non-zero on the lesion) are paths relative to the
CSV's own folder; ``class`` is a class name; ``group`` names the patient (or anything else whose
images belong together), which ``lantern-engine train`` keeps in one split and evaluation ignores.
Blank lines and lines starting with ``#`` are ignored.
Every problem is reported as a :class:`LabelsError` naming the CSV and the line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.errors import LanternError

REQUIRED_COLUMNS = ("file", "class")
OPTIONAL_COLUMNS = ("mask", "group")


class LabelsError(LanternError):
    """A labels CSV is unreadable, malformed, or names files or classes that do not exist."""


@dataclass(frozen=True)
class LabelledCase:
    path: Path  # the image file, resolved against the CSV's folder
    label: int  # index into the set's classes
    mask: Path | None  # PNG lesion mask, or None
    line: int  # line of the CSV it came from (1 = header), for messages and exports
    group: str = ""  # the 'group' column (a patient), "" when not given

    def load_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The mask as bool (H, W) on an image of ``shape``, resized (nearest) if it differs."""
        if self.mask is None:
            raise LabelsError("this case has no mask", self.path)
        pixels = cv2.imread(str(self.mask), cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise LabelsError("the mask could not be read as an image (expected a PNG)", self.mask)
        if pixels.ndim == 3:
            pixels = pixels.max(axis=2)
        mask = pixels > 0
        if mask.shape != tuple(shape):
            resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
            mask = resized > 0
        return mask


@dataclass(frozen=True)
class LabelledSet:
    csv: Path
    classes: tuple[str, ...]
    cases: tuple[LabelledCase, ...]

    @property
    def has_masks(self) -> bool:
        return any(c.mask is not None for c in self.cases)

    def class_of(self, case: LabelledCase) -> str:
        return self.classes[case.label]


def _existing(folder: Path, raw: str, what: str, csv_path: Path, line: int) -> Path:
    path = (folder / raw).resolve()
    if not path.is_file():
        raise LabelsError(f"line {line}: the {what} '{raw}' does not exist (paths are relative to the "
                          f"CSV's folder)", csv_path)
    return path


def read_labels(csv_path: str | Path, classes: tuple[str, ...] | list[str] | None) -> LabelledSet:
    """Read a labels CSV whose classes must be among ``classes`` (the model's, in its order);
    ``None``: the file's own class names, in the order they first appear (a model to be trained)."""
    csv_path = Path(csv_path)
    from_file = classes is None
    classes = [] if from_file else tuple(classes)
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"could not read the labels file: {exc}", csv_path) from exc
    rows = [(n, row) for n, row in enumerate(csv.reader(text.splitlines()), start=1)
            if row and any(cell.strip() for cell in row) and not row[0].lstrip().startswith("#")]
    if not rows:
        raise LabelsError("the labels file is empty (expected a header: file,class[,mask][,group])", csv_path)
    header_line, header = rows[0]
    columns = [c.strip().lower() for c in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise LabelsError(f"line {header_line}: the header has no {' or '.join(repr(c) for c in missing)} "
                          f"column (expected: file,class[,mask][,group])", csv_path)
    unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if unknown:
        raise LabelsError(f"line {header_line}: unknown column(s) {', '.join(unknown)} "
                          f"(expected: file,class[,mask][,group])", csv_path)
    at = {c: columns.index(c) for c in columns}
    folder = csv_path.parent
    cases: list[LabelledCase] = []
    seen: dict[Path, int] = {}
    for line, row in rows[1:]:
        if len(row) > len(columns):
            raise LabelsError(f"line {line}: {len(row)} values for {len(columns)} columns", csv_path)
        cells = [c.strip() for c in row] + [""] * (len(columns) - len(row))
        file, name = cells[at["file"]], cells[at["class"]]
        if not file or not name:
            raise LabelsError(f"line {line}: every row needs a file and a class", csv_path)
        if name not in classes and from_file:
            classes.append(name)
        if name not in classes:
            raise LabelsError(f"line {line}: unknown class '{name}' (the model's classes: "
                              f"{', '.join(classes)})", csv_path)
        path = _existing(folder, file, "image file", csv_path, line)
        if path in seen:
            raise LabelsError(f"line {line}: '{file}' is already labelled on line {seen[path]}", csv_path)
        seen[path] = line
        raw_mask = cells[at["mask"]] if "mask" in at else ""
        mask = _existing(folder, raw_mask, "mask", csv_path, line) if raw_mask else None
        group = cells[at["group"]] if "group" in at else ""
        cases.append(LabelledCase(path, classes.index(name), mask, line, group))
    if not cases:
        raise LabelsError("the labels file has a header but no cases", csv_path)
    return LabelledSet(csv_path, tuple(classes), tuple(cases))
