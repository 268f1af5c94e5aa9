"""The labels CSV reader: good sets read, every bad one is a LabelsError naming the CSV and line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.workflows.labels import LabelsError, read_labels
from engine.resources import TEACHING_LABELS

CLASSES = ("normal", "nodule", "effusion")
TEACHING = TEACHING_LABELS


def write_set(folder: Path, body: str, images=("a.png", "b.png"), masks=("a_mask.png",)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in images:
        cv2.imwrite(str(folder / name), np.full((40, 50), 128, np.uint8))
    for name in masks:
        mask = np.zeros((20, 25), np.uint8)
        mask[5:10, 5:10] = 255
        cv2.imwrite(str(folder / name), mask)
    csv = folder / "labels.csv"
    csv.write_text(body, encoding="utf-8")
    return csv


def test_reads_files_classes_and_masks_relative_to_the_csv(tmp_path):
    csv = write_set(tmp_path / "set", "File,Class,Mask\n# a comment\n\na.png, nodule ,a_mask.png\nb.png,normal,\n")
    labelled = read_labels(csv, CLASSES)
    assert labelled.classes == CLASSES
    assert [c.path.name for c in labelled.cases] == ["a.png", "b.png"]
    assert [c.label for c in labelled.cases] == [1, 0]
    assert [c.line for c in labelled.cases] == [4, 5]
    assert labelled.cases[0].mask.name == "a_mask.png" and labelled.cases[1].mask is None
    assert labelled.has_masks
    # The 20x25 mask is brought onto the 40x50 image grid (nearest neighbour).
    mask = labelled.cases[0].load_mask((40, 50))
    assert mask.shape == (40, 50) and mask.sum() == 100 and mask[10:20, 10:20].all()


def test_mask_column_is_optional(tmp_path):
    csv = write_set(tmp_path / "set", "class,file\neffusion,a.png\n", masks=())
    labelled = read_labels(csv, CLASSES)
    assert labelled.cases[0].label == 2 and labelled.cases[0].mask is None and not labelled.has_masks


@pytest.mark.parametrize("body, words", [
    ("file,class\na.png,pneumonia\n", ["line 2", "unknown class 'pneumonia'", "normal, nodule, effusion"]),
    ("file,class\nmissing.png,normal\n", ["line 2", "'missing.png' does not exist"]),
    ("file,class,mask\na.png,nodule,nomask.png\n", ["line 2", "mask 'nomask.png' does not exist"]),
    ("file,class\na.png\n", ["line 2", "needs a file and a class"]),
    ("file,class\na.png,normal,extra\n", ["line 2", "3 values for 2 columns"]),
    ("file,label\na.png,normal\n", ["line 1", "no 'class' column"]),
    ("file,class,comment\na.png,normal,x\n", ["line 1", "unknown column(s) comment"]),
    ("file,class\na.png,normal\nb.png,nodule\na.png,effusion\n", ["line 4", "already labelled on line 2"]),
    ("file,class\n", ["no cases"]),
    ("", ["empty"]),
])
def test_bad_files_name_the_csv_the_line_and_the_reason(tmp_path, body, words):
    csv = write_set(tmp_path / "set", body)
    with pytest.raises(LabelsError) as caught:
        read_labels(csv, CLASSES)
    assert caught.value.path == csv
    assert caught.value.message.startswith("labels.csv: ")
    for word in words:
        assert word in caught.value.message


def test_missing_csv_and_unreadable_mask(tmp_path):
    with pytest.raises(LabelsError, match="could not read the labels file"):
        read_labels(tmp_path / "nothing.csv", CLASSES)
    csv = write_set(tmp_path / "set", "file,class,mask\na.png,nodule,broken.png\n")
    (tmp_path / "set" / "broken.png").write_bytes(b"not a png")
    case = read_labels(csv, CLASSES).cases[0]
    with pytest.raises(LabelsError, match="could not be read as an image"):
        case.load_mask((40, 50))


def test_the_shipped_teaching_set_reads_with_masks_for_every_lesion():
    labelled = read_labels(TEACHING, CLASSES)
    assert 12 <= len(labelled.cases) <= 15
    assert {labelled.class_of(c) for c in labelled.cases} == set(CLASSES)
    for case in labelled.cases:
        assert (case.mask is not None) == (case.label != 0)
        assert CLASSES[case.label] not in case.path.name  # file names do not give the answer away
    total = sum(p.stat().st_size for p in TEACHING.parent.rglob("*") if p.is_file())
    assert total < 2_000_000
