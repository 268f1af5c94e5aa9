"""The service's fixtures: helpers in service_process.py."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.engine.service.service_process import Service, running_service


@pytest.fixture(scope="module")
def demo_service(tmp_path_factory) -> Iterator[Service]:
    """The service as most tests meet it: demo model, INT8, room for a burst."""
    log = tmp_path_factory.mktemp("service") / "service.log"
    with running_service(log, "--workers", "2", "--queue", "16", "--max-upload-mb", "4") as service:
        yield service
