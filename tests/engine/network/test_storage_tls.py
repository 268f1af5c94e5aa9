"""The listener over TLS, with a self-signed certificate made by the test (openssl), against
storescu +tls and a pynetdicom sender with an SSL context."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time

import pydicom
import pytest

from engine.errors import LanternError
from engine.network.nodes import TlsSettings
from engine.network.storage_scp import StorageSCP
from tests.engine.network.storage_peers import CALLED, CALLING, demo_files, inbox_files, needs_dcmtk, storescu

pytestmark = [needs_dcmtk, pytest.mark.skipif(not shutil.which("openssl"), reason="the openssl command is missing")]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, which is also the CA both sides trust."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture
def tls_listener(tmp_path, certificate):
    cert, key = certificate
    scp = StorageSCP(tmp_path / "inbox", port=0, allowed_ae=[CALLING], min_free_bytes=0,
                     tls=TlsSettings(cert, key, ca=cert)).start()
    yield scp
    scp.stop()


def storescu_tls(port, files, certificate):
    cert, key = certificate
    return storescu(port, files, extra=["+tls", str(key), str(cert), "+cf", str(cert)], timeout=30)


def test_storescu_over_tls_with_a_client_certificate(tls_listener, tmp_path, certificate):
    sent = storescu_tls(tls_listener.port, demo_files()[:2], certificate)
    assert sent.returncode == 0, sent.stderr
    assert len(inbox_files(tmp_path / "inbox")) == 2


def test_plain_tcp_and_tls_without_a_client_certificate_are_turned_away(tls_listener, tmp_path):
    assert storescu(tls_listener.port, demo_files()[:1], timeout=30).returncode != 0
    anonymous = storescu(tls_listener.port, demo_files()[:1], extra=["+tla", "-ic"], timeout=30)
    assert anonymous.returncode != 0
    assert inbox_files(tmp_path / "inbox") == []


def test_a_pynetdicom_sender_with_an_ssl_context(tls_listener, tmp_path, certificate):
    from pynetdicom import AE

    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    context.load_cert_chain(cert, key)
    ds = pydicom.dcmread(demo_files()[0])
    ae = AE(CALLING)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", tls_listener.port, ae_title=CALLED, tls_args=(context, "127.0.0.1"))
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    [stored] = inbox_files(tmp_path / "inbox")
    assert stored.name == f"{ds.SOPInstanceUID}.dcm"


def test_a_silent_connection_does_not_hold_up_other_senders(tls_listener, tmp_path, certificate):
    # pynetdicom wraps accepted sockets on its one accepting thread; the listener leaves the
    # handshake to each association's thread, so a peer that connects and says nothing is harmless.
    with socket.create_connection(("127.0.0.1", tls_listener.port)):
        time.sleep(0.2)
        sent = storescu_tls(tls_listener.port, demo_files()[:1], certificate)
    assert sent.returncode == 0, sent.stderr


def test_unusable_tls_files_are_reported_before_listening(tmp_path, certificate):
    cert, _key = certificate
    with pytest.raises(LanternError, match="cannot be used together"):
        StorageSCP(tmp_path / "inbox", port=0, allowed_ae=[CALLING], tls=TlsSettings(cert, cert))
