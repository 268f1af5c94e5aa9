"""A real ``lantern-engine serve`` in a subprocess on a free loopback port, and helpers to talk
to it with httpx: what another program on the machine would do."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from engine.resources import DEMO_STUDIES, ROOT  # noqa: E402

START_TIMEOUT_S = 90  # the machine is shared: a cold start can take a while
LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+) ")
DEMO_FILES = ("demo_nodule.dcm", "demo_effusion.dcm", "demo_normal.dcm", "demo_nodule.png")


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    log: Path  # the server's standard error

    def client(self, **options) -> "httpx.Client":
        return httpx.Client(base_url=self.url, timeout=120, **options)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli.main", "serve", "--port", "0", "--engine", "onnx-int8", *args]


@contextmanager
def running_service(log: Path, *args: str, env: dict | None = None) -> Iterator[Service]:
    """Start the service (its standard error into ``log``), wait until /healthz answers (with
    the token of ``--token-file``, if given), stop it afterwards (SIGTERM: a graceful shutdown)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as err:
        process = subprocess.Popen(serve_command(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                   env={**os.environ, **(env or {})})
    try:
        port = _announced_port(process, log)
        service = Service(f"http://127.0.0.1:{port}", process, log)
        _wait_until_up(service, args)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _announced_port(process: subprocess.Popen, log: Path) -> int:
    deadline, line = time.monotonic() + START_TIMEOUT_S, b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    found = LISTENING.search(line.decode())
    if not found:
        raise AssertionError(f"the service did not start: {line!r}\n{log.read_text(errors='replace')}")
    return int(found.group(1))


def _wait_until_up(service: Service, args: tuple[str, ...]) -> None:
    headers = {}
    if "--token-file" in args:
        token = Path(args[args.index("--token-file") + 1]).read_text().strip()
        headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{service.url}/healthz", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"the service did not answer /healthz\n{service.log_text()}")


def upload(name: str, data: bytes | None = None) -> tuple[str, bytes, str]:
    """A multipart file tuple for httpx: a demo file (or ``data`` under that name)."""
    return (name, (DEMO_STUDIES / name).read_bytes() if data is None else data, "application/octet-stream")
