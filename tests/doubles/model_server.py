"""TEST DOUBLE: a Hugging Face-style hub and a plain artifact mirror, with faults.

Hugging Face is not reachable from these machines, so model_pull's hub client is
tested against this double of the hub's HTTP shape (what an internal mirror of
the hub also serves):

- ``GET /api/models/<repo>/revision/<rev>`` -> ``{"id", "sha", "siblings"}``; a
  missing revision answers 404 with ``X-Error-Code: RevisionNotFound``, a
  missing repository 401 (anonymous) or 404 with ``X-Error-Code: RepoNotFound``;
- ``GET /api/models/<repo>/tree/<commit>?recursive=true`` -> the file list,
  each with ``oid`` (git blob id), ``size`` and, for files at or above the LFS
  threshold, ``lfs: {oid: <sha256>, size, pointerSize}``; paginated with a
  ``Link: <...>; rel="next"`` header when ``page_size`` is set;
- ``GET /<repo>/resolve/<rev>/<path>`` -> small files directly, LFS files by a
  302 to ``/cdn/<sha256>`` on another host name (``localhost`` for
  ``127.0.0.1``), as the hub hands large files to its storage host.

The artifact mirror is a real HTTP file server: ``GET``/``HEAD /mirror/<path>``
serves files with ``Range`` support.

Both take faults per path (``server.faults[path] = {...}``): ``corrupt`` (same
length, different bytes), ``truncate`` (announce the full length, close after
half), ``missing`` (404), ``slow`` (seconds per 64 KiB), ``no_range`` (ignore
Range, answer 200). ``server.token`` makes every request need
``Authorization: Bearer <token>``. ``server.log`` records (method, path, range,
authorization) of each request.

Standard library only. Used in-process by the unit tests:

    server = ModelServer(); server.add_repo("org/tiny", {"config.json": b"{}"}); server.start()
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 65536


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # nosec: git's object id


class Repo:
    def __init__(self, files: dict[str, bytes], branch: str = "main"):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.commit(files, branch)

    def commit(self, files: dict[str, bytes], branch: str = "main") -> str:
        sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items()))
                           .encode() + str(len(self.commits)).encode()).hexdigest()  # nosec: a commit id
        self.commits[sha] = dict(files)
        self.refs[branch] = sha
        return sha

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


class ModelServer:
    """Hub double plus artifact mirror, in a thread; ``url`` once started."""

    def __init__(self, lfs_threshold: int = 1024, page_size: int = 0):
        self.repos: dict[str, Repo] = {}
        self.mirror: dict[str, bytes] = {}
        self.faults: dict[str, dict[str, Any]] = {}
        self.token: str | None = None
        self.private: set[str] = set()
        self.lfs_threshold = lfs_threshold
        self.page_size = page_size
        self.log: list[tuple[str, str, str | None, str | None]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- content
    def add_repo(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        if repo_id in self.repos:
            return self.repos[repo_id].commit(files, branch)
        self.repos[repo_id] = Repo(files, branch)
        return self.repos[repo_id].refs[branch]

    def lfs_blobs(self) -> dict[str, bytes]:
        return {hashlib.sha256(data).hexdigest(): data for repo in self.repos.values()
                for files in repo.commits.values() for data in files.values()}

    # -------------------------------------------------------------- running
    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ModelServer":
        handler = type("BoundHandler", (_Handler,), {"double": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    double: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # pylint: disable=redefined-builtin
        """Quiet: the tests read ``double.log`` instead."""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), dict({"Content-Type": "application/json"}, **(headers or {})))

    def _error(self, status: int, code: str | None, message: str) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _authorized(self) -> bool:
        token = self.double.token
        if token is None:
            return True
        return self.headers.get("Authorization") == f"Bearer {token}"

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        self.double.log.append((self.command, path, self.headers.get("Range"), self.headers.get("Authorization")))
        if path.startswith("/cdn/"):
            # The storage host: signed URLs, no token needed (nor wanted).
            blob = self.double.lfs_blobs().get(path[5:])
            if blob is None:
                self._error(404, None, "blob not found")
            else:
                self._file(path[5:], blob, fault_key=parse_qs(parts.query).get("path", [""])[0])
            return
        if not self._authorized():
            self._error(401, None, "Invalid credentials in Authorization header")
            return
        if path.startswith("/mirror/"):
            rel = path[len("/mirror/"):]
            if rel in self.double.mirror and not self.double.faults.get(rel, {}).get("missing"):
                self._file(rel, self.double.mirror[rel])
            else:
                self._error(404, None, "not found")
            return
        if path.startswith("/api/models/"):
            self._api(path[len("/api/models/"):], parse_qs(parts.query))
            return
        if "/resolve/" in path:
            repo_id, rest_path = path.lstrip("/").split("/resolve/", 1)
            rev, _sep, file_path = rest_path.partition("/")
            self._resolve(repo_id, rev, file_path)
            return
        self._error(404, None, "no such route in the model server double")

    # ------------------------------------------------------------------- hub
    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.double.repos.get(repo_id)
        if repo is None:
            status = 404 if self.headers.get("Authorization") else 401
            self._error(status, "RepoNotFound", "Repository not found")
        return repo

    def _api(self, rest_path: str, query: dict[str, list[str]]) -> None:
        for marker in ("/revision/", "/tree/"):
            if marker in rest_path:
                repo_id, rev = rest_path.split(marker, 1)
                break
        else:
            self._error(404, None, "unknown API route")
            return
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(rev.split("/", 1)[0])
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return
        files = repo.commits[commit]
        if marker == "/revision/":
            self._json(200, {"_id": "double", "id": repo_id, "sha": commit, "private": repo_id in self.double.private,
                             "siblings": [{"rfilename": name} for name in sorted(files)]})
            return
        entries = []
        dirs = sorted({name.rsplit("/", 1)[0] for name in files if "/" in name})
        for directory in dirs:
            entries.append({"type": "directory", "oid": hashlib.sha1(directory.encode()).hexdigest(),  # nosec
                            "size": 0, "path": directory})
        for name in sorted(files):
            data = files[name]
            entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": name}
            if len(data) >= self.double.lfs_threshold:
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n" \
                          f"size {len(data)}\n".encode()
                entry["oid"] = git_blob_oid(pointer)
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}
            entries.append(entry)
        size = self.double.page_size
        if not size:
            self._json(200, entries)
            return
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + size]
        headers = {}
        if cursor + size < len(entries):
            headers["Link"] = f'<{self.path.split("?")[0]}?recursive=true&cursor={cursor + size}>; rel="next"'
        self._json(200, page, headers)

    def _resolve(self, repo_id: str, rev: str, file_path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, "RevisionNotFound", "Invalid rev id: " + rev)
            return
        files = repo.commits[commit]
        if file_path not in files or self.double.faults.get(file_path, {}).get("missing"):
            self._error(404, "EntryNotFound", f"{file_path} does not exist on {rev}")
            return
        data = files[file_path]
        if len(data) >= self.double.lfs_threshold:
            sha = hashlib.sha256(data).hexdigest()
            host = self.headers.get("Host", "").replace("127.0.0.1", "localhost")
            self._send(302, b"", {"Location": f"http://{host}/cdn/{sha}?path={file_path}", "X-Repo-Commit": commit,
                                  "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))})
            return
        self._file(file_path, data, extra={"X-Repo-Commit": commit, "ETag": f'"{git_blob_oid(data)}"'})

    # ----------------------------------------------------------------- files
    def _file(self, key: str, data: bytes, fault_key: str = "", extra: dict[str, str] | None = None) -> None:
        fault = self.double.faults.get(fault_key or key, {})
        if fault.get("missing"):
            self._error(404, "EntryNotFound", "not found")
            return
        if fault.get("corrupt"):
            data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
        start, status = 0, 200
        requested = self.headers.get("Range")
        headers = dict(extra or {}, **{"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        if requested and not fault.get("no_range") and requested.startswith("bytes="):
            first = requested[6:].split("-", 1)[0]
            start = int(first) if first.isdigit() else 0
            if start >= len(data):
                self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault.get("truncate"):
            # Only the first run of a truncated file is cut; a resume gets the rest.
            cut = max(1, len(body) // 2) if fault["truncate"] is True or start == 0 else len(body)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        for offset in range(0, len(body), CHUNK):
            if fault.get("slow"):
                time.sleep(float(fault["slow"]))
            try:
                self.wfile.write(body[offset:offset + CHUNK])
            except (BrokenPipeError, ConnectionResetError):
                return
