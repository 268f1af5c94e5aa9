"""``lantern-engine query``, ``retrieve`` and ``send``: Lantern as a client of a PACS.

A node is written ``AE@HOST:PORT`` (``ORTHANC@10.1.2.3:4242``); Lantern's own AE title is
``--aet`` (default LANTERN), which the PACS must know as a modality.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from engine.errors import LanternError

DEFAULT_AET = "LANTERN"


def parse_node(text: str):
    """``AE@HOST:PORT`` as a DicomNode, or a LanternError saying how to write it."""
    from engine.network.nodes import DicomNode

    ae, at, address = text.partition("@")
    host, colon, port = address.rpartition(":")
    if not (at and colon and ae and host and port.isdigit()):
        raise LanternError(f"a DICOM node is written AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242), not {text!r}")
    return DicomNode(ae, host.strip("[]"), int(port))


def _node_args(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(flag, required=True, metavar="AE@HOST:PORT", help=what)
    p.add_argument("--aet", default=DEFAULT_AET, help=f"Lantern's own AE title (default {DEFAULT_AET})")


def add_network_parsers(sub) -> None:
    p = sub.add_parser("query", help="find studies on a PACS (C-FIND, study level)")
    _node_args(p, "--pacs", "the PACS to ask")
    p.add_argument("--patient-name", default="", help="DICOM wildcards allowed, e.g. 'DOE^J*'")
    p.add_argument("--patient-id", default="")
    p.add_argument("--date", default="", metavar="FROM[-TO]", help="study date or range, YYYYMMDD[-YYYYMMDD]")
    p.add_argument("--modality", default="", help="e.g. DX, CR, CT")
    p.add_argument("--accession", default="", help="accession number")
    p.add_argument("--json", action="store_true", help="print the matches as JSON")
    p.set_defaults(run=query_command)

    p = sub.add_parser("retrieve", help="bring a study from a PACS: C-MOVE to a listener, or C-GET into a folder")
    _node_args(p, "--pacs", "the PACS that holds the study")
    p.add_argument("--study", required=True, metavar="UID", help="Study Instance UID (from 'query')")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--move-to", metavar="AE", help="C-MOVE: the PACS sends the study to this AE title "
                     "(Lantern's listener, which the PACS must know)")
    how.add_argument("--inbox", type=Path, help="C-GET: receive the study over this connection into this folder")
    p.add_argument("--min-free-mb", type=int, default=500, help="refuse instances below this much free space")
    p.set_defaults(run=retrieve_command)

    p = sub.add_parser("send", help="send DICOM files to a node (C-STORE), e.g. Lantern's exports to the PACS")
    _node_args(p, "--to", "the node to send to")
    p.add_argument("files", nargs="+", type=Path, help="DICOM files or folders (searched recursively)")
    p.set_defaults(run=send_command)


def _date_range(text: str) -> tuple[str, str]:
    start, _, end = text.partition("-")
    return start, (end if _ else start)


def query_command(args) -> int:
    from engine.network.query_retrieve import StudyQuery, find_studies

    start, end = _date_range(args.date) if args.date else ("", "")
    query = StudyQuery(args.patient_name, args.patient_id, start, end, args.modality, args.accession)
    matches = find_studies(parse_node(args.pacs), args.aet, query)
    if args.json:
        print(json.dumps([m.__dict__ for m in matches], indent=1))
        return 0
    for m in matches:
        print(f"{m.study_date:8}  {m.patient_id:16.16}  {m.patient_name:24.24}  {','.join(m.modalities):6}  "
              f"{m.accession_number:12.12}  {m.instances if m.instances is not None else '?':>5}  {m.study_uid}")
    print(f"{len(matches)} studies", file=sys.stderr)
    return 0


def _printer(update) -> None:
    print(f"\r{update.stage}", end="", file=sys.stderr, flush=True)


def retrieve_command(args) -> int:
    from engine.network.query_retrieve import get_study, move_study

    node, cancel = parse_node(args.pacs), threading.Event()
    try:
        if args.move_to:
            result = move_study(node, args.aet, args.study, args.move_to, progress=_printer, cancel=cancel)
        else:
            from engine.network.storage_scp import StorageSCP

            receiver = StorageSCP(args.inbox, ae_title=args.aet, min_free_bytes=args.min_free_mb << 20)
            result = get_study(node, args.aet, args.study, receiver.retrieved_handler(node.ae_title),
                               progress=_printer, cancel=cancel)
    except KeyboardInterrupt:  # the PACS was already told by C-CANCEL where it could be
        cancel.set()
        raise
    print(f"\n{result.summary}", file=sys.stderr)
    return 0 if result.failed == 0 else 1


def send_command(args) -> int:
    from engine.network.send import send_files

    paths = []
    for given in args.files:
        paths.extend(sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given])
    result = send_files(parse_node(args.to), args.aet, paths, progress=_printer)
    print("", file=sys.stderr)
    for path, reason in result.failed:
        print(f"not sent: {path}: {reason}", file=sys.stderr)
    print(result.summary, file=sys.stderr)
    return 0 if not result.failed else 1
