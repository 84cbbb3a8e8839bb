"""The hash-chained audit log and its verifier."""
from __future__ import annotations

import gzip
import json
import os

from enclave_gateway import cli
from enclave_gateway.audit import GENESIS, AuditError, AuditLog, verify

import pytest


def write(path, count, start=0):
    log = AuditLog(str(path))
    for index in range(count):
        log.write({"request_id": f"r{start + index}", "status": 200})
    log.close()


def test_chain_verifies_and_resumes_after_restart(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    write(path, 2, start=3)          # a restart continues the chain
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["prev"] == GENESIS
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    result = verify([str(path)], expect_genesis=True)
    assert result.ok and result.records == 5


def test_edited_line_breaks_the_chain(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    write(path, 5)
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"status":200', '"status":201')
    path.write_text("\n".join(lines) + "\n")
    result = verify([str(path)])
    assert not result.ok
    assert any(":4: prev hash does not match" in p for p in result.problems)
    assert cli.main(["verify", str(path)]) == 1
    assert "BROKEN" in capsys.readouterr().out


def test_deleted_line_breaks_the_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    write(path, 5)
    lines = path.read_text().splitlines()
    del lines[1]
    path.write_text("\n".join(lines) + "\n")
    result = verify([str(path)])
    assert not result.ok
    assert any("seq 3 follows 1" in p for p in result.problems)
    assert any("prev hash does not match" in p for p in result.problems)


def test_chain_continues_across_rotation_and_gzip(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.write({"n": 1})
    log.write({"n": 2})
    os.rename(path, tmp_path / "audit.jsonl.1")          # logrotate moves the file
    log.write({"n": 3})                                   # the writer notices and reopens
    log.close()
    rotated = tmp_path / "audit.jsonl.1.gz"
    with open(tmp_path / "audit.jsonl.1", "rb") as src, gzip.open(rotated, "wb") as dst:
        dst.write(src.read())
    assert verify([str(rotated), str(path)], expect_genesis=True).ok
    assert not verify([str(path)], expect_genesis=True).ok     # the newer file alone does not start a chain


def test_unwritable_log_raises(tmp_path):
    log = AuditLog(str(tmp_path))                          # a directory cannot be opened for append
    assert not log.ready()
    with pytest.raises(AuditError, match="cannot open audit log"):
        log.write({"x": 1})
    full = AuditLog("/dev/full")                           # writes fail with ENOSPC
    with pytest.raises(AuditError, match="cannot write audit log"):
        full.write({"x": 1})
    assert not full.healthy
