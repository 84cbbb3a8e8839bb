"""Behaviour of enclave.llm.nginx_edge, from the controller (a client outside the DMZ).

edge-dmz runs nginx; edge-app runs the OpenAI-compatible backend DOUBLE over TLS as
STAND-INS for the gateway (:8443, answers model "via-gateway") and oauth2-proxy
(:4180, answers model "via-oauth2"). The real gateway and oauth2-proxy are not run here.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import labtest

EDGE_IP, NAME, PORT = "10.232.5.74", "edge.lab.internal", 443
CA = str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki" / "ca.crt")
API_KEY = "ek-testkey-0123456789abcdef"


def context(maximum=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=CA)
    if maximum:
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def connect(server_name: str = NAME, ctx: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    raw = socket.create_connection((EDGE_IP, PORT), timeout=30)
    tls = (ctx or context()).wrap_socket(raw, server_hostname=server_name)
    conn = http.client.HTTPConnection(server_name, PORT, timeout=30)
    conn.sock = tls
    return conn


def call(method: str, path: str, body: bytes | None = None, headers: dict | None = None, host: str | None = None):
    conn = connect()
    hdrs = dict(headers or {})
    if host:
        hdrs["Host"] = host
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def wait_for_buckets() -> None:
    time.sleep(4)  # per-address 5 r/s, burst 15: refilled after ~3 s


def test_sslyze_mozilla_modern_has_no_findings():
    sslyze = Path(labtest.SCENARIO_DIR).parents[1] / "tools" / "sslyze.sh"
    # The platform CA is not in the public trust stores: sslyze is given it.
    proc = subprocess.run([str(sslyze), "--mozilla_config=modern", "--certinfo_ca_file", CA, f"{NAME}:{PORT}{{{EDGE_IP}}}"],
                          capture_output=True, text=True, timeout=300, check=False)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "is compliant with the Mozilla modern config" in proc.stdout.replace("\n", " ") \
        or "compliant" in proc.stdout.lower()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1])
def test_tls_below_1_3_is_refused(version):
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        connect(ctx=context(maximum=version)).request("GET", "/")


def test_tls_1_3_with_modern_parameters():
    conn = connect()
    conn.request("GET", "/v1/models")
    conn.getresponse().read()
    assert conn.sock.version() == "TLSv1.3"
    assert conn.sock.cipher()[0] in ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
    assert conn.sock.getpeercert()["subjectAltName"][0] == ("DNS", NAME) or ("DNS", NAME) in \
        conn.sock.getpeercert()["subjectAltName"]


def test_hsts_and_no_version_in_server_header():
    resp, _body = call("GET", "/v1/models")
    assert resp.status == 200
    assert resp.getheader("Strict-Transport-Security") == "max-age=63072000; includeSubDomains"
    assert resp.getheader("Server") == "nginx"


def test_unknown_names_are_dropped():
    with pytest.raises(ssl.SSLError):
        connect(server_name="evil.example.com").request("GET", "/")
    # A known name in the handshake but a different Host header: closed without an answer.
    with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
        call("GET", "/v1/models", host="evil.example.com")


def served_by(path: str, headers: dict | None = None) -> list[str]:
    _resp, data = call("GET", path, headers=headers)
    return [m["id"] for m in json.loads(data)["data"]]


def test_api_keys_go_to_the_gateway_sso_credentials_to_oauth2_proxy():
    assert served_by("/v1/models", {"Authorization": f"Bearer {API_KEY}"}) == ["via-gateway"]
    # An OIDC JWT or an SSO session cookie: oauth2-proxy.
    assert served_by("/v1/models", {"Authorization": "Bearer eyJhbGciOi.jwt.token"}) == ["via-oauth2"]
    assert served_by("/v1/models", {"Cookie": "_oauth2_proxy=session"}) == ["via-oauth2"]
    wait_for_buckets()
    # An API call with no credential, another scheme or a bearer that is neither: the
    # gateway, whose 401 is JSON and audited (an API client cannot do a browser login).
    assert served_by("/v1/models") == ["via-gateway"]
    assert served_by("/v1/models", {"Authorization": "Basic Zm9vOmJhcg=="}) == ["via-gateway"]
    assert served_by("/v1/models", {"Authorization": "Bearer not-a-key"}) == ["via-gateway"]


def test_client_identity_headers_are_stripped():
    _resp, data = call("GET", "/double/headers", headers={
        "Authorization": f"Bearer {API_KEY}", "X-Forwarded-User": "mallory", "X-Forwarded-Email": "m@evil",
        "X-Forwarded-Groups": "admins", "X-Enclave-Model": "secret-model", "X-Forwarded-For": "1.2.3.4"})
    seen = json.loads(data)
    for header in ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups", "x-enclave-model"):
        assert header not in seen, seen
    assert seen["x-forwarded-for"] != "1.2.3.4" and "1.2.3.4" not in seen["x-forwarded-for"]
    assert len(seen["x-request-id"]) == 32 and seen["host"] == NAME


def test_body_above_1m_gets_413():
    wait_for_buckets()
    resp, data = call("POST", "/v1/chat/completions", body=b"x" * (1024 * 1024 + 10),
                      headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert json.loads(data)["error"]["code"] == 413


def test_streaming_arrives_chunk_by_chunk():
    wait_for_buckets()
    conn = connect()
    body = json.dumps({"model": "via-gateway", "stream": True, "max_tokens": 20,
                       "messages": [{"role": "user", "content": "hi"}]})
    start = time.monotonic()
    conn.request("POST", "/v1/chat/completions", body=body,
                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    arrivals = []
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        arrivals.append(time.monotonic() - start)
    # 20 tokens at 0.1 s each: a buffered proxy would deliver them in one burst at the end.
    print(f"MEASURED {len(arrivals)} reads, first at {arrivals[0]:.3f}s, last at {arrivals[-1]:.3f}s")
    assert len(arrivals) >= 10
    assert arrivals[0] < 0.8 and arrivals[-1] - arrivals[0] > 1.5


def test_per_credential_rate_limit_gives_429_beyond_the_burst():
    wait_for_buckets()
    statuses = []
    conn = connect()
    for _attempt in range(12):
        conn.request("GET", "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    print(f"MEASURED per-credential statuses {statuses}")
    assert statuses[:5] == [200] * 5  # 1 + burst 4
    assert statuses.count(429) >= 5 and set(statuses) == {200, 429}


def test_per_address_rate_limit_gives_429_beyond_the_burst():
    wait_for_buckets()
    statuses = []
    conn = connect()
    for _attempt in range(30):
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        data = resp.read()
        statuses.append(resp.status)
        if resp.status == 429:
            assert json.loads(data)["error"]["type"] == "rate_limit_error"
    print(f"MEASURED per-address statuses {statuses}")
    assert statuses[:16] == [200] * 16  # 1 + burst 15
    assert statuses.count(429) >= 10


def test_json_access_log_has_no_bodies_or_credentials():
    edge = labtest.host("edge-dmz")
    lines = edge.check_output("tail -n 20 /var/log/nginx/enclave-edge.access.json").splitlines()
    records = [json.loads(line) for line in lines]
    assert {"time", "remote_addr", "status", "request_time", "route", "request_id"} <= set(records[-1])
    text = "\n".join(lines)
    assert API_KEY not in text and "ek-" not in text and "messages" not in text


def test_bad_certificates_fail_the_play_and_leave_nginx_serving():
    expired = labtest.run_playbook(extra_vars={"nginx_edge_certificate_file": "/etc/enclave/badcerts/expired.crt",
                                               "nginx_edge_certificate_key_file": "/etc/enclave/badcerts/expired.key"})
    assert expired.rc != 0 and "has EXPIRED" in expired.output, expired.output[-2000:]
    foreign = labtest.run_playbook(extra_vars={"nginx_edge_certificate_file": "/etc/enclave/badcerts/foreign.crt",
                                               "nginx_edge_certificate_key_file": "/etc/enclave/badcerts/foreign.key"})
    assert foreign.rc != 0 and "does not verify against" in foreign.output, foreign.output[-2000:]
    mismatch = labtest.run_playbook(extra_vars={"nginx_edge_certificate_file": "/etc/enclave/badcerts/foreign.crt",
                                                "nginx_edge_certificate_key_file": "/etc/enclave/badcerts/expired.key",
                                                "nginx_edge_certificate_ca_file": "/etc/enclave/badcerts/foreign-ca.crt"})
    assert mismatch.rc != 0 and "does not match" in mismatch.output, mismatch.output[-2000:]
    no_upstream = labtest.run_playbook(extra_vars={"nginx_edge_gateway_upstreams": []})
    assert no_upstream.rc != 0 and "at least one gateway" in no_upstream.output
    resp, _body = call("GET", "/v1/models")
    assert resp.status in (200, 429)
