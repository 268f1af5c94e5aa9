"""The listener against real peers: dcmtk's storescu and echoscu on loopback, no mocks."""

from __future__ import annotations

import logging
import shutil

import pydicom
import pytest

from engine.errors import LanternError
from engine.network.nodes import DicomNode
from engine.network.storage_scp import (CANNOT_UNDERSTAND, NOT_AN_IMAGE, OUT_OF_RESOURCES, SUCCESS, StorageSCP)
from tests.engine.network.storage_peers import (CALLING, demo_files, echoscu, image_without_pixels, inbox_files,
                                                malformed, needs_dcmtk, send_raw, storescu, structured_report)

pytestmark = needs_dcmtk


@pytest.fixture
def listen(tmp_path):
    """Start a listener on an ephemeral loopback port (stopped after the test)."""
    running = []

    def start(**options) -> StorageSCP:
        options = {"port": 0, "allowed_ae": [CALLING], "min_free_bytes": 0, **options}
        running.append(StorageSCP(tmp_path / "inbox", **options).start())
        return running[-1]

    yield start
    for scp in running:
        scp.stop()


def test_echo(listen):
    scp = listen()
    assert echoscu(scp.port).returncode == 0


def test_the_demo_studies_land_one_file_per_instance_named_by_its_uids(listen, tmp_path):
    stored = []
    scp = listen(on_stored=lambda path, event: stored.append((path, event)))
    sent = storescu(scp.port, demo_files())
    assert sent.returncode == 0, sent.stderr
    expected = {}
    for source in demo_files():
        ds = pydicom.dcmread(source)
        expected[tmp_path / "inbox" / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"] = ds
    assert inbox_files(tmp_path / "inbox") == sorted(expected)
    for path, source in expected.items():
        received = pydicom.dcmread(path)
        assert received.SOPInstanceUID == source.SOPInstanceUID
        assert received.file_meta.TransferSyntaxUID == source.file_meta.TransferSyntaxUID
        assert received.PixelData == source.PixelData
    assert sorted(path for path, _ in stored) == sorted(expected)
    assert {event.calling_ae for _, event in stored} == {CALLING}
    assert [e.kind for e in scp.recent_events()] == ["stored"] * len(expected)


def test_an_unknown_calling_ae_is_rejected_at_association(listen, tmp_path, caplog):
    scp = listen()
    with caplog.at_level(logging.WARNING, logger="lantern.network"):
        sent = storescu(scp.port, demo_files()[:1], calling="STRANGER")
    assert sent.returncode != 0
    assert b"Calling AE Title Not Recognized" in sent.stderr
    assert inbox_files(tmp_path / "inbox") == []
    assert echoscu(scp.port, calling="STRANGER").returncode != 0
    [first, second] = scp.recent_events()
    assert (first.kind, first.calling_ae, first.address) == ("rejected", "STRANGER", "127.0.0.1")
    assert "not on the allow-list" in first.reason and second.calling_ae == "STRANGER"
    assert any("STRANGER" in r.message and "127.0.0.1" in r.message for r in caplog.records)


def test_an_address_outside_the_allowed_hosts_is_rejected_at_association(listen, tmp_path):
    scp = listen(allowed_hosts=["10.1.2.0/24"])
    sent = storescu(scp.port, demo_files()[:1])
    assert sent.returncode != 0 and inbox_files(tmp_path / "inbox") == []
    [event] = scp.recent_events()
    assert event.kind == "rejected" and "address 127.0.0.1" in event.reason
    assert echoscu(listen(allowed_hosts=["127.0.0.0/8"]).port).returncode == 0


def test_no_allow_list_is_refused_unless_any_ae_is_allowed_on_purpose(listen, tmp_path):
    with pytest.raises(LanternError, match="allow"):
        StorageSCP(tmp_path / "inbox", port=0).start()
    scp = listen(allowed_ae=[], allow_any=True)
    assert echoscu(scp.port, calling="ANYONE").returncode == 0


def test_non_images_and_a_malformed_data_set_are_refused_and_listed(listen, tmp_path, caplog, monkeypatch):
    scp = listen()
    report, no_pixels = structured_report(tmp_path), image_without_pixels(tmp_path)
    broken, broken_uid = malformed(tmp_path)
    with caplog.at_level(logging.WARNING, logger="lantern.network"):
        storescu(scp.port, [report, no_pixels])
        assert send_raw(scp.port, broken, monkeypatch) == CANNOT_UNDERSTAND
    refused = {e.sop_instance_uid: e for e in scp.recent_events()}
    uids = {p: str(pydicom.dcmread(p).SOPInstanceUID) for p in (report, no_pixels)}
    assert refused[uids[report]].status == NOT_AN_IMAGE and "structured report" in refused[uids[report]].reason
    assert refused[uids[no_pixels]].status == NOT_AN_IMAGE
    assert refused[broken_uid].status == CANNOT_UNDERSTAND and "(0010,0010)" in refused[broken_uid].reason
    assert all(e.kind == "refused" and e.calling_ae == CALLING for e in refused.values())
    for uid in refused:
        assert any(uid in r.message and CALLING in r.message and "127.0.0.1" in r.message for r in caplog.records)
    assert inbox_files(tmp_path / "inbox") == []
    # Still serving:
    assert echoscu(scp.port).returncode == 0
    assert storescu(scp.port, demo_files()[:1]).returncode == 0 and len(inbox_files(tmp_path / "inbox")) == 1


def test_a_refused_instance_fails_a_halting_storescu(listen, tmp_path):
    scp = listen()
    assert storescu(scp.port, [structured_report(tmp_path)], halt=True).returncode != 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_uids_with_path_characters_never_leave_the_inbox(listen, tmp_path):
    source = pydicom.dcmread(demo_files()[0])
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = "../../etc/x"
    source.StudyInstanceUID = "../.."
    hostile = tmp_path / "sent" / "hostile.dcm"
    hostile.parent.mkdir()
    source.save_as(hostile)
    before = {p for p in tmp_path.parent.rglob("*")}
    scp = listen()
    assert storescu(scp.port, [hostile, hostile]).returncode == 0
    [stored] = inbox_files(tmp_path / "inbox")
    assert stored.parent.parent == tmp_path / "inbox"
    assert stored.parent.name.startswith("uid-") and stored.name.startswith("uid-") and ".." not in str(stored)
    new = {p for p in tmp_path.parent.rglob("*")} - before
    assert all(p == tmp_path / "inbox" or (tmp_path / "inbox") in p.parents for p in new)
    assert [e.kind for e in scp.recent_events()] == ["stored", "duplicate"]  # same broken UID, same name
    assert pydicom.dcmread(stored).SOPInstanceUID == "../../etc/x"  # the file itself is kept as sent


def test_below_the_free_space_floor_nothing_is_written(listen, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    floor = shutil.disk_usage(inbox).free + 2**30
    scp = listen(min_free_bytes=floor)
    storescu(scp.port, demo_files()[:2])
    assert inbox_files(inbox) == []
    events = scp.recent_events()
    assert [e.status for e in events] == [OUT_OF_RESOURCES] * 2
    assert "below the floor" in events[0].reason


def test_a_second_copy_of_an_instance_is_answered_success_and_not_written_again(listen, tmp_path):
    scp = listen()
    assert storescu(scp.port, demo_files()[:1]).returncode == 0
    [stored] = inbox_files(tmp_path / "inbox")
    first = stored.stat()
    assert storescu(scp.port, demo_files()[:1]).returncode == 0  # another association, same instance
    assert inbox_files(tmp_path / "inbox") == [stored]
    again = stored.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert [(e.kind, e.status) for e in scp.recent_events()] == [("stored", SUCCESS), ("duplicate", SUCCESS)]


def test_stop_closes_the_port(listen):
    scp = listen()
    port = scp.port
    scp.stop()
    assert echoscu(port).returncode != 0


def test_images_lantern_retrieves_itself_go_through_the_same_handler(tmp_path):
    # A C-GET from a real PACS (Orthanc on loopback): the images come back on the association
    # Lantern requested, so the sender is the PACS (the association's acceptor), and no port opens.
    from engine.network.query_retrieve import get_study
    from engine.network.send import send_files
    from tests.dicom_peers import running_orthanc

    source = pydicom.dcmread(demo_files()[0])
    with running_orthanc(tmp_path / "orthanc", {"LANTERNSCU": ("127.0.0.1", 1)}) as pacs:
        pacs_node = DicomNode(pacs.aet, "127.0.0.1", pacs.port)
        assert not send_files(pacs_node, "LANTERNSCU", demo_files()[:1]).failed
        stored = []
        receiver = StorageSCP(tmp_path / "inbox", ae_title="LANTERNSCU", port=0, min_free_bytes=0,
                              on_stored=lambda path, event: stored.append(event))
        result = get_study(pacs_node, "LANTERNSCU", source.StudyInstanceUID, receiver.retrieved_handler(pacs.aet))
    assert result.completed == 1 and result.failed == 0
    assert inbox_files(tmp_path / "inbox") == [tmp_path / "inbox" / source.StudyInstanceUID /
                                               f"{source.SOPInstanceUID}.dcm"]
    [event] = stored
    assert (event.calling_ae, event.address, event.kind) == (pacs.aet, "127.0.0.1", "stored")
