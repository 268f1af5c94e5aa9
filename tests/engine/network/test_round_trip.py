"""The hospital round trip with real peers: dcmtk's storescu sends a study to ``lantern-engine
listen``, Lantern analyses it and sends its Secondary Capture, Parametric Maps and structured report
to an Orthanc PACS, where a C-FIND finds them in the source's study."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pydicom
import pytest

from engine.network.association import associate
from engine.resources import DEMO_STUDIES, ROOT
from tests.dicom_peers import running_orthanc
from tests.engine.network.storage_peers import CALLING, needs_dcmtk, storescu
from tests.engine.network.test_listen_command import wait_for

pytestmark = [needs_dcmtk, pytest.mark.slow]


def series_in_study(pacs, calling: str, study_uid: str) -> dict[str, str]:
    """Series Instance UID -> Modality of every series of the study, by a series-level C-FIND."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = ""
    query.Modality = ""
    found = {}
    with associate(pacs, calling, [FIND]) as assoc:
        for status, match in assoc.send_c_find(query, FIND):
            if status and status.Status in (0xFF00, 0xFF01):
                found[str(match.SeriesInstanceUID)] = str(match.Modality)
    return found


def test_a_study_sent_to_lantern_comes_back_to_the_pacs_explained(tmp_path, demo_bundle):
    source = DEMO_STUDIES / "demo_nodule.dcm"
    study_uid = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
    log = tmp_path / "listen.log"
    with running_orthanc(tmp_path / "pacs", {"LANTERN": ("127.0.0.1", 1), CALLING: ("127.0.0.1", 1)}) as pacs:
        pacs_node = type("Node", (), {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.port})()
        with log.open("wb") as sink:
            listener = subprocess.Popen(
                [sys.executable, "-m", "engine.cli.main", "listen", "--port", "0", "--inbox", str(tmp_path / "inbox"),
                 "--out", str(tmp_path / "out"), "--allow", CALLING, "--model", str(demo_bundle),
                 "--engine", "onnx-int8", "--min-free-mb", "0", "--send-to", f"{pacs.aet}@127.0.0.1:{pacs.port}"],
                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        try:
            port = int(wait_for(lambda: re.search(r"Listening as LANTERN on 127\.0\.0\.1:(\d+)", log.read_text()),
                                60, "the listener to start").group(1))
            assert storescu(port, [source]).returncode == 0
            # The SC, one Parametric Map per class (3) and the SR: 5 objects.
            wait_for(lambda: len(pacs.instances()) >= 5, 120, "Lantern's objects to reach the PACS")
        finally:
            listener.send_signal(signal.SIGTERM)
            assert listener.wait(60) == 0, log.read_text()[-3000:]
        series = series_in_study(pacs_node, CALLING, study_uid)
        # Found by C-FIND in the source's study: the SC's series, a series per class map, the SR's.
        assert len(series) == 5 and list(series.values()).count("SR") == 1, series
        kinds = {}
        for instance in pacs.instances():
            tags = pacs.instance_tags(instance["ID"])
            assert tags["StudyInstanceUID"] == study_uid
            kinds[tags["SOPClassUID"]] = kinds.get(tags["SOPClassUID"], 0) + 1
        assert kinds == {"1.2.840.10008.5.1.4.1.1.7": 1,  # Secondary Capture
                         "1.2.840.10008.5.1.4.1.1.30": 3,  # Parametric Map, one per class
                         "1.2.840.10008.5.1.4.1.1.88.34": 1}  # Comprehensive 3D SR
        assert "5 result object(s) sent" in log.read_text()
