"""molecule/shared/loadgen.py, the stack tests' load generator, against a TEST DOUBLE of
an OpenAI-style completions server on 127.0.0.1 (plain HTTP, and HTTPS with a
self-signed certificate for edge01 made with the openssl CLI): the checks of every
answer, the bounds, the stop file, the summary, and the front-door mode (connect to
one address, name another in SNI, Host and the certificate check)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "molecule" / "shared" / "loadgen.py"
_spec = importlib.util.spec_from_file_location("loadgen", SCRIPT)
loadgen = importlib.util.module_from_spec(_spec)
sys.modules["loadgen"] = loadgen      # dataclasses look their module up there
_spec.loader.exec_module(loadgen)

KEY = "ek-demo-unit-secret"


class CompletionsDouble(ThreadingHTTPServer):
    """TEST DOUBLE: answers POST /v1/completions as vLLM does with ignore_eos (exactly
    max_tokens tokens, streamed with a usage event and [DONE] when asked), or with the
    fault in `mode`; records each request's Host, Authorization and path, and (HTTPS)
    the SNI names of the handshakes."""

    daemon_threads = True

    def __init__(self, mode: str = "ok", context: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.seen: list[dict] = []
        self.sni: list[str | None] = []
        self.lock = threading.Lock()
        if context is not None:
            context.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    server: CompletionsDouble

    def log_message(self, *_args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.seen.append({"host": self.headers["Host"], "authorization": self.headers["Authorization"],
                                     "path": self.path, "body": body})
        mode = self.server.mode
        if self.headers["Authorization"] != f"Bearer {KEY}":
            return self._send(401, b'{"error": {"message": "invalid API key"}}')
        if mode == "503":
            return self._send(503, b'{"error": {"message": "no server available"}}')
        tokens = body["max_tokens"] - (1 if mode == "short" else 0)
        usage = {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": tokens + 3}
        if not body.get("stream"):
            return self._send(200, json.dumps({"choices": [{"text": "x " * tokens}], "usage": usage}).encode())
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for _token in range(tokens):
            self.wfile.write(b'data: {"choices": [{"text": " x"}]}\n\n')
        if mode != "no-usage":
            self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
        if mode != "no-done":
            self.wfile.write(b"data: [DONE]\n\n")

    def _send(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(mode: str = "ok", context: ssl.SSLContext | None = None) -> CompletionsDouble:
    server = CompletionsDouble(mode, context)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def double():
    servers: list[CompletionsDouble] = []

    def start(mode: str = "ok", context: ssl.SSLContext | None = None) -> CompletionsDouble:
        servers.append(serve(mode, context))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "api-key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def edge_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for the name edge01 only (its own CA)."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl CLI")
    where = tmp_path_factory.mktemp("pki")
    cert, key = where / "edge01.crt", where / "edge01.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=edge01",
                    "-addext", "subjectAltName=DNS:edge01", "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    return cert, key


def edge_context(edge_cert) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3     # as the edge: TLS 1.3 only
    context.load_cert_chain(*map(str, edge_cert))
    return context


def run(tmp_path, key_file, *args: str) -> dict:
    out, stop = tmp_path / "load.json", tmp_path / "load.stop"
    argv = ["run", "--out", str(out), "--stop", str(stop), "--key-file", str(key_file), "--pause", "0",
            "--max-tokens", "5", "--concurrency", "4", "--max-seconds", "5", *args]
    assert loadgen.main(argv) == 0
    summary = json.loads(out.read_text())
    assert not (tmp_path / "load.json.tmp").exists()
    return summary


def test_plain_http_answers_are_counted_and_timed(tmp_path, key_file, double):
    server = double()
    # --connect with a plain URL: the address is dialled, the URL's host is named in Host.
    summary = run(tmp_path, key_file, "--url", f"http://lab.internal:{server.port}", "--connect", "127.0.0.1",
                  "--max-requests", "12", "--model", "other-model")
    assert (summary["requests"], summary["ok"], summary["failed"], summary["truncated"]) == (12, 12, 0, 0)
    assert summary["stream"]["ok"] + summary["plain"]["ok"] == 12
    assert summary["stream"]["ok"] > 0 and summary["plain"]["ok"] > 0
    assert summary["problems"] == [] and summary["stopped_by"] == "bound"
    latency = summary["latency_s"]
    assert latency["all"]["n"] == 12 and 0 < latency["all"]["p50"] <= latency["all"]["p99"] <= latency["all"]["max"]
    assert latency["stream"]["n"] + latency["plain"]["n"] == 12
    assert summary["tls_versions"] == []
    assert len(server.seen) == 12
    assert {s["host"] for s in server.seen} == {f"lab.internal:{server.port}"}
    assert {s["authorization"] for s in server.seen} == {f"Bearer {KEY}"}
    assert {s["path"] for s in server.seen} == {"/v1/completions"}
    assert {s["body"]["model"] for s in server.seen} == {"other-model"}
    assert all(s["body"]["ignore_eos"] and s["body"]["max_tokens"] == 5 for s in server.seen)
    streamed = [s["body"] for s in server.seen if s["body"]["stream"]]
    assert streamed and all(b["stream_options"] == {"include_usage": True} for b in streamed)


def test_front_door_mode_connects_to_the_address_and_names_the_edge(tmp_path, key_file, double, edge_cert):
    server = double(context=edge_context(edge_cert))
    summary = run(tmp_path, key_file, "--url", f"https://edge01:{server.port}", "--connect", "127.0.0.1",
                  "--cafile", str(edge_cert[0]), "--max-requests", "8")
    assert (summary["requests"], summary["ok"]) == (8, 8), summary["problems"]
    assert summary["tls_versions"] == ["TLSv1.3"]
    assert set(server.sni) == {"edge01"} and len(server.sni) == 8     # one handshake per request
    assert {s["host"] for s in server.seen} == {f"edge01:{server.port}"}


def test_front_door_mode_verifies_the_certificate(tmp_path, key_file, double, edge_cert):
    server = double(context=edge_context(edge_cert))
    # Without --cafile the system's CAs do not know the lab's: every request fails, none reaches the server.
    summary = run(tmp_path, key_file, "--url", f"https://edge01:{server.port}", "--connect", "127.0.0.1",
                  "--max-requests", "4")
    assert (summary["requests"], summary["failed"]) == (4, 4)
    assert "CERTIFICATE_VERIFY_FAILED" in summary["problems"][0]["detail"]
    assert server.seen == []


@pytest.mark.parametrize(("mode", "outcome", "detail"), [
    ("503", "failed", "HTTP 503"),
    ("short", "truncated", "4 of 5 tokens"),
    ("no-done", "truncated", "without [DONE]"),
    ("no-usage", "truncated", "without its usage event"),
])
def test_faults_are_told_apart(tmp_path, key_file, double, mode, outcome, detail):
    server = double(mode)
    summary = run(tmp_path, key_file, "--url", f"http://127.0.0.1:{server.port}", "--max-requests", "6")
    assert summary["requests"] == 6
    bad = summary["stream"][outcome] if mode.startswith("no-") else summary[outcome]
    assert bad > 0 and summary["ok"] == summary["requests"] - summary["failed"] - summary["truncated"]
    assert any(detail in p["detail"] for p in summary["problems"]), summary["problems"]
    if mode in ("503", "short"):
        assert summary[outcome] == 6 and summary["latency_s"]["all"]["n"] == 0


def test_a_wrong_key_is_a_failure(tmp_path, double):
    server = double()
    wrong = tmp_path / "wrong-key"
    wrong.write_text("ek-demo-wrong\n")
    summary = run(tmp_path, wrong, "--url", f"http://127.0.0.1:{server.port}", "--max-requests", "2")
    assert summary["failed"] == 2 and "HTTP 401" in summary["problems"][0]["detail"]


def test_the_stop_file_and_the_time_bound_end_it(tmp_path, key_file, double):
    server = double()
    (tmp_path / "load.stop").touch()
    summary = run(tmp_path, key_file, "--url", f"http://127.0.0.1:{server.port}")
    assert summary["requests"] == 0 and summary["stopped_by"] == "stop file"
    (tmp_path / "load.stop").unlink()
    summary = run(tmp_path, key_file, "--url", f"http://127.0.0.1:{server.port}", "--max-seconds", "0.5",
                  "--rate", "20")
    assert summary["stopped_by"] == "bound" and summary["seconds"] < 2.5
    assert 1 <= summary["requests"] <= 12     # paced: 20 a second for half a second, and the first slot


def test_nothing_listening_is_a_failure(tmp_path, key_file):
    summary = run(tmp_path, key_file, "--url", "http://127.0.0.1:9", "--max-requests", "2")
    assert summary["failed"] == 2 and "ConnectionRefusedError" in summary["problems"][0]["detail"]


def test_run_needs_no_lbclient_and_takes_no_key_on_its_command_line(tmp_path, key_file, double):
    """The controller runs it as a script, with no HAProxy test client beside it."""
    server = double()
    out = tmp_path / "load.json"
    base = [sys.executable, "-I", str(SCRIPT), "run", "--out", str(out), "--stop", str(tmp_path / "stop"),
            "--url", f"http://127.0.0.1:{server.port}", "--max-requests", "2", "--concurrency", "2",
            "--pause", "0", "--max-tokens", "3"]
    argv = [*base, "--key-file", str(key_file)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"] == 2 == json.loads(out.read_text())["ok"]
    assert KEY not in " ".join(argv) + proc.stdout + proc.stderr
    missing = subprocess.run([*base, "--key-file", str(tmp_path / "absent")], capture_output=True, text=True,
                             timeout=30, check=False)
    assert missing.returncode == 2 and "absent" in missing.stderr


@pytest.mark.parametrize(("status", "data", "stream", "expected"), [
    (200, '{"usage": {"completion_tokens": 5}}', False, "ok"),
    (200, '{"usage": {"completion_tokens": 4}}', False, "truncated"),
    (200, '{"usage": {"complet', False, "truncated"),
    (200, '{"choices": []}', False, "truncated"),
    (429, '{"error": {"message": "rate limit exceeded"}}', False, "failed"),
    (200, 'data: {"choices": []}\n\ndata: {"usage": {"completion_tokens": 5}}\n\ndata: [DONE]\n\n', True, "ok"),
    (200, 'data:{"usage": {"completion_tokens": 5}}\n\ndata:[DONE]\n\n', True, "ok"),
    (200, 'data: {"usage": {"completion_tokens": 5}}\n\n', True, "truncated"),
    (200, "data: [DONE]\n\n", True, "truncated"),
    (200, "", True, "truncated"),
    (502, "", True, "failed"),
])
def test_check(status, data, stream, expected):
    assert loadgen.check(status, data, stream, 5)[0] == expected


@pytest.mark.parametrize(("values", "expected"), [
    ([], {"n": 0, "p50": None, "p99": None, "max": None}),
    ([0.5], {"n": 1, "p50": 0.5, "p99": 0.5, "max": 0.5}),
    ([float(i) for i in range(1, 101)], {"n": 100, "p50": 50.0, "p99": 99.0, "max": 100.0}),
    ([3.0, 1.0, 2.0], {"n": 3, "p50": 2.0, "p99": 3.0, "max": 3.0}),
])
def test_percentiles(values, expected):
    assert loadgen.percentiles(values) == expected


@pytest.mark.parametrize(("url", "connect", "expected"), [
    ("http://127.0.0.1:8080", None, ("http", "127.0.0.1", 8080, "127.0.0.1", "/v1/completions")),
    ("https://edge01", "10.231.10.10", ("https", "edge01", 443, "10.231.10.10", "/v1/completions")),
    ("https://edge01:8443/", None, ("https", "edge01", 8443, "edge01", "/v1/completions")),
    ("http://lb/prefix", None, ("http", "lb", 80, "lb", "/prefix/v1/completions")),
])
def test_target(url, connect, expected):
    target = loadgen.Target.parse(url, connect)
    assert (target.scheme, target.host, target.port, target.address, target.path) == expected
    assert (target.context is not None) == (target.scheme == "https")


@pytest.mark.parametrize("url", ["edge01:443", "ftp://edge01", "https://"])
def test_target_refuses_what_is_not_an_http_url(url):
    with pytest.raises(ValueError):
        loadgen.Target.parse(url)
