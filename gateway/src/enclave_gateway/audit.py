"""Hash-chained JSON Lines audit log.

Every record carries ``seq`` and ``prev``: the sha256 (hex) of the previous
record's line, exactly as written (without its newline). Editing a line changes
its hash, so the next record's ``prev`` no longer matches; deleting a line breaks
both the chain and the ``seq`` sequence. The first record of a fresh log has
``prev`` = 64 zeros. After a rotation the chain continues into the new file, so
``verify`` takes the files oldest first.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass

GENESIS = "0" * 64


class AuditError(Exception):
    """The audit log cannot be written; the gateway must refuse requests."""


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def _last_line(path: str) -> bytes | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size == 0:
                return None
            chunk = min(size, 65536)
            handle.seek(size - chunk)
            data = handle.read(chunk).rstrip(b"\n")
    except FileNotFoundError:
        return None
    return data.rsplit(b"\n", 1)[-1] if data else None


class AuditLog:
    """Appends chained records; reopens the file when logrotate moved it."""

    def __init__(self, path: str, fsync: bool = False, retry_seconds: float = 5.0):
        self.path = path
        self.retry_seconds = retry_seconds
        self.failed_at = 0.0
        self.fsync = fsync
        self.handle = None
        self.inode = None
        self.prev = GENESIS
        self.seq = 0
        self.healthy = False
        self.error = ""
        self._resume()
        self.reopen()

    def _resume(self) -> None:
        last = None
        try:
            last = _last_line(self.path)
        except OSError as exc:
            self.error = str(exc)
        if last:
            self.prev = line_hash(last)
            try:
                self.seq = int(json.loads(last).get("seq", 0))
            except (ValueError, AttributeError):
                self.seq = 0

    def reopen(self) -> bool:
        if self.handle is not None:
            try:
                self.handle.close()
            except OSError:
                pass
            self.handle = None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self.handle = os.fdopen(fd, "ab", buffering=0)
            self.inode = os.fstat(fd).st_ino
            self.healthy = True
            self.error = ""
        except OSError as exc:
            self.healthy = False
            self.failed_at = time.monotonic()
            self.error = f"cannot open audit log {self.path}: {exc}"
        return self.healthy

    def ready(self) -> bool:
        """Whether requests may be served: the log is open (reopened if it was rotated, or
        retried ``retry_seconds`` after a failure)."""
        if not self.healthy:
            if time.monotonic() - self.failed_at < self.retry_seconds:
                return False
            return self.reopen()
        try:
            if self.handle is None or os.stat(self.path).st_ino != self.inode:
                return self.reopen()
        except OSError:
            return self.reopen()
        return self.healthy

    def write(self, record: dict) -> dict:
        """Chain and append one record; raise AuditError when it is not on disk."""
        if not self.ready():
            raise AuditError(self.error)
        record = dict(record)
        record["seq"] = self.seq + 1
        record["prev"] = self.prev
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode("utf-8")
        try:
            written = self.handle.write(line + b"\n")
            if written != len(line) + 1:
                raise OSError(f"short write ({written} of {len(line) + 1} bytes)")
            if self.fsync:
                os.fsync(self.handle.fileno())
        except OSError as exc:
            self.healthy = False
            self.failed_at = time.monotonic()
            self.error = f"cannot write audit log {self.path}: {exc}"
            raise AuditError(self.error) from exc
        self.seq += 1
        self.prev = line_hash(line)
        return record

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


@dataclass
class VerifyResult:
    ok: bool
    records: int
    problems: list[str]


def verify(paths: list[str], expect_genesis: bool = False) -> VerifyResult:
    """Walk the chain across files (oldest first) and list every break."""
    problems: list[str] = []
    prev = None
    seq = None
    count = 0
    for path in paths:
        opener = open
        if path.endswith(".gz"):
            import gzip
            opener = gzip.open
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.rstrip(b"\n")
                where = f"{path}:{number}"
                if not line:
                    problems.append(f"{where}: empty line")
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    problems.append(f"{where}: not JSON")
                    prev, seq = line_hash(line), None
                    continue
                count += 1
                if prev is None:
                    if record.get("prev") != GENESIS and expect_genesis:
                        problems.append(f"{where}: first record does not start a chain (prev={record.get('prev')})")
                elif record.get("prev") != prev:
                    problems.append(f"{where}: prev hash does not match the previous line "
                                    f"(a line before it was edited, removed or inserted)")
                if seq is not None and record.get("seq") != seq + 1:
                    problems.append(f"{where}: seq {record.get('seq')} follows {seq} (records missing or reordered)")
                prev = line_hash(line)
                seq = record.get("seq") if isinstance(record.get("seq"), int) else None
    return VerifyResult(not problems, count, problems)
