from __future__ import annotations

import io
import json

import pytest

from ansible_collections.enclave.llm.plugins.module_utils import rest as http
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError


class FakeResponse:
    def __init__(self, status=200, body=b"{}", headers=None):
        self.status = status
        self._body = body
        self.headers = headers or {"Content-Type": "application/json"}
        self.closed = False

    def read(self):
        return self._body

    def close(self):
        self.closed = True


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake_open_url(url, **kwargs):
        seen.append((url, kwargs))
        outcome = seen_outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    seen_outcomes: list = []
    monkeypatch.setattr(http, "open_url", fake_open_url)
    return seen, seen_outcomes


def test_json_body_token_and_tls_options_reach_open_url(calls):
    seen, outcomes = calls
    outcomes.append(FakeResponse(body=b'{"ok": true}', headers={"X-A": "1"}))
    resp = http.request("POST", "https://h:8000/v1/x", body={"a": 1}, token="s3cret", ca_path="/ca.pem",
                        timeout=5)
    url, kwargs = seen[0]
    assert url == "https://h:8000/v1/x"
    assert json.loads(kwargs["data"]) == {"a": 1}
    assert kwargs["headers"] == {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
    assert kwargs["ca_path"] == "/ca.pem" and kwargs["timeout"] == 5 and kwargs["validate_certs"] is True
    assert resp.status == 200 and resp.json() == {"ok": True} and resp.headers == {"x-a": "1"}


def test_bytes_body_is_sent_as_is(calls):
    seen, outcomes = calls
    outcomes.append(FakeResponse())
    http.request("PUT", "http://h/", body=b"raw")
    assert seen[0][1]["data"] == b"raw" and "Content-Type" not in seen[0][1]["headers"]


def test_http_error_keeps_status_and_body(calls):
    outcomes = calls[1]
    outcomes.append(HTTPError("http://h/x", 401, "Unauthorized", {}, io.BytesIO(b'{"error":"bad key"}')))
    with pytest.raises(http.HttpError) as err:
        http.request("GET", "http://h/x")
    assert err.value.status == 401 and err.value.body == b'{"error":"bad key"}'
    assert "answered HTTP 401" in str(err.value)


def test_connection_failure_names_the_url(calls):
    outcomes = calls[1]
    outcomes.append(URLError("Connection refused"))
    with pytest.raises(http.HttpError, match="GET http://h:1/ failed: Connection refused"):
        http.request("GET", "http://h:1/")


def test_stream_returns_the_open_response(calls):
    outcomes = calls[1]
    fake = FakeResponse(body=b"data: 1\n\n")
    outcomes.append(fake)
    resp = http.request("GET", "http://h/s", stream=True)
    assert resp.stream is fake and not fake.closed


def test_non_json_answer_is_a_clear_error():
    with pytest.raises(http.HttpError, match="expected JSON"):
        http.Response(200, {}, b"<html>").json()


def test_read_token(tmp_path):
    assert http.read_token(None) is None
    token = tmp_path / "t"
    token.write_text("  abc123 \nsecond line\n")
    assert http.read_token(str(token)) == "abc123"
    token.write_text("\n")
    with pytest.raises(http.HttpError, match="is empty"):
        http.read_token(str(token))
    with pytest.raises(http.HttpError, match="cannot read the token file"):
        http.read_token(str(tmp_path / "missing"))


def test_common_argument_spec_shape():
    spec = http.common_argument_spec()
    assert spec["url"]["required"] is True
    assert spec["validate_certs"]["default"] is True
    assert set(spec) == {"url", "ca_path", "validate_certs", "token_file", "timeout"}


def test_http_error_keeps_headers_lower_cased(calls):
    outcomes = calls[1]
    outcomes.append(HTTPError("http://h/x", 404, "Not Found", {"X-Error-Code": "RevisionNotFound"},
                              io.BytesIO(b"")))
    with pytest.raises(http.HttpError) as err:
        http.request("GET", "http://h/x")
    assert err.value.headers == {"x-error-code": "RevisionNotFound"}


def test_redirects_can_be_handed_to_the_caller(calls):
    seen, outcomes = calls
    outcomes.append(HTTPError("http://cdn/blob", 302, "Found", {"Location": "http://cdn/blob"}, io.BytesIO(b"")))
    with pytest.raises(http.HttpError) as err:
        http.request("GET", "http://h/x", token="t", follow_redirects="none")
    assert seen[0][1]["follow_redirects"] == "none"
    assert err.value.status == 302 and err.value.headers["location"] == "http://cdn/blob"
    outcomes.append(FakeResponse())
    http.request("GET", "http://h/x")
    assert seen[1][1]["follow_redirects"] == "safe"
