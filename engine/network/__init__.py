"""Lantern on the hospital network: DICOM nodes and what Lantern does as one.

Receiving: storage_scp listens (C-STORE, C-ECHO) and writes what it accepts into an inbox
folder (inbox names the files from their UIDs; dataset_check decides what can be read); nodes
holds the checked settings of a node (AE title, address, port, TLS). The service-user side
(association, verification, query_retrieve, send) talks to PACS and modalities.

Qt-free and torch-free (an import-linter contract): it ships in the packaged app. Nothing is
imported here, so importing one module brings only what that module needs.
"""
