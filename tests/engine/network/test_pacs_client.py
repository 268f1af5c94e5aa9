"""Lantern as a DICOM client of a real PACS (Orthanc, started by the test on loopback):
C-STORE, C-FIND by each search field, C-GET into an inbox, and refusals in plain words."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from engine.errors import LanternError
from engine.network.query_retrieve import StudyQuery, find_studies, get_study
from engine.network.send import send_files
from engine.resources import DEMO_STUDIES
from tests.dicom_peers import running_orthanc

CALLING = "LANTERNSCU"


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), {CALLING: ("127.0.0.1", 1)}) as server:
        result = send_files(Peer(server.aet, "127.0.0.1", server.port), CALLING, sorted(DEMO_STUDIES.glob("*.dcm")))
        assert len(result.sent) == 4 and not result.failed, result
        yield server


def node(pacs) -> Peer:
    return Peer(pacs.aet, "127.0.0.1", pacs.port)


def test_sent_files_arrive_in_the_pacs_unchanged(pacs):
    stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in pacs.instances()}
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in DEMO_STUDIES.glob("*.dcm")}
    assert stored == sources


@pytest.mark.parametrize("query, expected", [
    (StudyQuery(), {"LANTERN-DEMO-1", "LANTERN-DEMO-2", "LANTERN-DEMO-3", "LANTERN-DEMO-4"}),
    (StudyQuery(patient_name="DEMO^NOD*"), {"LANTERN-DEMO-1"}),
    (StudyQuery(patient_id="LANTERN-DEMO-3"), {"LANTERN-DEMO-3"}),
    (StudyQuery(accession_number="DEMO0002"), {"LANTERN-DEMO-2"}),
    (StudyQuery(modality="DX", date_from="20240301", date_to="20240331"),
     {"LANTERN-DEMO-1", "LANTERN-DEMO-2", "LANTERN-DEMO-3", "LANTERN-DEMO-4"}),
    (StudyQuery(date_from="20250101", date_to="20251231"), set()),
    (StudyQuery(modality="CT"), set()),
])
def test_find_studies_by_each_field(pacs, query, expected):
    matches = find_studies(node(pacs), CALLING, query)
    assert {m.patient_id for m in matches} == expected
    for match in matches:
        assert match.study_uid and match.study_date == "20240315" and match.instances == 1


def test_get_brings_the_study_back_over_the_same_association(pacs, tmp_path):
    from pynetdicom.dsutils import encode  # noqa: F401 - pynetdicom is what the handler receives from

    study = find_studies(node(pacs), CALLING, StudyQuery(patient_id="LANTERN-DEMO-1"))[0]
    received = []

    def keep(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        target = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(target, enforce_file_format=True)
        received.append(target)
        return 0x0000

    steps = []
    result = get_study(node(pacs), CALLING, study.study_uid, keep, progress=steps.append)
    assert result.completed == 1 and result.failed == 0 and not result.cancelled
    assert len(received) == 1
    assert pydicom.dcmread(received[0]).StudyInstanceUID == study.study_uid


def test_an_unknown_calling_ae_is_refused_in_plain_words(pacs):
    with pytest.raises(LanternError, match="refused the association from 'STRANGER'.*known modality"):
        find_studies(node(pacs), "STRANGER", StudyQuery())


def test_a_closed_port_says_it_could_not_reach_the_node(pacs):
    from tests.dicom_peers import free_port

    with pytest.raises(LanternError, match="could not reach|no association"):
        find_studies(Peer("ORTHANC", "127.0.0.1", free_port()), CALLING, StudyQuery())


def test_bad_dates_are_refused_before_anything_is_sent():
    with pytest.raises(LanternError, match="YYYYMMDD"):
        StudyQuery(date_from="2024-03-01").identifier()


def test_send_lists_every_file_it_could_not_send(pacs, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    result = send_files(node(pacs), CALLING, [junk, DEMO_STUDIES / "demo_nodule.dcm"])
    assert result.sent == (DEMO_STUDIES / "demo_nodule.dcm",)
    assert [p for p, _ in result.failed] == [junk] and "not a DICOM file" in result.failed[0][1]


def test_cancel_stops_a_send(pacs):
    cancel = threading.Event()
    cancel.set()
    result = send_files(node(pacs), CALLING, sorted(DEMO_STUDIES.glob("*.dcm")), cancel=cancel)
    assert result.cancelled and not result.sent and len(result.failed) == 4


def test_query_and_send_commands(pacs, capsys, tmp_path):
    import json

    from engine.cli.main import main

    address = f"{pacs.aet}@127.0.0.1:{pacs.port}"
    assert main(["query", "--pacs", address, "--aet", CALLING, "--patient-id", "LANTERN-DEMO-2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [m["accession_number"] for m in printed] == ["DEMO0002"]
    junk = tmp_path / "folder" / "junk.dcm"
    junk.parent.mkdir()
    junk.write_bytes(b"DICM?")
    assert main(["send", "--to", address, "--aet", CALLING, str(junk.parent), str(DEMO_STUDIES / "demo_normal.dcm")]) == 1
    err = capsys.readouterr().err
    assert "1 sent, 1 not sent" in err and "junk.dcm" in err


@pytest.mark.parametrize("text", ["ORTHANC", "ORTHANC@host", "@127.0.0.1:4242", "ORTHANC@127.0.0.1:port",
                                  "A-VERY-LONG-AE-TITLE-INDEED@127.0.0.1:4242"])
def test_a_badly_written_node_is_refused_in_plain_words(text):
    from engine.cli.network_commands import parse_node

    with pytest.raises(LanternError, match="AE@HOST:PORT|AE title"):
        parse_node(text)


def test_move_sends_the_study_to_lanterns_listener(tmp_path):
    """C-MOVE: the PACS opens its own association to Lantern's listener (which it knows as a
    modality) and the study lands in the inbox under its Study Instance UID."""
    from engine.network.query_retrieve import move_study
    from engine.network.storage_scp import StorageSCP
    from tests.dicom_peers import free_port

    port = free_port()
    with StorageSCP(tmp_path / "inbox", ae_title="LANTERN", port=port, allowed_ae=["ORTHANC"]) as listener, \
            running_orthanc(tmp_path / "pacs", {CALLING: ("127.0.0.1", 1), "LANTERN": ("127.0.0.1", port)}) as pacs:
        send_files(node(pacs), CALLING, sorted(DEMO_STUDIES.glob("*.dcm")))
        study = find_studies(node(pacs), CALLING, StudyQuery(patient_id="LANTERN-DEMO-4"))[0]
        result = move_study(node(pacs), CALLING, study.study_uid, "LANTERN")
        assert (result.completed, result.failed, result.cancelled) == (1, 0, False)
        arrived = list((tmp_path / "inbox").rglob("*.dcm"))
        assert [p.parent.name for p in arrived] == [study.study_uid]
        assert [e.kind for e in listener.recent_events()] == ["stored"]
        with pytest.raises(LanternError, match="could not send the study"):
            move_study(node(pacs), CALLING, study.study_uid, "NOBODY")  # a destination the PACS does not know


def test_retrieve_command_gets_a_study_into_an_inbox(pacs, tmp_path, capsys):
    from engine.cli.main import main

    study = find_studies(node(pacs), CALLING, StudyQuery(patient_id="LANTERN-DEMO-3"))[0]
    address = f"{pacs.aet}@127.0.0.1:{pacs.port}"
    assert main(["retrieve", "--pacs", address, "--aet", CALLING, "--study", study.study_uid,
                 "--inbox", str(tmp_path / "inbox")]) == 0
    assert "1 received, 0 failed" in capsys.readouterr().err
    (only,) = (tmp_path / "inbox").rglob("*.dcm")
    assert pydicom.dcmread(only).PatientID == "LANTERN-DEMO-3"
