"""engine.files: atomic writes with ordinary permissions, and names that never overwrite."""

from __future__ import annotations

import os
import stat

import pytest

from engine.files import unused_path, write_bytes_atomic, write_json_atomic


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_get_umask_permissions_and_replaced_files_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    new = write_bytes_atomic(tmp_path / "export.png", b"png")
    assert new.read_bytes() == b"png"
    assert mode(new) == 0o666 & ~umask  # not mkstemp's 0600: a shared export folder can read it

    kept = tmp_path / "manifest.json"
    kept.write_text("{}")
    kept.chmod(0o640)
    write_json_atomic(kept, {"a": 1})
    assert kept.read_text() == '{\n  "a": 1\n}\n' and mode(kept) == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "result.json"
    write_json_atomic(target, {"ok": True})
    with pytest.raises(ValueError):
        write_json_atomic(target, {"bad": float("nan")})  # refused before anything is written
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # fails while writing the temp file
    assert target.read_text() == '{\n  "ok": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_unused_path_never_names_an_existing_file(tmp_path):
    first = tmp_path / "case.png"
    assert unused_path(first) == first
    first.write_bytes(b"source")
    (tmp_path / "case-2.png").write_bytes(b"earlier export")
    assert unused_path(first) == tmp_path / "case-3.png"
