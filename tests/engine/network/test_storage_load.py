"""Under load: four storescu processes at once, about 400 images between them, with non-images
mixed in and malformed data sets sent alongside: every good instance is stored exactly once,
every bad one is refused and listed, and the listener still answers afterwards."""

from __future__ import annotations

import subprocess
import threading

import pydicom
import pytest

from engine.network.storage_scp import CANNOT_UNDERSTAND, NOT_AN_IMAGE, RECENT_EVENTS, StorageSCP
from tests.engine.network.storage_peers import (CALLED, CALLING, echoscu, fresh_copies, image_without_pixels,
                                                inbox_files, malformed, needs_dcmtk, send_raw, structured_report)

pytestmark = [needs_dcmtk, pytest.mark.slow]

SENDERS = 4
GOOD = 400


def test_four_senders_at_once(tmp_path, monkeypatch):
    good = fresh_copies(tmp_path / "good", GOOD)
    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    non_images = [maker(bad_folder, f"{maker.__name__}{i}.dcm") for i in range(SENDERS)
                  for maker in (structured_report, image_without_pixels)]
    broken = [malformed(bad_folder, f"malformed{i}.dcm") for i in range(SENDERS)]
    files = list(good.values())
    batches = [files[i::SENDERS] + non_images[2 * i: 2 * i + 2] for i in range(SENDERS)]

    stored = []
    scp = StorageSCP(tmp_path / "inbox", port=0, allowed_ae=[CALLING], min_free_bytes=0,
                     on_stored=lambda path, event: stored.append(path)).start()
    try:
        senders = [subprocess.Popen(["storescu", "-nh", "-aet", CALLING, "-aec", CALLED, "127.0.0.1", str(scp.port),
                                     *map(str, batch)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for batch in batches]
        statuses = []
        raw_sender = threading.Thread(target=lambda: statuses.extend(send_raw(scp.port, path, monkeypatch)
                                                                     for path, _ in broken))
        raw_sender.start()
        for sender in senders:
            _, errors = sender.communicate(timeout=120)
            assert sender.returncode == 0, errors[-2000:]
        raw_sender.join(timeout=120)
        assert statuses == [CANNOT_UNDERSTAND] * SENDERS

        written = inbox_files(tmp_path / "inbox")
        assert len(written) == GOOD and sorted(stored) == written  # each once, nothing else
        assert {p.stem for p in written} == set(good)
        for path in written[::50]:
            assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == path.stem

        events = scp.recent_events()
        assert len(events) < RECENT_EVENTS  # (all of them still in the list)
        refused = {e.sop_instance_uid: e.status for e in events if e.is_refusal}
        non_image_uids = {str(pydicom.dcmread(p).SOPInstanceUID) for p in non_images}
        assert refused == {**{uid: NOT_AN_IMAGE for uid in non_image_uids},
                           **{uid: CANNOT_UNDERSTAND for _, uid in broken}}
        assert sum(e.kind == "stored" for e in events) == GOOD

        assert echoscu(scp.port).returncode == 0
    finally:
        scp.stop()
