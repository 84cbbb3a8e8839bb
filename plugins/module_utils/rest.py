# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""The one HTTP seam of the enclave.llm modules.

Every request a module makes goes through :func:`request`, so unit tests fake
one function, and every module reads tokens from a file the same way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.urls import open_url
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError


def common_argument_spec() -> dict[str, dict[str, Any]]:
    """Arguments shared by modules that talk to an HTTP service (doc fragment enclave.llm.rest)."""
    return {
        "url": {"type": "str", "required": True},
        "ca_path": {"type": "path"},
        "validate_certs": {"type": "bool", "default": True},
        "token_file": {"type": "path", "no_log": False},
        "timeout": {"type": "float", "default": 30},
    }


class HttpError(Exception):
    """A request failed before a usable HTTP answer arrived, or with an error status."""

    def __init__(self, message: str, status: int | None = None, body: bytes = b"",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.body = body
        # lower-cased names: services explain errors in headers (X-Error-Code) and
        # redirects carry Location.
        self.headers = headers or {}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: Any = field(default=None, repr=False)

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(f"expected JSON, got {self.body[:200]!r}", self.status, self.body) from exc


def read_token(path: str | None) -> str | None:
    """First line of a token file, stripped; None when no file is configured."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.readline().strip()
    except OSError as exc:
        raise HttpError(f"cannot read the token file {path}: {exc.strerror}") from exc
    if not token:
        raise HttpError(f"the token file {path} is empty")
    return token


def request(method: str, url: str, *, headers: dict[str, str] | None = None, body: Any = None,
            token: str | None = None, ca_path: str | None = None, validate_certs: bool = True,
            timeout: float = 30, stream: bool = False, follow_redirects: str = "safe") -> Response:
    """Make one HTTP request. JSON-encodes ``body`` unless it is bytes.

    With ``stream=True`` the open response is returned in ``Response.stream``
    and the caller reads (and closes) it. HTTP error statuses raise HttpError
    carrying the status, body and headers. ``follow_redirects="none"`` turns a
    redirect into an HttpError with its Location header, for callers that must
    not send a token to the host it points at.
    """
    headers = dict(headers or {})
    data = None
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        else:
            data = json.dumps(body).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = open_url(url, data=data, headers=headers, method=method, validate_certs=validate_certs,
                        ca_path=ca_path, timeout=timeout, follow_redirects=follow_redirects)
    except HTTPError as exc:
        try:
            payload = exc.read() if hasattr(exc, "read") else b""
        except (OSError, ValueError):
            payload = b""
        error_headers = {k.lower(): v for k, v in exc.headers.items()} if exc.headers else {}
        raise HttpError(f"{method} {url} answered HTTP {exc.code}", exc.code, payload, error_headers) from exc
    except URLError as exc:
        raise HttpError(f"{method} {url} failed: {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise HttpError(f"{method} {url} failed: {exc}") from exc
    response_headers = {k.lower(): v for k, v in resp.headers.items()}
    if stream:
        return Response(resp.status, response_headers, stream=resp)
    try:
        return Response(resp.status, response_headers, resp.read())
    finally:
        resp.close()
