"""What a batch reads: a folder (or DICOMDIR, or one file), or a list of files (``--files-from``).

A list is how an archive is usually handed over on a cluster: an export from the PACS or a
query, one path per line, the files spread over folders no scan should walk. The files are
scanned one by one and their studies merged as a folder scan groups them (the same order, so a
list of a folder's files gives the folder's batch), and results are named below the files'
common folder, as a folder batch names them below the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Union

from engine.errors import LanternError
from engine.studies import ScanFailure, ScanResult, Study, scan_studies


@dataclass(frozen=True)
class FileList:
    """The files of a batch given one by one (absolute, or relative to the list's folder)."""

    files: tuple[Path, ...]
    origin: Path | None = None  # the list file, for messages

    @property
    def root(self) -> Path:
        """The deepest folder holding every file: result names are relative to it."""
        parents = [str(p.parent.resolve()) for p in self.files]
        return Path(os.path.commonpath(parents)) if parents else Path.cwd()


BatchSource = Union[str, Path, FileList]


def read_file_list(path: str | Path) -> FileList:
    """One path per line; blank lines and lines starting with ``#`` are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LanternError(f"the list of files could not be read ({exc})", path) from exc
    files = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            file = Path(line).expanduser()
            files.append(file if file.is_absolute() else path.parent / file)
    if not files:
        raise LanternError("the list of files names no file", path)
    return FileList(tuple(dict.fromkeys(files)), path)  # a file listed twice is analysed once


def as_source(source: BatchSource) -> Path | FileList:
    return source if isinstance(source, FileList) else Path(source)


def source_exists(source: Path | FileList) -> bool:
    return bool(source.files) if isinstance(source, FileList) else source.exists()


def source_root(source: Path | FileList) -> Path:
    """The folder results are named below and that the output folder must not be inside."""
    if isinstance(source, FileList):
        return source.root
    return source if source.is_dir() else source.parent


def scan_source(source: Path | FileList, leave_out: Callable[[Path], bool] | None = None) -> ScanResult:
    if not isinstance(source, FileList):
        return scan_studies(source, leave_out=leave_out)
    studies, skipped, failed = [], [], []
    for file in source.files:
        if not file.exists():  # perhaps not yet copied, or a share not mounted: worth trying again
            failed.append(ScanFailure(file, "does not exist (it is named in the list of files)", read_error=True))
            continue
        scan = scan_studies(file, leave_out=leave_out)
        studies += scan.studies
        skipped += scan.skipped
        failed += scan.failed
    return ScanResult(_merged(studies), tuple(skipped), tuple(failed))


def _merged(studies: list[Study]) -> tuple[Study, ...]:
    """Studies (one per file) merged by UID, series by UID; ordered by engine.studies' keys."""
    by_uid: dict[str, list[Study]] = {}
    for study in studies:
        by_uid.setdefault(study.study_uid, []).append(study)
    merged = []
    for parts in by_uid.values():
        series: dict[str, list] = {}
        for study in parts:
            for s in study.series:
                series.setdefault(s.series_uid, []).append(s)
        joined = [replace(group[0], images=tuple(sorted((i for s in group for i in s.images), key=_image_order)))
                  for group in series.values()]
        joined.sort(key=lambda s: (s.number is None, s.number or 0, s.description, s.series_uid))
        merged.append(replace(parts[0], series=tuple(joined)))
    return tuple(sorted(merged, key=lambda s: (s.study_date, s.description, s.study_uid)))


def _image_order(ref) -> tuple:
    return ref.instance_number is None, ref.instance_number or 0, str(ref.path)
