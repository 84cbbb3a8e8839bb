# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Bring model files into a model store, verified, from one of four sources.

Sources: a Hugging Face-style hub (the public Hub or an internal mirror of it),
an HTTP(S) artifact mirror described by a manifest, a local or NFS path, and an
Ollama server's ``/api/pull``.

For the file sources the rules are the same:

- files are written under ``<dest>/.model_pull.partial/`` (the same filesystem
  as the store) and renamed into place only after every file has verified;
- an interrupted transfer resumes with an HTTP Range request;
- a file already in the store is not fetched again: a record of the size,
  mtime, inode and digest of each file verified is kept outside the model
  directory, in ``<state_dir>/<sha256 of dest>.json``, so a second run does not
  re-read hundreds of gigabytes (a file whose size or mtime changed is hashed
  again; ``reverify`` forces it); ``<dest>/.model_pull.json``, where earlier
  versions kept it, is still read when ``state_dir`` holds no record;
- a store that is read-only (an NFS export on an inference host) is verified
  without writing anything into it; files missing there fail with that cause
  before anything is fetched;
- nothing starts when the filesystem lacks the bytes still to fetch plus a
  margin.

All HTTP goes through :mod:`rest` (one seam); the filesystem's free space
through :func:`disk_free_bytes`.
"""
from __future__ import annotations

import errno
import http.client
import fnmatch
import hashlib
import json
import os
import posixpath
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import quote, urljoin, urlsplit

from ansible_collections.enclave.llm.plugins.module_utils import rest

# Where earlier versions kept the store's record, inside dest: still read, never written.
STATE_FILE = ".model_pull.json"
DEFAULT_STATE_DIR = "/var/lib/enclave-llm/model_pull"
PARTIAL_DIR = ".model_pull.partial"
RESERVED_PREFIX = ".model_pull"
CHUNK_BYTES = 1024 * 1024
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
MIB = 1024 * 1024


class PullError(Exception):
    """A pull failed; the message names the object, the cause and the fix."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details


@dataclass
class RemoteFile:
    """One file of a model as its source describes it."""

    path: str
    size: int | None = None
    sha256: str | None = None
    # Hugging Face stores small files in git, not LFS: only their git blob id is known.
    git_oid: str | None = None
    location: str = ""
    # A path source without a manifest: (size, mtime_ns) of the source file when listed.
    source_stamp: list[int] | None = None

    def expected(self) -> str:
        return f"sha256:{self.sha256}" if self.sha256 else f"git-blob-sha1:{self.git_oid}"


@dataclass
class Options:
    """What the module passes in, transport settings included."""

    dest: str
    ca_path: str | None = None
    validate_certs: bool = True
    timeout: float = 30
    token: str | None = None
    allow_patterns: list[str] = field(default_factory=list)
    checksums: dict[str, str] = field(default_factory=dict)
    disk_margin_bytes: int = 1024 * MIB
    retries: int = 3
    reverify: bool = False
    check_mode: bool = False
    state_dir: str = DEFAULT_STATE_DIR


# --------------------------------------------------------------------- helpers
def disk_free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def write_problem(path: str) -> str | None:
    """Why nothing can be written into the directory ``path`` (None when it can).

    A read-only filesystem is read from the mount flags (root bypasses
    permission bits, not ``ST_RDONLY``); otherwise the permissions of the
    effective user decide.
    """
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return f"{path} is on a read-only filesystem"
    except OSError:
        pass
    if not os.access(path, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return f"{path} is not writable by this user (uid {os.geteuid()})"
    return None


def state_file_for(state_dir: str, dest: str) -> str:
    """The record of ``dest`` in ``state_dir``, named by the sha256 of dest's absolute path."""
    key = os.path.abspath(dest).encode("utf-8", "surrogateescape")
    return os.path.join(state_dir, hashlib.sha256(key).hexdigest() + ".json")


def open_partial(path: str, mode: str) -> Any:
    """Open a file of the partial directory for writing (the seam disk-full tests fake)."""
    return open(path, mode)  # pylint: disable=consider-using-with,unspecified-encoding


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"  # pragma: no cover


def safe_relative_path(path: Any) -> str:
    """Validate a file name that came from a source: relative, no ``..``, not ours."""
    if not isinstance(path, str) or not path.strip():
        raise PullError(f"the source lists an empty or non-text file name ({path!r}); fix its manifest")
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
        raise PullError(f"the source lists the file {path!r}, which would land outside dest; "
                        "file names must be relative paths without '..'")
    if norm.split("/", 1)[0].startswith(RESERVED_PREFIX):
        raise PullError(f"the source lists the file {path!r}, whose name is reserved for model_pull's own state")
    return norm


def matches(path: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


class Digest:
    """sha256 and, for git-stored files, the git blob id, fed in one pass."""

    def __init__(self, size: int | None, want_git: bool):
        self.sha256 = hashlib.sha256()
        self.git = None
        if want_git and size is not None:
            self.git = hashlib.sha1(f"blob {size}\0".encode())  # nosec: git's object id, not a security digest

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)

    def matches(self, remote: RemoteFile) -> tuple[bool, str]:
        """(verified, actual digest in the form of the expected one)."""
        if remote.sha256:
            actual = self.sha256.hexdigest()
            return actual == remote.sha256, f"sha256:{actual}"
        actual = self.git.hexdigest() if self.git is not None else "unknown"
        return actual == remote.git_oid, f"git-blob-sha1:{actual}"


def hash_file(path: str, remote: RemoteFile, limit: int | None = None) -> Digest:
    digest = Digest(remote.size, want_git=not remote.sha256)
    with open(path, "rb") as handle:
        left = limit
        while True:
            block = handle.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
                if left <= 0:
                    break
    return digest


def parse_manifest(text: str, origin: str) -> list[dict[str, Any]]:
    """A manifest is JSON (``{"files": [{path, sha256, size}]}`` or the bare list)
    or ``sha256sum`` output (``<hex>  <path>`` per line)."""
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PullError(f"the manifest {origin} is not valid JSON: {exc}") from exc
        entries = data.get("files") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise PullError(f"the manifest {origin} must hold a list of files (or {{'files': [...]}})")
        return entries
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"^([0-9a-fA-F]{64})\s+\*?(.+)$", line)
        if not match:
            raise PullError(f"the manifest {origin}, line {number}, is neither JSON nor '<sha256>  <path>': {line[:80]!r}")
        entries.append({"sha256": match.group(1).lower(), "path": match.group(2)})
    return entries


def manifest_files(entries: list[Any], origin: str, location: Callable[[str], str]) -> list[RemoteFile]:
    files = []
    for entry in entries:
        if not isinstance(entry, dict) or "path" not in entry:
            raise PullError(f"the manifest {origin} has an entry without a path: {entry!r}")
        path = safe_relative_path(entry["path"])
        digest = str(entry.get("sha256") or "").lower()
        if digest.startswith("sha256:"):
            digest = digest[7:]
        if not SHA256_RE.match(digest):
            raise PullError(f"the manifest {origin} gives no valid sha256 for {path!r} (got {entry.get('sha256')!r}); "
                            "every file needs its 64-hex-digit sha256")
        size = entry.get("size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise PullError(f"the manifest {origin} gives an invalid size for {path!r}: {size!r}")
        files.append(RemoteFile(path=path, size=size, sha256=digest, location=location(path)))
    return files


# --------------------------------------------------------------------- sources
class Source:
    """Lists a model's files and opens one of them at an offset."""

    kind = "source"
    supports_resume = True

    def __init__(self, opts: Options):
        self.opts = opts
        self.meta: dict[str, Any] = {}

    def list_files(self) -> list[RemoteFile]:  # pragma: no cover - abstract
        raise NotImplementedError

    def open(self, remote: RemoteFile, offset: int) -> tuple[Any, int]:  # pragma: no cover - abstract
        """(readable stream, offset it starts at: ``offset`` when resumed, else 0)."""
        raise NotImplementedError

    def size_of(self, remote: RemoteFile) -> int | None:
        return remote.size


class HttpSource(Source):
    """Shared HTTP plumbing: errors in words, Range resumes, tokens kept on their host."""

    def _request(self, method: str, url: str, *, headers: dict[str, str] | None = None, stream: bool = False,
                 what: str) -> rest.Response:
        token = self.opts.token
        origin = urlsplit(url).netloc
        for _hop in range(6):
            try:
                return rest.request(method, url, headers=headers, token=token, ca_path=self.opts.ca_path,
                                    validate_certs=self.opts.validate_certs, timeout=self.opts.timeout,
                                    stream=stream, follow_redirects="none")
            except rest.HttpError as exc:
                location = exc.headers.get("location")
                if exc.status in (301, 302, 303, 307, 308) and location:
                    url = urljoin(url, location)
                    # The hub sends large files to a storage host; the token is for the hub only.
                    if urlsplit(url).netloc != origin:
                        token = None
                    continue
                raise self._explain(exc, url, what) from exc
        raise PullError(f"{what}: too many redirects, last to {url}")

    def _explain(self, exc: rest.HttpError, url: str, what: str) -> PullError:
        status = exc.status
        if status in (401, 403):
            hint = ("the token in token_file was refused" if self.opts.token else
                    "the server wants a token: set token_file")
            return PullError(f"{what}: authentication failed (HTTP {status}) at {url}; {hint}", status=status)
        if status == 404:
            return PullError(f"{what}: not found (HTTP 404) at {url}; check the name and the source URL", status=status)
        if status == 416:
            return PullError(f"{what}: the server refused the resume range (HTTP 416) at {url}", status=status)
        if status is None:
            return PullError(f"{what}: {exc}; check the URL, the network path and ca_path")
        return PullError(f"{what}: HTTP {status} at {url}", status=status)

    def fetch_text(self, url: str, what: str) -> str:
        resp = self._request("GET", url, what=what)
        try:
            return resp.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PullError(f"{what}: {url} is not UTF-8 text") from exc

    def open(self, remote: RemoteFile, offset: int) -> tuple[Any, int]:
        headers = {"Range": f"bytes={offset}-"} if offset else None
        try:
            resp = self._request("GET", remote.location, headers=headers, stream=True,
                                 what=f"downloading {remote.path}")
        except PullError as exc:
            if offset and exc.details.get("status") == 416:
                # The partial is not a prefix the server can continue: start over.
                return self.open(remote, 0)
            raise
        if offset and resp.status == 206:
            content_range = resp.headers.get("content-range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if match and int(match.group(1)) == offset:
                return resp.stream, offset
            resp.stream.close()
            return self.open(remote, 0)
        return resp.stream, 0

    def size_of(self, remote: RemoteFile) -> int | None:
        if remote.size is not None:
            return remote.size
        resp = self._request("HEAD", remote.location, what=f"sizing {remote.path}")
        length = resp.headers.get("content-length")
        return int(length) if length and length.isdigit() else None


class HuggingFaceSource(HttpSource):
    """A Hugging Face-style hub: ``/api/models/<repo>/revision/<rev>`` pins the
    commit, ``/api/models/<repo>/tree/<commit>?recursive=true`` lists files with
    their LFS sha256 (or git blob id), ``/<repo>/resolve/<commit>/<path>`` serves them."""

    kind = "huggingface"

    def __init__(self, opts: Options, endpoint: str, repo: str, revision: str):
        super().__init__(opts)
        self.endpoint = endpoint.rstrip("/")
        self.repo = repo
        self.revision = revision

    def _explain(self, exc: rest.HttpError, url: str, what: str) -> PullError:
        code = exc.headers.get("x-error-code", "")
        if code == "RevisionNotFound":
            return PullError(f"the revision {self.revision!r} does not exist in {self.repo} at {self.endpoint}; "
                             "pin an existing commit, branch or tag", status=exc.status)
        if code == "RepoNotFound" or (exc.status == 401 and not self.opts.token):
            return PullError(f"the repository {self.repo} was not found at {self.endpoint} (HTTP {exc.status}); "
                             "check the repo id, or set token_file for a private or gated repository",
                             status=exc.status)
        if code == "GatedRepo":
            return PullError(f"the repository {self.repo} is gated and this token has no access (HTTP {exc.status}); "
                             "accept its terms with the account the token belongs to", status=exc.status)
        if code == "EntryNotFound":
            return PullError(f"{what}: the file is not in {self.repo}@{self.revision} (HTTP 404)", status=exc.status)
        return super()._explain(exc, url, what)

    def _api(self, suffix: str) -> str:
        return f"{self.endpoint}/api/models/{quote(self.repo, safe='/')}{suffix}"

    def list_files(self) -> list[RemoteFile]:
        info = self._request("GET", self._api(f"/revision/{quote(self.revision, safe='')}"),
                             what=f"resolving {self.repo}@{self.revision}").json()
        commit = info.get("sha") if isinstance(info, dict) else None
        if not commit or not SHA1_RE.match(str(commit)):
            raise PullError(f"{self.endpoint} did not name the commit of {self.repo}@{self.revision} "
                            f"(answer: {str(info)[:200]}); is it a Hugging Face-compatible endpoint?")
        self.meta["revision"] = commit
        url = self._api(f"/tree/{commit}?recursive=true")
        files: list[RemoteFile] = []
        for _page in range(10000):
            resp = self._request("GET", url, what=f"listing {self.repo}@{commit}")
            entries = resp.json()
            if not isinstance(entries, list):
                raise PullError(f"listing {self.repo}@{commit}: expected a list of files, got {str(entries)[:200]}")
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("type") != "file":
                    continue
                path = safe_relative_path(entry.get("path"))
                lfs = entry.get("lfs") or {}
                sha = str(lfs.get("oid") or lfs.get("sha256") or "").lower() or None
                files.append(RemoteFile(
                    path=path, size=int(entry.get("size", lfs.get("size", 0))), sha256=sha,
                    git_oid=None if sha else str(entry.get("oid", "")).lower(),
                    location=f"{self.endpoint}/{quote(self.repo, safe='/')}/resolve/{commit}/{quote(path)}"))
            match = re.search(r'<([^>]+)>;\s*rel="next"', resp.headers.get("link", ""))
            if not match:
                break
            url = urljoin(url, match.group(1))
        for remote in files:
            if remote.sha256 and not SHA256_RE.match(remote.sha256):
                raise PullError(f"{self.endpoint} gave an invalid sha256 for {remote.path}: {remote.sha256!r}")
            if not remote.sha256 and not SHA1_RE.match(remote.git_oid or ""):
                raise PullError(f"{self.endpoint} gave no digest for {remote.path}; cannot verify it")
        return files


class MirrorSource(HttpSource):
    """An HTTP(S) directory of files plus a manifest (inline, or a file on the mirror)."""

    kind = "http"

    def __init__(self, opts: Options, base_url: str, manifest: Any):
        super().__init__(opts)
        self.base = base_url.rstrip("/") + "/"
        self.manifest = manifest

    def list_files(self) -> list[RemoteFile]:
        if isinstance(self.manifest, list):
            entries, origin = self.manifest, "given inline"
        else:
            url = urljoin(self.base, str(self.manifest))
            entries, origin = parse_manifest(self.fetch_text(url, f"reading the manifest {url}"), url), url
        return manifest_files(entries, origin, lambda path: urljoin(self.base, quote(path)))


class PathSource(Source):
    """A directory on the target (local disk or an NFS mount)."""

    kind = "path"

    def __init__(self, opts: Options, src: str, manifest: Any):
        super().__init__(opts)
        self.src = src
        self.manifest = manifest

    def list_files(self) -> list[RemoteFile]:
        if not os.path.isdir(self.src):
            raise PullError(f"the source directory {self.src} does not exist or is not a directory "
                            "(is the NFS share mounted?)")
        if isinstance(self.manifest, list):
            files = manifest_files(self.manifest, "given inline", lambda p: os.path.join(self.src, p))
        elif self.manifest:
            origin = os.path.join(self.src, str(self.manifest))
            try:
                with open(origin, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                raise PullError(f"cannot read the manifest {origin}: {exc.strerror}") from exc
            files = manifest_files(parse_manifest(text, origin), origin, lambda p: os.path.join(self.src, p))
        else:
            # No manifest: the digest is taken from the bytes read, and the copy is
            # re-read and compared before it is renamed into place.
            files = []
            for root, dirs, names in os.walk(self.src):
                dirs.sort()
                for name in sorted(names):
                    full = os.path.join(root, name)
                    rel = os.path.relpath(full, self.src).replace(os.sep, "/")
                    if rel.split("/", 1)[0].startswith(RESERVED_PREFIX) or not os.path.isfile(full):
                        continue
                    stat = os.stat(full)
                    files.append(RemoteFile(path=rel, size=stat.st_size, location=full,
                                            source_stamp=[stat.st_size, stat.st_mtime_ns]))
        for remote in files:
            if remote.size is None and os.path.isfile(remote.location):
                remote.size = os.path.getsize(remote.location)
        return files

    def open(self, remote: RemoteFile, offset: int) -> tuple[Any, int]:
        try:
            handle = open(remote.location, "rb")  # pylint: disable=consider-using-with
        except OSError as exc:
            raise PullError(f"cannot read {remote.location}: {exc.strerror}; "
                            "check the source path and its permissions") from exc
        if offset:
            handle.seek(offset)
        return handle, offset


# ----------------------------------------------------------------------- store
class Store:
    """The destination directory, its verification records and its partial files.

    The records live in ``state_dir``, outside the model directory, so that a
    read-only store can be verified; a record an earlier version left in
    ``<dest>/.model_pull.json`` is read when ``state_dir`` has none.
    """

    def __init__(self, dest: str, state_dir: str = DEFAULT_STATE_DIR):
        self.dest = dest
        self.partial_dir = os.path.join(dest, PARTIAL_DIR)
        self.state_dir = state_dir
        self.state_path = state_file_for(state_dir, dest)
        self.legacy_state_path = os.path.join(dest, STATE_FILE)
        self.records: dict[str, dict[str, Any]] = {}
        for path in (self.state_path, self.legacy_state_path):
            records = self._load(path)
            if records is not None:
                self.records = records
                break

    def _load(self, path: str) -> dict[str, dict[str, Any]] | None:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            return None
        if data.get("dest") not in (None, os.path.abspath(self.dest)):
            return None
        return data["files"]

    def path(self, rel: str) -> str:
        return os.path.join(self.dest, *rel.split("/"))

    def partial(self, rel: str) -> str:
        return os.path.join(self.partial_dir, *rel.split("/")) + ".part"

    def partial_size(self, rel: str) -> int:
        try:
            return os.path.getsize(self.partial(rel))
        except OSError:
            return 0

    def verified(self, remote: RemoteFile, reverify: bool) -> tuple[bool, bool]:
        """(the store holds this file verified, the record needs writing)."""
        path = self.path(remote.path)
        try:
            stat = os.stat(path)
        except OSError:
            return False, False
        if remote.size is not None and stat.st_size != remote.size:
            return False, False
        record = self.records.get(remote.path) or {}
        unchanged = (record.get("size") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns
                     and record.get("inode") == stat.st_ino and not reverify)
        if remote.source_stamp is not None:
            # No digest from the source: the copy is current while neither side changed,
            # otherwise both are hashed and compared.
            if unchanged and record.get("source_stamp") == remote.source_stamp and record.get("sha256"):
                remote.sha256 = record["sha256"]
                return True, False
            source_sha = hash_file(remote.location, RemoteFile(remote.path, sha256="0" * 64)).sha256.hexdigest()
            remote.sha256 = source_sha
            ok, _actual = hash_file(path, remote).matches(remote)
            return ok, ok
        if unchanged and record.get("expected") == remote.expected():
            return True, False
        ok, _actual = hash_file(path, remote).matches(remote)
        return ok, ok

    def record(self, remote: RemoteFile) -> None:
        stat = os.stat(self.path(remote.path))
        self.records[remote.path] = {"expected": remote.expected(), "sha256": remote.sha256, "size": stat.st_size,
                                     "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino,
                                     "source_stamp": remote.source_stamp}

    def save(self, meta: dict[str, Any]) -> str | None:
        """Write the records into ``state_dir``; returns a warning when that failed.

        The record only spares later runs from hashing the files again, so a
        state_dir that cannot be written costs time, not correctness.
        """
        tmp = f"{self.state_path}.{os.getpid()}.tmp"
        try:
            os.makedirs(self.state_dir, mode=0o755, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(dict(meta, dest=os.path.abspath(self.dest), files=self.records), handle, indent=1,
                          sort_keys=True)
            os.replace(tmp, self.state_path)
        except OSError as exc:
            _unlink(tmp)
            return (f"the files of {self.dest} verified, but their record could not be written to {self.state_path} "
                    f"({exc.strerror or exc}); the next run hashes them again. Make state_dir "
                    f"({self.state_dir}) a writable directory on a writable filesystem")
        return None

    def cleanup_partial_dir(self) -> None:
        for root, _dirs, _names in sorted(os.walk(self.partial_dir), reverse=True):
            try:
                os.rmdir(root)
            except OSError:
                pass


# ------------------------------------------------------------------------ pull
@dataclass
class Transfer:
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    def figures(self) -> dict[str, Any]:
        duration = max(time.monotonic() - self.started, 1e-6)
        return {"bytes": self.bytes, "duration_s": round(duration, 3),
                "throughput_bytes_per_s": int(self.bytes / duration) if self.bytes else 0}


def apply_checksums(files: list[RemoteFile], checksums: dict[str, str]) -> None:
    """Pinned sha256 values win over what the source says, and must agree with it."""
    by_path = {f.path: f for f in files}
    for raw_path, raw_digest in checksums.items():
        path = safe_relative_path(raw_path)
        digest = str(raw_digest).lower()
        if digest.startswith("sha256:"):
            digest = digest[7:]
        if not SHA256_RE.match(digest):
            raise PullError(f"checksums[{raw_path!r}] is not a sha256 (64 hex digits): {raw_digest!r}")
        remote = by_path.get(path)
        if remote is None:
            raise PullError(f"checksums pins {path!r}, but the source does not offer that file "
                            "(or allow_patterns filters it out)")
        if remote.sha256 and remote.sha256 != digest:
            raise PullError(f"checksum mismatch for {path} before download: the source says sha256:{remote.sha256}, "
                            f"checksums pins sha256:{digest}; the source changed or the pin is wrong")
        remote.sha256 = digest


def _copy_stream(stream: Any, handle: Any, digest: Digest, transfer: Transfer, remote: RemoteFile,
                 written: int) -> int:
    try:
        while True:
            block = stream.read(CHUNK_BYTES)
            if not block:
                return written
            if remote.size is not None and written + len(block) > remote.size:
                raise PullError(f"{remote.path}: the source sent more than the {remote.size} bytes it listed; "
                                "the file changed at the source")
            try:
                handle.write(block)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise PullError(f"disk full while writing {remote.path} into {os.path.dirname(handle.name)} "
                                    f"after {written} of {remote.size} bytes; free space or choose another dest",
                                    disk_full=True) from exc
                raise
            digest.update(block)
            written += len(block)
            transfer.bytes += len(block)
    finally:
        stream.close()


def fetch_one(source: Source, store: Store, remote: RemoteFile, opts: Options, transfer: Transfer) -> str:
    """Download (or resume) one file into the partial directory and verify it.

    Returns how it arrived: ``downloaded``, ``resumed`` or ``copied``.
    """
    part = store.partial(remote.path)
    os.makedirs(os.path.dirname(part), exist_ok=True)
    how = "copied" if isinstance(source, PathSource) else "downloaded"
    last_error: Exception | None = None
    for _attempt in range(opts.retries + 1):
        offset = store.partial_size(remote.path) if source.supports_resume else 0
        if remote.size is not None and offset > remote.size:
            os.unlink(part)
            offset = 0
        complete = remote.size is not None and offset == remote.size
        digest = hash_file(part, remote) if offset else Digest(remote.size, want_git=not remote.sha256)
        written = offset
        if not complete:
            try:
                stream, start = source.open(remote, offset)
                if start != offset:
                    digest, written = Digest(remote.size, want_git=not remote.sha256), 0
                elif offset:
                    how = "resumed"
                with open_partial(part, "ab" if start else "wb") as handle:
                    written = _copy_stream(stream, handle, digest, transfer, remote, written)
                    handle.flush()
                    os.fsync(handle.fileno())
            except PullError as exc:
                if exc.details.get("disk_full"):
                    _unlink(part)
                raise
            except (socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                # A broken or stalled transfer: keep the partial file and resume it.
                last_error = exc
                continue
        if remote.size is not None and written < remote.size:
            last_error = PullError(f"{remote.path}: the transfer ended after {written} of {remote.size} bytes")
            continue
        if remote.source_stamp is not None and not remote.sha256:
            # A path source without a manifest: what was read is the reference, and
            # the copy must read back the same before it is put in place.
            remote.sha256 = digest.sha256.hexdigest()
            if not hash_file(part, remote).matches(remote)[0]:
                _unlink(part)
                raise PullError(f"{remote.path}: the copy in {part} reads back differently from {remote.location}; "
                                "check the destination disk")
        ok, actual = digest.matches(remote)
        if not ok:
            _unlink(part)
            raise PullError(f"checksum mismatch for {remote.path}: expected {remote.expected()}, got {actual}; "
                            "the download was discarded and nothing was put in place. The source serves different "
                            "bytes than its listing (corrupt mirror, or a wrong pin in checksums)",
                            file=remote.path, expected=remote.expected(), actual=actual)
        if remote.size is None:
            remote.size = written
        return how
    kept = store.partial_size(remote.path)
    raise PullError(f"{remote.path}: the transfer failed {opts.retries + 1} times ({last_error}); "
                    f"{kept} bytes are kept in {part} and the next run resumes from there")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def pull_files(source: Source, opts: Options) -> dict[str, Any]:
    """Make ``opts.dest`` hold the verified files of ``source``. Returns the module result."""
    transfer = Transfer()
    listed = [f for f in source.list_files() if matches(f.path, opts.allow_patterns)]
    if not listed:
        raise PullError(f"the source offers no file matching allow_patterns {opts.allow_patterns}; "
                        "check the patterns and the repository or manifest")
    apply_checksums(listed, opts.checksums)
    for remote in listed:
        if not remote.sha256 and not remote.git_oid and remote.source_stamp is None:
            raise PullError(f"no digest is known for {remote.path}; add it to the manifest or to checksums")
    if os.path.exists(opts.dest) and not os.path.isdir(opts.dest):
        raise PullError(f"dest {opts.dest} exists and is not a directory")
    store = Store(opts.dest, opts.state_dir)
    present, missing, record_updates = [], [], []
    for remote in listed:
        if os.path.isdir(opts.dest):
            ok, needs_record = store.verified(remote, opts.reverify)
        else:
            ok, needs_record = False, False
        if ok:
            present.append(remote)
            if needs_record:
                record_updates.append(remote)
        else:
            missing.append(remote)
    result: dict[str, Any] = {"dest": opts.dest, "source": source.kind, "changed": bool(missing),
                              "state_file": store.state_path}
    result.update(source.meta)

    def save_records() -> None:
        warning = store.save(source.meta)
        if warning:
            result.setdefault("warnings", []).append(warning)

    def bytes_total() -> int:
        # A manifest without sizes (SHA256SUMS) learns them from the source or the store.
        total = 0
        for f in listed:
            if f.size is None:
                local = os.path.join(opts.dest, f.path)
                total += os.path.getsize(local) if os.path.isfile(local) else 0
            else:
                total += f.size
        return total

    result["bytes_total"] = bytes_total()
    result["diff"] = {"before": {"files": sorted(f.path for f in present)},
                      "after": {"files": sorted(f.path for f in listed)}}

    def file_list(actions: dict[str, str]) -> list[dict[str, Any]]:
        return [{"path": f.path, "size": f.size, "sha256": f.sha256, "git_oid": f.git_oid,
                 "status": actions.get(f.path, "present")} for f in listed]

    if not missing:
        # Verifying writes nothing into dest: a read-only store passes here.
        if record_updates and not opts.check_mode:
            for remote in record_updates:
                store.record(remote)
            save_records()
        result.update(transfer.figures(), files=file_list({}))
        return result

    parent = opts.dest
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent) or "."
    problem = write_problem(parent)
    if problem:
        raise _read_only_error(opts.dest, problem, missing, listed)

    sizes = {f.path: source.size_of(f) for f in missing}
    for remote in missing:
        if remote.size is None:
            remote.size = sizes[remote.path]
    needed = sum((sizes[f.path] or 0) - min(store.partial_size(f.path), sizes[f.path] or 0) for f in missing)
    free = disk_free_bytes(parent)
    result["bytes_needed"] = needed
    if free < needed + opts.disk_margin_bytes:
        raise PullError(f"not enough free space for {opts.dest}: {human_bytes(needed)} still to fetch plus a margin "
                        f"of {human_bytes(opts.disk_margin_bytes)}, but only {human_bytes(free)} free on {parent}; "
                        "free space, choose another dest, or lower disk_margin_mib",
                        bytes_needed=needed, bytes_free=free)
    if opts.check_mode:
        result.update(transfer.figures(), files=file_list({f.path: "missing" for f in missing}))
        return result

    actions: dict[str, str] = {}
    placed: set[str] = set()
    try:
        os.makedirs(store.partial_dir, exist_ok=True)
        for remote in missing:
            actions[remote.path] = fetch_one(source, store, remote, opts, transfer)
        # Every file verified: now, and only now, rename them into place.
        for remote in missing:
            target = store.path(remote.path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.isdir(target) and not os.path.islink(target):
                raise PullError(f"{target} is a directory where the file {remote.path} belongs; remove it")
            os.chmod(store.partial(remote.path), 0o644)
            os.replace(store.partial(remote.path), target)
            placed.add(remote.path)
            store.record(remote)
    except OSError as exc:
        # The check above reads mount flags and permissions; the server of an NFS
        # export (root_squash, a read-only export) may still refuse the write.
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise _read_only_error(opts.dest, f"writing {exc.filename or opts.dest} failed: {exc.strerror}",
                               [f for f in missing if f.path not in placed], listed,
                               "Files already in place stay; the next run verifies them") from exc
    for remote in record_updates:
        store.record(remote)
    _fsync_dir(opts.dest)
    save_records()
    store.cleanup_partial_dir()
    result.update(transfer.figures(), files=file_list(actions))
    result["bytes_total"] = bytes_total()
    return result


def _read_only_error(dest: str, problem: str, missing: list[RemoteFile], listed: list[RemoteFile],
                     outcome: str = "Nothing was fetched") -> PullError:
    names = sorted(f.path for f in missing)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return PullError(f"dest {dest} cannot be written ({problem}), and {len(names)} of {len(listed)} files are missing "
                     f"or do not verify there: {shown}. A read-only model store (an NFS export) is only verified "
                     "here: put the model's files into the store where it is writable (model_pull on the host that "
                     f"exports it), or point dest at a writable directory. {outcome}",
                     read_only=True, missing=names)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- ollama
def ollama_name(name: str) -> str:
    """``llama3.2`` -> ``llama3.2:latest`` (Ollama's own normalisation of a bare name)."""
    base = name.rsplit("/", 1)[-1]
    return name if ":" in base else name + ":latest"


def _ndjson(stream: Any) -> Iterator[dict[str, Any]]:
    buffer = b""
    try:
        while True:
            block = stream.read(65536)
            if not block:
                break
            buffer += block
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield _json_line(line)
        if buffer.strip():
            yield _json_line(buffer)
    finally:
        stream.close()


def _json_line(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise PullError(f"Ollama sent a progress line that is not JSON: {line[:200]!r}") from exc
    return value if isinstance(value, dict) else {"status": str(value)}


def pull_ollama(url: str, model: str, opts: Options, digest: str | None = None,
                insecure: bool = False) -> dict[str, Any]:
    """Pull ``model`` into the Ollama server at ``url`` unless it already has it."""
    transfer = Transfer()
    base = url.rstrip("/")
    name = ollama_name(model)
    want = (digest or "").lower()
    if want.startswith("sha256:"):
        want = want[7:]
    if want and not SHA256_RE.match(want):
        raise PullError(f"digest {digest!r} is not a sha256 (64 hex digits) as /api/tags reports it")

    def call(method: str, path: str, what: str, **kwargs: Any) -> rest.Response:
        try:
            return rest.request(method, base + path, token=opts.token, ca_path=opts.ca_path,
                                validate_certs=opts.validate_certs, timeout=opts.timeout, **kwargs)
        except rest.HttpError as exc:
            detail = ""
            try:
                detail = json.loads(exc.body.decode("utf-8")).get("error", "")
            except (ValueError, UnicodeDecodeError, AttributeError):
                detail = exc.body[:200].decode("utf-8", "replace") if exc.body else ""
            if exc.status in (401, 403):
                raise PullError(f"{what}: the Ollama endpoint {base} refused the request (HTTP {exc.status}); "
                                "check token_file", status=exc.status) from exc
            raise PullError(f"{what}: {exc}{': ' + detail if detail else ''}; is Ollama running at {base}?",
                            status=exc.status) from exc

    def installed() -> dict[str, Any] | None:
        tags = call("GET", "/api/tags", f"listing the models of {base}").json()
        for entry in (tags or {}).get("models") or []:
            if ollama_name(str(entry.get("name") or entry.get("model") or "")) == name:
                return entry
        return None

    before = installed()
    result: dict[str, Any] = {"source": "ollama", "model": name, "url": base}
    if before and (not want or before.get("digest") == want):
        result.update(changed=False, digest=before.get("digest"), size=before.get("size"), **transfer.figures())
        return result
    result["changed"] = True
    result["diff"] = {"before": {"model": name, "digest": (before or {}).get("digest")},
                      "after": {"model": name, "digest": want or "(latest of the registry)"}}
    if opts.check_mode:
        result.update(digest=(before or {}).get("digest"), **transfer.figures())
        return result
    resp = call("POST", "/api/pull", f"pulling {name}", body={"model": name, "insecure": insecure, "stream": True},
                stream=True)
    layers: dict[str, dict[str, int]] = {}
    statuses: list[str] = []
    for event in _ndjson(resp.stream):
        if event.get("error"):
            raise PullError(f"Ollama at {base} could not pull {name}: {event['error']}; check the model name and "
                            "the registry Ollama pulls from (OLLAMA_* settings, proxy, insecure_registry)")
        status = str(event.get("status", ""))
        if status and (not statuses or statuses[-1] != status):
            statuses.append(status)
        if event.get("digest"):
            layer = layers.setdefault(event["digest"], {"total": 0, "completed": 0})
            layer["total"] = max(layer["total"], int(event.get("total") or 0))
            layer["completed"] = max(layer["completed"], int(event.get("completed") or 0))
    if not statuses or statuses[-1] != "success":
        raise PullError(f"Ollama at {base} ended the pull of {name} without 'success' "
                        f"(last status: {statuses[-1] if statuses else 'none'}); run again to resume")
    transfer.bytes = sum(layer["completed"] for layer in layers.values())
    after = installed()
    if not after:
        raise PullError(f"Ollama at {base} reported success but does not list {name} in /api/tags")
    if want and after.get("digest") != want:
        call("DELETE", "/api/delete", f"removing {name}", body={"model": name})
        raise PullError(f"{name}: Ollama pulled digest {after.get('digest')}, expected {want}; the model was removed "
                        "again. The tag moved at the registry: pin the new digest or pull a pinned tag",
                        expected=want, actual=after.get("digest"))
    result.update(digest=after.get("digest"), size=after.get("size"), layers=len(layers), statuses=statuses,
                  **transfer.figures())
    return result
