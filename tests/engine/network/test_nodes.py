"""DICOM node settings are checked before any socket opens, with plain-words errors."""

from __future__ import annotations

import dataclasses

import pytest

from engine.errors import LanternError
from engine.network.inbox import safe_uid_name
from engine.network.nodes import DicomNode, TlsSettings, check_address, check_ae_title, check_port, peer_address


@pytest.mark.parametrize("title", ["LANTERN", "A", "X" * 16, "CT_SCANNER-2", " PADDED  ", "lower case"])
def test_good_ae_titles_are_kept_without_padding(title):
    assert check_ae_title(title) == title.strip(" ")


@pytest.mark.parametrize("title, words", [
    ("", "empty"), ("    ", "only spaces"), ("X" * 17, "longer than 16"), ("BACK\\SLASH", "backslash"),
    ("TAB\tBED", "'\\t'"), ("NEW\nLINE", "'\\n'"), ("ÉCHO", "'É'"), ("NUL\0", "'\\x00'"),
])
def test_bad_ae_titles_are_refused_in_plain_words(title, words):
    with pytest.raises(LanternError, match="AE title") as raised:
        check_ae_title(title)
    assert words in raised.value.reason


def test_ports():
    assert check_port(104) == 104 and check_port(65535) == 65535
    assert check_port(0, listening=True) == 0
    for bad in (0, -1, 65536, "104", 104.0, True):
        with pytest.raises(LanternError, match="port"):
            check_port(bad)


def test_a_node_is_frozen_and_validated():
    node = DicomNode(" PACS ", "10.1.2.3", 104)
    assert node.ae_title == "PACS" and str(node) == "PACS@10.1.2.3:104"
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.port = 11112
    with pytest.raises(LanternError):
        DicomNode("PACS", "10.1.2.3", 0)  # only a listener may ask for an ephemeral port
    assert DicomNode("LANTERN", "127.0.0.1", 0, listening=True).port == 0
    with pytest.raises(LanternError, match="host"):
        DicomNode("PACS", "  ", 104)


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(LanternError, match="certificate file does not exist"):
        TlsSettings(tmp_path / "cert.pem", tmp_path / "key.pem")


def test_allowed_hosts_are_addresses_or_networks():
    assert peer_address("10.1.2.3") in check_address("10.1.2.0/24")
    assert peer_address("::ffff:10.1.2.3") in check_address("10.1.2.3")  # IPv4 seen through IPv6
    assert peer_address("not an address") is None
    with pytest.raises(LanternError, match="not host names"):
        check_address("pacs.hospital.example")


@pytest.mark.parametrize("uid, expected", [
    ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"),
    ("1.2.03.4", "1.2.03.4"),  # leading zeros break PS3.5 but are harmless in a name
    ("", None), (None, None),
])
def test_uid_names(uid, expected):
    assert safe_uid_name(uid) == expected


@pytest.mark.parametrize("uid", ["../../etc/x", "..", ".", "1.2/../3", "1.2.", ".1.2", "1..2", "C:\\x", "1" * 65,
                                 "1.2\0.3", "1.2 3"])
def test_malformed_uids_get_a_name_made_from_their_hash(uid):
    name = safe_uid_name(uid)
    assert name.startswith("uid-") and len(name) == 36 and name[4:].isalnum()
    assert safe_uid_name(uid) == name  # the same broken UID always lands in the same place
