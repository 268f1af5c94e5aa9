"""Where the shipped resources are: the demo model, the demo studies and the teaching set.

A source checkout and the packaged app lay them out the same way (resources/ beside engine/),
so one root serves both."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
DEMO_MODEL = RESOURCES / "models" / "demo"
DEMO_STUDIES = RESOURCES / "studies"
TEACHING_SET = RESOURCES / "teaching"
TEACHING_LABELS = TEACHING_SET / "labels.csv"
