"""Lantern's own version, from the installed distribution's metadata (pyproject.toml is its one
source; the packaged app ships that metadata)."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version


@lru_cache(maxsize=1)
def lantern_version() -> str:
    try:
        return version("lantern")
    except PackageNotFoundError:  # a bare source tree that was never installed
        return "unknown"
