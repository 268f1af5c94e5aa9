"""Real DICOM peers for the network tests: an Orthanc PACS started and stopped by the test.

Orthanc (Debian package ``orthanc``, installed by ``make``) runs in the foreground with a
configuration written here: loopback only, its own storage folder, ephemeral DICOM and HTTP ports,
and only the AE titles the test names as known modalities (everyone else is refused, as a real
PACS refuses an unknown node). Its REST API is how a test looks inside it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Orthanc:
    aet: str
    port: int
    http_port: int
    storage: Path

    def rest(self, path: str, data: bytes | None = None):
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def instances(self) -> list[dict]:
        """Every instance Orthanc holds, with its main DICOM tags."""
        return [self.rest(f"/instances/{i}") for i in self.rest("/instances")]

    def instance_tags(self, orthanc_id: str) -> dict:
        return self.rest(f"/instances/{orthanc_id}/simplified-tags")

    def upload(self, path: Path) -> dict:
        return self.rest("/instances", Path(path).read_bytes())


def require_orthanc() -> str:
    found = shutil.which("Orthanc") or (Path("/usr/sbin/Orthanc").is_file() and "/usr/sbin/Orthanc")
    if not found:
        pytest.fail("Orthanc is not installed: run 'make system-deps' as root (Debian package orthanc)")
    return str(found)


@contextmanager
def running_orthanc(folder: Path, modalities: dict[str, tuple[str, int]], aet: str = "ORTHANC"):
    """Orthanc on loopback knowing ``modalities`` ({AE title: (host, port)}), stopped on exit."""
    binary = require_orthanc()
    folder.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "LanternTestPACS", "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"), "DicomAet": aet, "DicomPort": port, "HttpPort": http_port,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
        "Plugins": [], "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False,
        "DicomModalities": {
            name.lower(): {"AET": name, "Host": host, "Port": p, "AllowEcho": True, "AllowFind": True,
                           "AllowMove": True, "AllowGet": True, "AllowStore": True}
            for name, (host, p) in modalities.items()},
        "StableAge": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(aet, port, http_port, folder / "storage")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.rest("/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start: " + (folder / "orthanc.log").read_text()[-2000:])
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
