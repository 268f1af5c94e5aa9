"""Labels -> images -> a split by patient: what ``lantern-engine train`` learns from.

The labels file is the one ``evaluate`` reads (engine/workflows/labels.py), with an optional
``group`` column. Every image goes through ``engine.images.load_image`` and
``engine.preprocess.prepare_input`` exactly as at inference, once: the prepared tensors are kept in
memory (float32, N x C x H x W) rather than decoded again every epoch; augmentations
(train_augment) act on them.

Split: by group, so that no patient's images are in two of train, validation and test (images of
one patient are more alike than images of two, and a test split that shares patients with training
measures memory, not generalisation). A case's group is its ``group`` column, else its DICOM
Patient ID, else the file alone. Groups are dealt to validation and test in a seeded order until
each class has its share there (at least one image), the rest train. The split is written as
``split.csv`` with pseudonymous group names (G1, G2, ...): the bundle may travel, patient IDs must not.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.bundle import InputSpec
from engine.errors import LanternError
from engine.images import load_image
from engine.preprocess import prepare_input
from engine.workflows.labels import LabelledCase, LabelledSet, LabelsError, read_labels

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST = range(3)
MIN_IMAGES_PER_CLASS = len(SPLITS)  # one in each split
GROUP_COLUMN, PATIENT_ID, OWN_FILE = "group column", "DICOM Patient ID", "own file"


def _lines(cases) -> str:
    lines = [str(c.line) for c in cases]
    return ", ".join(lines[:12]) + (f" and {len(lines) - 12} more" if len(lines) > 12 else "")


def read_training_labels(csv_path, classes: tuple[str, ...] | None) -> LabelledSet:
    """The labels file, refused with its lines when a class has too few images to split
    (unknown classes and missing files are refused by the reader itself, line by line)."""
    labelled = read_labels(csv_path, classes)
    few = [(name, [c for c in labelled.cases if c.label == k]) for k, name in enumerate(labelled.classes)]
    few = [(name, cases) for name, cases in few if len(cases) < MIN_IMAGES_PER_CLASS]
    if few:
        raise LabelsError("; ".join(f"class '{name}' has {len(cases)} image(s)" + (f" (line {_lines(cases)})" if cases
                                    else "") for name, cases in few)
                          + f": too few to split into training, validation and test (each class needs at least "
                            f"{MIN_IMAGES_PER_CLASS}, of as many patients)", labelled.csv)
    return labelled


@dataclass(frozen=True, eq=False)
class TrainingData:
    labelled: LabelledSet  # every case of the labels file
    cases: tuple[LabelledCase, ...]  # the cases whose image loaded, in labels-file order
    inputs: np.ndarray  # (N, C, H, W) float32: prepare_input's tensors
    labels: np.ndarray  # (N,) int64
    groups: tuple[str, ...]  # pseudonym of each case's group (G1, G2, ... by first appearance)
    grouped_by: tuple[str, ...]  # GROUP_COLUMN, PATIENT_ID or OWN_FILE
    split: np.ndarray  # (N,) TRAIN, VALIDATION or TEST
    refused: tuple[tuple[LabelledCase, str], ...]  # cases whose image the loader refused, and why

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labelled.classes

    def indices(self, part: int) -> np.ndarray:
        return np.flatnonzero(self.split == part)

    def subset(self, part: int) -> LabelledSet:
        """One split as a labelled set, for the evaluation code (engine/workflows/evaluation_run)."""
        return LabelledSet(self.labelled.csv, self.classes, tuple(self.cases[i] for i in self.indices(part)))

    def fingerprint(self) -> str:
        """sha256 of the prepared inputs, labels and split: --resume continues only on the same data."""
        digest = hashlib.sha256()
        for array in (self.inputs, self.labels, self.split):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict:
        """The split as the model card records it."""
        counts = {SPLITS[s]: {name: int(np.sum((self.split == s) & (self.labels == k)))
                              for k, name in enumerate(self.classes)} for s in range(len(SPLITS))}
        groups = {SPLITS[s]: len({g for g, p in zip(self.groups, self.split) if p == s}) for s in range(len(SPLITS))}
        return {"file": "split.csv", "images": counts, "groups": groups,
                "grouped_by": {how: self.grouped_by.count(how) for how in (GROUP_COLUMN, PATIENT_ID, OWN_FILE)},
                "rule": "by group (the 'group' column, else the DICOM Patient ID, else the file alone): no group "
                        "has images in two splits; groups dealt to validation and test in a seeded order until "
                        "each class has its share there"}

    def split_csv(self) -> bytes:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["line", "file", "class", "group", "grouped_by", "split"])
        folder = self.labelled.csv.parent.resolve()
        rows = [(c.line, c, self.classes[c.label], g, how, SPLITS[s])
                for c, g, how, s in zip(self.cases, self.groups, self.grouped_by, self.split)]
        rows += [(c.line, c, self.classes[c.label], "", "", f"refused: {reason}") for c, reason in self.refused]
        for line, case, name, group, how, part in sorted(rows, key=lambda r: r[0]):
            file = case.path.relative_to(folder) if case.path.is_relative_to(folder) else case.path.name
            writer.writerow([line, file, name, group, how, part])
        return buffer.getvalue().encode("utf-8")


def split_by_group(labels: np.ndarray, keys: list[str], n_classes: int, shares: tuple[float, float, float],
                   seed: int) -> np.ndarray:
    """TRAIN / VALIDATION / TEST for every case, whole groups at a time (see the module's text)."""
    labels = np.asarray(labels, dtype=np.int64)
    members: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        members.setdefault(key, []).append(i)
    names = sorted(members)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    totals = np.bincount(labels, minlength=n_classes)
    # Validation and test get their share of every class, and at least one image of it.
    target = {part: np.maximum(1, np.round(totals * shares[part])) for part in (TEST, VALIDATION)}
    have = {part: np.zeros(n_classes) for part in (TEST, VALIDATION)}
    split = np.full(len(labels), TRAIN, dtype=np.int64)
    for name in order:
        counts = np.bincount(labels[members[name]], minlength=n_classes)
        gains = {part: float(np.minimum(counts, np.maximum(target[part] - have[part], 0)).sum())
                 for part in (TEST, VALIDATION)}
        part = max(gains, key=gains.get)  # the first (TEST) on a tie
        # A group goes where most of its images are still wanted; a large one rather trains.
        if gains[part] > 0 and 2 * gains[part] >= counts.sum():
            split[members[name]] = part
            have[part] += counts
    return split


def _group_keys(cases: list[LabelledCase], patient_ids: list[str]) -> tuple[list[str], list[str]]:
    """Each case's group key (raw, kept in memory only) and where it came from."""
    keys, how = [], []
    for case, patient in zip(cases, patient_ids):
        if case.group:
            keys.append(f"id:{case.group}")  # one name space: a group column may name a DICOM's patient
            how.append(GROUP_COLUMN)
        elif patient:
            keys.append(f"id:{patient}")
            how.append(PATIENT_ID)
        else:
            keys.append(f"file:{case.path}")
            how.append(OWN_FILE)
    return keys, how


def load_training_data(labelled: LabelledSet, spec: InputSpec, shares: tuple[float, float, float], seed: int,
                       log: Callable[[str], None] = print) -> TrainingData:
    """Read and prepare every image (refused ones listed with the reason), then split by group."""
    n = len(labelled.cases)
    megabytes = n * spec.channels * spec.size[0] * spec.size[1] * 4 / 1e6
    log(f"reading {n} images ({megabytes:,.0f} MB prepared, kept in memory) ...")
    inputs = np.empty((n, spec.channels, *spec.size), dtype=np.float32)
    loaded, patients, refused = [], [], []
    for case in labelled.cases:
        try:
            image = load_image(case.path, with_tags=False)
            inputs[len(loaded)] = prepare_input(image, spec).tensor[0]
        except LanternError as exc:  # unreadable, not an image, too large...: listed, the rest still train
            refused.append((case, exc.reason))
            continue
        loaded.append(case)
        patients.append(image.metadata.patient_id.strip() if image.metadata.is_dicom else "")
        if len(loaded) % 500 == 0:
            log(f"  {len(loaded)} of {n} read")
    folder = labelled.csv.parent.resolve()
    for case, reason in refused:
        shown = case.path.relative_to(folder) if case.path.is_relative_to(folder) else case.path.name
        log(f"refused line {case.line} ({shown}): {reason}")
    labels = np.array([c.label for c in loaded], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(labelled.classes))
    if refused and counts.min() < MIN_IMAGES_PER_CLASS:
        short = ", ".join(f"'{name}' {int(counts[k])}" for k, name in enumerate(labelled.classes)
                          if counts[k] < MIN_IMAGES_PER_CLASS)
        raise LanternError(f"{len(refused)} image(s) could not be read (listed above), and too few remain to "
                           f"split: {short} (each class needs at least {MIN_IMAGES_PER_CLASS})", labelled.csv)
    keys, grouped_by = _group_keys(loaded, patients)
    split = split_by_group(labels, keys, len(labelled.classes), shares, seed)
    _check_every_class_in_every_split(labelled, loaded, labels, keys, split)
    pseudonyms: dict[str, str] = {}
    for key in keys:
        pseudonyms.setdefault(key, f"G{len(pseudonyms) + 1}")
    return TrainingData(labelled, tuple(loaded), inputs[: len(loaded)], labels,
                        tuple(pseudonyms[k] for k in keys), tuple(grouped_by), split, tuple(refused))


def _check_every_class_in_every_split(labelled, cases, labels, keys, split) -> None:
    problems = []
    for k, name in enumerate(labelled.classes):
        missing = [SPLITS[s] for s in range(len(SPLITS)) if not np.any((split == s) & (labels == k))]
        if missing:
            members = [c for c, y in zip(cases, labels) if y == k]
            groups = len({key for key, y in zip(keys, labels) if y == k})
            problems.append(f"class '{name}' has no {' and no '.join(missing)} image: its {len(members)} images "
                            f"(line {_lines(members)}) belong to {groups} patient(s)/group(s)")
    if problems:
        raise LabelsError("; ".join(problems) + f"; a patient's images stay in one split, so every class needs "
                          f"images of at least {MIN_IMAGES_PER_CLASS} patients", labelled.csv)
