"""Lantern on the hospital network, driven through the real widgets (pytest-qt, offscreen) with
real peers: dcmtk's storescu sends to the viewer's listener, and an Orthanc started on loopback
is searched, retrieved from (C-MOVE into the listener, C-GET) and sent to."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from engine.errors import LanternError
from engine.network.nodes import check_ae_title
from engine.resources import DEMO_STUDIES

pytest.importorskip("PySide6")
pytest.importorskip("pynetdicom")

from PySide6.QtCore import Qt  # noqa: E402

from tests.conftest import new_dicom  # noqa: E402
from tests.dicom_peers import free_port, running_orthanc  # noqa: E402
from tests.viewer.test_worklist import TIMEOUT, window  # noqa: E402,F401 (the worklist's window fixture)
from viewer.main_window import MainWindow  # noqa: E402
from viewer.network_config import (ListenerConfig, NetworkConfig, RemoteNode, RETRIEVE_GET, load,  # noqa: E402
                                   save)
from viewer.settings import Settings  # noqa: E402

DEMO_FILES = sorted(DEMO_STUDIES.glob("*.dcm"))  # four studies, one of them three frames: six rows
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


def configure(window, inbox: Path, nodes=(), pacs="", destination="", retrieve="move", **listener) -> NetworkConfig:
    listener = {"port": 0, "allowed_hosts": ("127.0.0.1",), **listener}
    config = NetworkConfig(ListenerConfig(inbox=str(inbox), min_free_mb=0, **listener), tuple(nodes), pacs,
                           destination, retrieve)
    save(window.settings, config)
    return config


def storescu(calling: str, port: int, files) -> subprocess.CompletedProcess:
    if shutil.which("storescu") is None:
        pytest.fail("dcmtk is not installed: run 'make system-deps' as root")
    return subprocess.run(["storescu", "-aet", calling, "-aec", "LANTERN", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def reason(title: str) -> str:
    with pytest.raises(LanternError) as caught:
        check_ae_title(title)
    return caught.value.reason


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def patients(window) -> set[str]:
    return {row.patient_id for row in window.worklist.model.rows}


# -- the settings page ---------------------------------------------------------------------------

def test_settings_round_trip_refuse_bad_values_and_report_a_port_in_use(qtbot, tmp_path):
    win = MainWindow(Settings(tmp_path / "settings.ini"))
    qtbot.addWidget(win)
    config = NetworkConfig(ListenerConfig("LANTERN WS", 11112, "127.0.0.1", ("ORTHANC", "CR ROOM 2"),
                                          ("10.1.2.0/24",), False, str(tmp_path / "in"), 700, True),
                           (RemoteNode("PACS", "ORTHANC", "10.1.2.3", 4242), RemoteNode("Archive", "ARC", "10.9.9.9", 104)),
                           "PACS", "Archive", RETRIEVE_GET)
    save(win.settings, config)
    assert load(Settings(tmp_path / "settings.ini")) == config  # through the INI file itself

    dialog = win.network.open_nodes()
    long_title = "A_VERY_LONG_AE_TITLE"
    dialog.fields["ae_title"].clear()
    qtbot.keyClicks(dialog.fields["ae_title"], long_title)
    dialog.fields["port"].setText("70000")
    click(qtbot, dialog.ok_button)
    assert dialog.isVisible(), "a bad value keeps the page open"
    assert dialog.errors["ae_title"].text() == reason(long_title)
    assert dialog.errors["port"].text() == "the port 70000 is outside 0-65535"
    assert not dialog.errors["bind"].isVisible()
    assert load(win.settings) == config, "nothing saved"
    # a remote node with a bad AE title is refused beside its field too
    click(qtbot, dialog.nodes.remove_button)  # remove "PACS"; "Archive" is selected next
    dialog.nodes.fields["ae_title"].setText("BAD\\TITLE")
    dialog.fields["ae_title"].setText("LANTERN")
    dialog.fields["port"].setText(str(free_port()))
    click(qtbot, dialog.ok_button)
    assert dialog.isVisible() and dialog.nodes.errors["ae_title"].text() == reason("BAD\\TITLE")
    dialog.nodes.fields["ae_title"].setText("ARCHIVE")
    click(qtbot, dialog.ok_button)
    assert not dialog.isVisible()
    saved = load(win.settings)
    assert saved.listener.ae_title == "LANTERN" and [n.ae_title for n in saved.nodes] == ["ARCHIVE"]
    assert (saved.pacs, saved.destination) == ("", "Archive")  # the PACS mark went with its node

    with socket.socket() as taken:  # someone else holds the port: said in plain words, no crash
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        configure(win, tmp_path / "inbox", allowed_ae=("MODALITY",), port=taken.getsockname()[1])
        win.actions_["listener"].trigger()
        text = win.network.status.text()
    assert text.startswith("DICOM listener failed: cannot listen on 127.0.0.1:") and "in use" in text
    click(qtbot, win.network.status.button)  # the status opens the settings page
    assert win.network.nodes_dialog.isVisible()
    win.network.nodes_dialog.reject()


# -- the listener --------------------------------------------------------------------------------

def test_images_sent_to_the_listener_fill_the_worklist_live_and_strangers_are_refused(qtbot, window, tmp_path):
    configure(window, tmp_path / "inbox", allowed_ae=("MODALITY",))
    window.open_paths([DEMO_STUDIES / "demo_normal.dcm"])  # the reader is reading something
    qtbot.waitUntil(lambda: window.session.analysis is not None, timeout=TIMEOUT)
    assert window.network.status.text() == "DICOM listener off"
    window.actions_["listener"].trigger()
    listener = window.network.listener
    assert listener.running and window.actions_["listener"].text() == "Stop the DICOM listener"
    port = listener.port
    assert window.network.status.text() == f"Listening as LANTERN on 127.0.0.1:{port} — 0 received, 0 refused"

    sent = storescu("MODALITY", port, DEMO_FILES)
    assert sent.returncode == 0, sent.stderr
    qtbot.waitUntil(lambda: len(window.worklist.model.rows) == 6 and not window.worklist.running, timeout=TIMEOUT)
    assert patients(window) == {"LANTERN-DEMO-1", "LANTERN-DEMO-2", "LANTERN-DEMO-3", "LANTERN-DEMO-4"}
    assert window.network.status.text().endswith("— 4 received, 0 refused")
    assert window.tabs.currentIndex() == 0, "arrivals never switch the reader's tab"
    assert window.session.image.source.path.name == "demo_normal.dcm", "nor open an image"

    # The reader picks a row and goes back to the worklist; a later arrival keeps both.
    panel = window.worklist
    window.tabs.setCurrentWidget(panel)
    rect = panel.table.visualRect(panel.proxy.index(1, 2))
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    picked = panel.visible_rows()[1]
    qtbot.waitUntil(lambda: window.session.image.source.path == picked.path, timeout=TIMEOUT)
    window.tabs.setCurrentWidget(panel)
    late = tmp_path / "late.dcm"
    ct = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm")
    ct.save_as(late)
    assert storescu("MODALITY", port, [late]).returncode == 0
    qtbot.waitUntil(lambda: len(panel.model.rows) == 7 and not panel.running, timeout=TIMEOUT)
    assert window.tabs.currentWidget() is panel
    current = panel.table.currentIndex()
    assert panel.visible_rows()[current.row()].path == picked.path, "the reader's row is still the chosen one"
    assert window.session.image.source.path == picked.path

    # A stranger is refused at association, a non-image instance on its own; both are listed.
    assert storescu("STRANGER", port, DEMO_FILES[:1]).returncode != 0
    report = new_dicom("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR: no pixels
    report.PatientID, report.StudyInstanceUID, report.Modality = "X", pydicom.uid.generate_uid(), "SR"
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    storescu("MODALITY", port, [tmp_path / "report.dcm"])
    qtbot.waitUntil(lambda: window.network.status.text().endswith("5 received, 2 refused"), timeout=TIMEOUT)
    assert window.network.status.refused_button.isVisible()
    click(qtbot, window.network.status.refused_button)
    rows = window.network.refusals_dialog.rows()
    assert rows[0][1:4] == ("MODALITY", "127.0.0.1", str(report.SOPInstanceUID)) and "0xA900" in rows[0][4]
    assert rows[1][1:4] == ("STRANGER", "127.0.0.1", "(whole association)") and "allow-list" in rows[1][4]
    window.close()
    assert not listener.running


# -- a real PACS ---------------------------------------------------------------------------------

def test_query_retrieve_and_send_to_pacs_with_a_real_orthanc(qtbot, window, tmp_path):
    inbox = tmp_path / "inbox"
    configure(window, inbox, allowed_ae=("ORTHANC",))
    window.actions_["listener"].trigger()
    listener = window.network.listener
    with running_orthanc(tmp_path / "orthanc", {"LANTERN": ("127.0.0.1", listener.port)}) as pacs:
        from engine.network.send import send_files

        assert len(send_files(Peer(pacs.aet, "127.0.0.1", pacs.port), "LANTERN", DEMO_FILES).sent) == 4
        node = RemoteNode("PACS", pacs.aet, "127.0.0.1", pacs.port)
        nowhere = RemoteNode("Nowhere", "NOBODY", "127.0.0.1", free_port())
        configure(window, inbox, (node, nowhere), "PACS", "PACS", allowed_ae=("ORTHANC",))

        nodes = window.network.open_nodes()  # Echo, off the GUI thread
        click(qtbot, nodes.nodes.echo_button)
        qtbot.waitUntil(lambda: "answered" in nodes.nodes.echo_result.text(), timeout=TIMEOUT)
        nodes.nodes.list.setCurrentRow(1)
        click(qtbot, nodes.nodes.echo_button)
        qtbot.waitUntil(lambda: nodes.nodes.echo_result.text().startswith(
            "✗ no association with the DICOM node NOBODY"), timeout=TIMEOUT)
        nodes.reject()

        dialog = window.network.open_query()
        qtbot.keyClicks(dialog.patient_id, "LANTERN-DEMO-3")
        click(qtbot, dialog.search_button)
        qtbot.waitUntil(lambda: dialog.table.rowCount() == 1, timeout=TIMEOUT)
        assert dialog.table.item(0, 1).text() == "LANTERN-DEMO-3" and dialog.table.item(0, 2).text() == "2024-03-15"
        click(qtbot, dialog.retrieve_button)  # C-MOVE into the running listener
        qtbot.waitUntil(lambda: dialog.last_result is not None, timeout=TIMEOUT)
        assert dialog.last_result.completed == 1 and "Retrieved: 1 received" in dialog.message.text()
        qtbot.waitUntil(lambda: patients(window) == {"LANTERN-DEMO-3"} and not window.worklist.running,
                        timeout=TIMEOUT)
        assert window.network.status.text().endswith("1 received, 0 refused")

        listener.stop()  # C-MOVE needs the listener: said in plain words
        click(qtbot, dialog.retrieve_button)
        assert "listener is off" in dialog.message.text() and not dialog.progress.isVisible()
        configure(window, inbox, (node,), "PACS", "PACS", retrieve=RETRIEVE_GET, allowed_ae=("ORTHANC",))
        dialog.patient_id.clear()
        qtbot.keyClicks(dialog.patient_id, "LANTERN-DEMO-2")
        click(qtbot, dialog.search_button)
        qtbot.waitUntil(lambda: dialog.table.rowCount() == 1 and dialog.matches[0].patient_id == "LANTERN-DEMO-2",
                        timeout=TIMEOUT)
        dialog.last_result = None
        click(qtbot, dialog.retrieve_button)  # C-GET into the inbox, no listener needed
        qtbot.waitUntil(lambda: dialog.last_result is not None, timeout=TIMEOUT)
        qtbot.waitUntil(lambda: patients(window) == {"LANTERN-DEMO-2", "LANTERN-DEMO-3"}
                        and not window.worklist.running, timeout=TIMEOUT)
        assert sorted(p.name for p in inbox.rglob("*.dcm")) == sorted(
            f"{pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID}.dcm" for f in DEMO_FILES
            if pydicom.dcmread(f, stop_before_pixels=True).PatientID in ("LANTERN-DEMO-2", "LANTERN-DEMO-3"))

        click(qtbot, dialog.retrieve_button)  # Cancel: the job stops and says so
        click(qtbot, dialog.cancel_button)
        qtbot.waitUntil(lambda: "cancelled" in dialog.message.text(), timeout=TIMEOUT)
        assert not dialog.cancel_button.isVisible() and dialog.retrieve_button.isEnabled()

        dialog.close()
        configure(window, inbox, (nowhere,), "Nowhere", "PACS", allowed_ae=("ORTHANC",))
        dialog = window.network.open_query()  # the same dialog, shown again, still searches
        click(qtbot, dialog.search_button)  # an unreachable node, in plain words
        qtbot.waitUntil(lambda: dialog.message.text().startswith(
            "Search failed: no association with the DICOM node NOBODY at 127.0.0.1"), timeout=TIMEOUT)
        dialog.close()

        configure(window, inbox, (node,), "PACS", "PACS", allowed_ae=("ORTHANC",))
        window.open_paths([DEMO_STUDIES / "demo_nodule.dcm"])
        qtbot.waitUntil(lambda: window.session.analysis is not None, timeout=TIMEOUT)
        before = {i["ID"] for i in pacs.instances()}
        window.actions_["send_to_pacs"].trigger()
        qtbot.waitUntil(lambda: window.network.sender.last_result is not None, timeout=TIMEOUT)
        result = window.network.sender.last_result
        classes = len(window.session.analysis.classes)
        assert len(result.sent) == 2 + classes and not result.failed, result  # SC, a map per class, the SR
        assert window.status_text.text() == f"Send to PACS: {2 + classes} sent to PACS."
        new = [i for i in pacs.instances() if i["ID"] not in before]
        source = pydicom.dcmread(DEMO_STUDIES / "demo_nodule.dcm", stop_before_pixels=True)
        assert len(new) == 2 + classes
        tags = [pacs.instance_tags(i["ID"]) for i in new]
        assert {t["StudyInstanceUID"] for t in tags} == {source.StudyInstanceUID}
        assert SC_STORAGE in {t["SOPClassUID"] for t in tags}
