"""The whole platform on the podman lab, after `make lab` (site.yml on inventories/lab):
a request through the front door (TLS, demo API key, gateway, HAProxy, real vLLM on
CPU) and its audit record on the log host; refusals (no key, a wrong key, forged
identity headers) and their audit records; the edge's and HAProxy's access logs on
the log host; a second site.yml that changes nothing; a rolling model update, its
refusals, a restart without drain (the control) and a killed engine, each under
steady load.

The load goes through the front door, as users' traffic does: the shared load
generator (molecule/shared/loadgen.py) runs on the controller against
https://edge01 at the edge's address, paced below the edge's and the gateway's
per-credential limits and bounded in count and time; the demo key reaches it in a
0600 file, never on a command line. Its `stat` and `wait` read HAProxy's runtime
socket, so they run on app01 from a copy. Tests depend on the state the previous one
left (file order). Figures are printed for the closing note: run with `make lab-test`
(pytest -s). The failed-smoke and rollback checks restart three more engines, each a
matter of minutes on the lab's two cores: they run only with ENCLAVE_LAB_SLOW=1.
"""
from __future__ import annotations

import http.client
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

import labtest

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / ".pki" / "lab"
LOADGEN = ROOT / "molecule" / "shared" / "loadgen.py"
# The edge answers only its server name (SNI); the controller has no DNS entry
# for it, so the tests connect to its address and name it, as curl --resolve does.
EDGE_NAME, EDGE_IP = "edge01", "10.231.10.10"
LB, COLLECTOR = "enclave-lab-app01", "enclave-lab-store01"
HOSTS = {"infer01": "enclave-lab-infer01", "infer02": "enclave-lab-infer02"}
UNIT = "vllm-tiny-llama.service"
R1, R2 = "/srv/models/tiny-llama/r1", "/srv/model-store/tiny-llama/r2"
R3 = "/srv/model-store/tiny-llama/r3"      # no such revision anywhere
PLAYBOOK = "playbooks/rolling_update.yml"
# The collector files each line under /var/log/enclave-audit/<sending host>/<tag>.log
# (enclave.llm.audit_collector; the tags are enclave.llm.audit_shipping's).
AUDIT_DIR = "/var/log/enclave-audit"
# Request starts a second, all workers together: under the edge's 10 r/s per
# credential and the demo key's 600 a minute at the gateway, so that no 429 is
# counted as a loss.
RATE = 6
SLOW = pytest.mark.skipif(os.environ.get("ENCLAVE_LAB_SLOW") != "1",
                          reason="restarts three more engines; set ENCLAVE_LAB_SLOW=1")


class EdgeConnection(http.client.HTTPSConnection):
    """HTTPS to the edge's address with its server name in SNI, Host and the certificate check."""

    def connect(self) -> None:
        sock = socket.create_connection((EDGE_IP, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=EDGE_NAME)


@dataclass
class Reply:
    status: int
    headers: Message
    body: dict


def front_door(key: str | None, content: str = "Hello", headers: dict | None = None) -> Reply:
    body = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": content}],
                       "max_tokens": 8}).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    context = ssl.create_default_context(cafile=str(SECRETS / "ca.crt"))
    conn = EdgeConnection(EDGE_NAME, 443, timeout=120, context=context)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=sent)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = {"not_json": raw[:300].decode("utf-8", "replace")}
        return Reply(resp.status, resp.headers, answer if isinstance(answer, dict) else {"json": answer})
    finally:
        conn.close()


def inventory_host(group: str) -> str:
    return labtest.hostnames(group)[0]


def collected(needle: str, path: str, timeout: float = 60) -> tuple[str, float]:
    """The first line holding `needle` in a collector file, and the seconds it took to arrive."""
    collector = labtest.host(COLLECTOR)
    began = time.monotonic()
    while True:
        found = collector.run(f"grep -h -F -- {shlex.quote(needle)} {shlex.quote(path)}")
        if found.rc == 0 and found.stdout.strip():
            return found.stdout.splitlines()[0], time.monotonic() - began
        if time.monotonic() - began >= timeout:
            raise AssertionError(f"{needle} did not reach store01:{path} within {timeout:.0f} s")
        time.sleep(1)


def audit_record(rid: str) -> tuple[dict, str, float]:
    """The gateway's audit record of request `rid` on the collector: (record, its line, seconds)."""
    path = f"{AUDIT_DIR}/{inventory_host('gateway')}/enclave-audit.log"
    line, took = collected(rid, path)
    record = json.loads(line[line.index("{"):])
    assert record["request_id"] == rid, line
    return record, line, took


# ----------------------------------------------------------------- the load --
class Load:
    """The load generator on the controller, sending to the front door until stopped or bounded."""

    def __init__(self, key_file: Path, workdir: Path, concurrency: int = 4, max_seconds: float = 900):
        self.out, self.stop, self.log = workdir / "load.json", workdir / "load.stop", workdir / "load.log"
        for path in (self.out, self.stop):
            path.unlink(missing_ok=True)
        self.max_seconds = max_seconds
        cmd = [sys.executable, str(LOADGEN), "run", "--url", f"https://{EDGE_NAME}", "--connect", EDGE_IP,
               "--cafile", str(SECRETS / "ca.crt"), "--key-file", str(key_file), "--out", str(self.out),
               "--stop", str(self.stop), "--concurrency", str(concurrency), "--max-seconds", str(max_seconds),
               "--rate", str(RATE)]
        with open(self.log, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        time.sleep(3)
        assert self.proc.poll() is None, f"the load generator ended at once: {self.log.read_text()[-2000:]}"

    def finish(self, timeout: float = 180) -> dict:
        self.stop.touch()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the load generator did not finish within its bound") from None
        assert rc == 0, self.log.read_text()[-2000:]
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def demo_key() -> str:
    return "ek-demo-" + (SECRETS / "demo-api-key").read_text().strip()


@pytest.fixture(scope="module")
def load_dir(demo_key):
    """A private directory for the load generator's files, with the demo key in a 0600 file."""
    where = Path(tempfile.mkdtemp(prefix="enclave-lab-load-"))
    fd = os.open(where / "api-key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(demo_key + "\n")
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def load(load_dir):
    """Starts the load; whatever the test does, the generator is gone when it ends."""
    started: list[Load] = []

    def start(**kwargs) -> Load:
        started.append(Load(load_dir / "api-key", load_dir, **kwargs))
        return started[-1]

    yield start
    for each in started:
        each.kill()


@pytest.fixture(scope="module")
def lb():
    """app01, with the load generator and the HAProxy test client it reads the runtime API
    with (stat, wait); the load itself comes from the controller."""
    host = labtest.host(LB)
    host.run("mkdir -p /opt/tests")
    for src in ("molecule/shared/loadgen.py", "molecule/haproxy/tests/lbclient.py"):
        subprocess.run(["podman", "cp", str(ROOT / src), f"{LB}:/opt/tests/{Path(src).name}"], check=True)
    return host


def loadgen(lb, *args) -> dict:
    return json.loads(lb.check_output("python3 /opt/tests/loadgen.py " + " ".join(args)))


def busy(lb, server: str, timeout: float = 30) -> dict:
    """HAProxy's view of `server` once it holds a session, so that what follows hits requests in flight."""
    deadline = time.monotonic() + timeout
    while True:
        state = loadgen(lb, "stat")[server]
        if state["scur"] > 0 or time.monotonic() >= deadline:
            assert state["scur"] > 0, f"no request was running on {server} within {timeout:.0f} s: {state}"
            return state
        time.sleep(0.2)


def figures(result: dict) -> str:
    latency = result["latency_s"]["all"]
    return (f"{result['requests']} requests (stream {result['stream']}, plain {result['plain']}), failed "
            f"{result['failed']}, truncated {result['truncated']}, latency p50 {latency['p50']} s p99 "
            f"{latency['p99']} s")


def engine_pid(name: str) -> int:
    return int(labtest.host(HOSTS[name]).check_output(f"systemctl show -p MainPID --value {UNIT}"))


def deployed(name: str, which: str = "deployed") -> str:
    return json.loads(labtest.host(HOSTS[name]).check_output(f"cat /etc/vllm/{which}.json"))["models"][0]["model"]


def all_up(lb) -> dict:
    state = loadgen(lb, "stat")
    assert all(state[s]["status"].startswith("UP") for s in HOSTS), state
    return state


# ---------------------------------------------------------------- the door --
def test_front_door_answers_and_the_audit_record_reaches_the_log_host(demo_key):
    reply = front_door(demo_key)
    assert reply.status == 200, reply.body
    assert reply.body["choices"][0]["message"]["content"], reply.body
    assert reply.body["usage"]["completion_tokens"] > 0, reply.body
    rid = reply.headers.get("X-Request-Id")
    assert rid, reply.headers
    record, line, took = audit_record(rid)
    print(f"front door: completion of {reply.body['usage']['completion_tokens']} tokens; audit record {rid} on "
          f"store01 after {took:.1f} s")
    assert record["status"] == 200 and record["decision"] == "allow", record
    assert record["identity"]["key_id"] == "demo", record
    assert demo_key not in line
    # Read here, not grepped there: the key stays off every command line.
    path = f"{AUDIT_DIR}/{inventory_host('gateway')}/enclave-audit.log"
    assert demo_key.rsplit("-", 1)[-1] not in labtest.host(COLLECTOR).file(path).content_string


# Forged identity headers with no key: the names oauth2-proxy sets (X-Forwarded-*,
# X-Auth-Request-*) and the platform's own (X-Enclave-*). The edge strips them all
# (nginx_edge_strip_headers); the gateway believes them only from the SSO hop.
FORGED = {
    "x-forwarded-user": {"X-Forwarded-User": "mallory", "X-Forwarded-Email": "mallory@lab.internal",
                         "X-Forwarded-Groups": "admins"},
    "x-auth-request-user": {"X-Auth-Request-User": "mallory", "X-Auth-Request-Email": "mallory@lab.internal",
                            "X-Auth-Request-Groups": "admins"},
    "x-enclave-user": {"X-Enclave-User": "mallory", "X-Enclave-Groups": "admins", "X-Enclave-Key-Id": "demo",
                       "X-Enclave-Identity": '{"kind": "api_key", "user": "mallory", "key_id": "demo"}'},
}


@pytest.mark.parametrize(("key", "headers"), [
    pytest.param(None, None, id="no key"),
    pytest.param("wrong", None, id="wrong key"),
    *(pytest.param(None, forged, id=f"forged {name}, no key") for name, forged in FORGED.items()),
])
def test_the_front_door_refuses_and_audits_the_refusal(demo_key, key, headers):
    """Every refusal is a JSON 401 from the gateway, and its audit record reaches the log host."""
    wrong = demo_key[:-4] + "xxxx"
    reply = front_door(wrong if key == "wrong" else None, headers=headers)
    assert reply.status == 401, (reply.status, reply.body)
    assert reply.body.get("error", {}).get("code") == "invalid_api_key", reply.body
    rid = reply.headers.get("X-Request-Id")
    assert rid, f"the 401 carries no X-Request-Id (no gateway behind it?): {dict(reply.headers)}"
    record, line, took = audit_record(rid)
    print(f"refusal ({'wrong key' if key else sorted(headers or {}) or 'no key'}): 401, audit record {rid} on "
          f"store01 after {took:.1f} s, reason {record.get('reason')}")
    assert record["status"] == 401 and record["decision"] == "block", record
    assert "identity" not in record and "subject" not in record, record
    assert "mallory" not in line and "admins" not in line
    assert wrong.rsplit("-", 1)[-1] not in line
    if key == "wrong":
        assert record["reason"] == "wrong_key", record
    else:
        # Stripped at the edge: the gateway sees no credential at all. Were a header to
        # slip through, the gateway would still refuse it (untrusted_identity_headers).
        assert record["reason"] == "no_key", record


def test_the_access_logs_of_the_edge_and_haproxy_reach_the_log_host(demo_key):
    marker = f"enclave-lab-test/{uuid.uuid4().hex}"
    reply = front_door(demo_key, headers={"User-Agent": marker})
    assert reply.status == 200, reply.body
    rid = reply.headers.get("X-Request-Id")
    # The edge's JSON access log (tag nginx-access) names the request by its user agent.
    edge_line, edge_took = collected(marker, f"{AUDIT_DIR}/{inventory_host('edge')}/nginx-access.log")
    edge = json.loads(edge_line[edge_line.index("{"):])
    assert edge["status"] == 200 and edge["route"] == "enclave_gateway", edge
    assert edge["tls_protocol"] == "TLSv1.3" and edge["path"] == "/v1/chat/completions", edge
    # HAProxy's log (tag haproxy-access) carries the gateway's request id, the one the answer names.
    lb_line, lb_took = collected(f'request_id="{rid}"', f"{AUDIT_DIR}/{inventory_host('balancer')}/haproxy-access.log")
    assert " 200 " in lb_line and 'model="tiny-llama"' in lb_line, lb_line
    print(f"access logs on store01: edge's after {edge_took:.1f} s, HAProxy's after {lb_took:.1f} s")
    assert demo_key not in edge_line + lb_line


def test_second_site_run_changes_nothing():
    began = time.monotonic()
    run = labtest.run_playbook("site.yml", timeout=2400)
    took = time.monotonic() - began
    print(f"second site.yml on the lab: {took:.0f} s, changed={run.changed()}")
    assert run.rc == 0, run.output[-4000:]
    changed = {h: c.get("changed") for h, c in run.recap().items() if c.get("changed")}
    assert changed == {}, run.output[-6000:]


# ------------------------------------------------------- under steady load --
def test_both_engines_take_traffic(lb, load):
    running = load()
    time.sleep(10)
    result = running.finish()
    state = loadgen(lb, "stat")
    print(f"warm-up through the front door: {figures(result)}")
    assert {s: state[s]["status"] for s in HOSTS} == {"infer01": "UP", "infer02": "UP"}, state
    assert all(state[s]["stot"] > 0 for s in HOSTS), state
    assert result["failed"] == result["truncated"] == 0, result["problems"]
    assert result["tls_versions"] == ["TLSv1.3"], result


def test_rolling_update_under_load_loses_nothing(lb, load):
    pids = {h: engine_pid(h) for h in HOSTS}
    # Bounded above the playbook's own limit, so that the load covers the whole update.
    running = load(max_seconds=1700)
    began = time.monotonic()
    run = labtest.run_playbook(PLAYBOOK, timeout=1500,
                               extra_vars={"rolling_update_model": "tiny-llama", "rolling_update_model_path": R2})
    took = time.monotonic() - began
    time.sleep(5)
    result = running.finish()
    assert run.rc == 0, run.output[-4000:]
    print(f"rolling update r1 -> r2 of {len(HOSTS)} lab hosts under load through the front door: {took:.0f} s; "
          f"{figures(result)}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]
    assert result["requests"] >= 50 and result["stopped_by"] == "stop file", result
    for name, container in HOSTS.items():
        assert deployed(name) == R2
        assert engine_pid(name) != pids[name], f"{name}'s engine was not restarted"
        # What a rollback returns to is kept, with its weights.
        assert deployed(name, "previous") == R1
        assert labtest.host(container).file(f"{R1}/config.json").exists
    all_up(lb)


def test_second_rolling_update_leaves_served_hosts_alone(lb):
    pids = {h: engine_pid(h) for h in HOSTS}
    run = labtest.run_playbook(PLAYBOOK, timeout=900,
                               extra_vars={"rolling_update_model": "tiny-llama", "rolling_update_model_path": R2})
    assert run.rc == 0, run.output[-3000:]
    assert run.changed() == 0, run.output[-3000:]
    assert {h: engine_pid(h) for h in HOSTS} == pids
    all_up(lb)


def test_missing_weights_fail_before_anything_changes(lb):
    pids = {h: engine_pid(h) for h in HOSTS}
    run = labtest.run_playbook(PLAYBOOK, timeout=900,
                               extra_vars={"rolling_update_model": "tiny-llama", "rolling_update_model_path": R3})
    assert run.rc != 0
    assert f"infer01 lacks {R3}" in run.output, run.output[-3000:]
    assert "infer02" not in run.recap(), run.output[-3000:]
    assert {h: engine_pid(h) for h in HOSTS} == pids
    assert {h: deployed(h) for h in HOSTS} == {"infer01": R2, "infer02": R2}
    all_up(lb)


@SLOW
def test_failed_smoke_stops_the_rollout_and_leaves_the_host_drained(lb, load):
    """Back to r1 with a smoke prompt the random-weight model cannot pass: infer01 is
    drained, updated and restarted, fails its smoke test and stays out of rotation;
    infer02 is never touched and serves every request meanwhile."""
    pid2 = engine_pid("infer02")
    running = load(max_seconds=1700)
    run = labtest.run_playbook(PLAYBOOK, timeout=1500, extra_vars={
        "rolling_update_model": "tiny-llama", "rolling_update_model_path": R1,
        "rolling_update_smoke_prompts": [{"prompt": "The capital of France is", "max_tokens": 4,
                                          "expect": "Paris"}]})
    result = running.finish()
    assert run.rc != 0
    assert "failed the smoke test" in run.output and "does not match 'Paris'" in run.output, run.output[-3000:]
    assert "The host stays drained" in run.output
    assert "infer02" not in run.recap(), run.output[-3000:]
    assert engine_pid("infer02") == pid2
    assert deployed("infer02") == R2
    state = loadgen(lb, "stat")
    assert state["infer01"]["status"] == "MAINT" and state["infer02"]["status"].startswith("UP"), state
    print(f"failed smoke on infer01 under load through the front door: {figures(result)}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]


@SLOW
def test_rollback_returns_each_host_to_its_kept_version_under_load(lb, load):
    """infer01 kept r2 when the failed update replaced it, infer02 kept r1: the rollback
    brings infer01 back into rotation on r2 and moves infer02 to r1, losing nothing."""
    running = load(max_seconds=1700)
    run = labtest.run_playbook(PLAYBOOK, timeout=1500, extra_vars={"rollback": True})
    time.sleep(5)
    result = running.finish()
    assert run.rc == 0, run.output[-4000:]
    print(f"rollback under load through the front door: {figures(result)}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]
    assert deployed("infer01") == R2 and deployed("infer02") == R1
    all_up(lb)


def test_control_restart_without_drain(lb, load):
    """The same load, one engine restarted with systemctl and no drain: what the drain saves."""
    pid = engine_pid("infer01")
    running = load()
    before = busy(lb, "infer01")
    assert labtest.host(HOSTS["infer01"]).run(f"systemctl restart {UNIT}").rc == 0
    back = loadgen(lb, "wait", "infer01", "UP", "--timeout", "300")
    time.sleep(5)
    result = running.finish()
    print(f"control, restart without drain under load through the front door: {figures(result)} "
          f"({before['scur']} sessions on infer01 at the restart); problems: {result['problems'][:3]}")
    assert engine_pid("infer01") != pid
    assert back["seconds"] is not None, back


def test_killed_engine_under_load(lb, load):
    """SIGKILL of one engine: HAProxy retries requests that got no answer; streams the
    dead engine had started cannot be retried. Reports both, and how long the dead
    host stayed in rotation."""
    running = load()
    before = busy(lb, "infer02")
    killed = time.monotonic()
    assert labtest.host(HOSTS["infer02"]).run(f"systemctl kill -s KILL {UNIT}").rc == 0
    down = loadgen(lb, "wait", "infer02", "DOWN", "--timeout", "30")
    back = loadgen(lb, "wait", "infer02", "UP", "--timeout", "400")
    recovered = time.monotonic() - killed
    time.sleep(5)
    result = running.finish()
    print(f"engine killed under load through the front door: {figures(result)} ({before['scur']} sessions on "
          f"infer02 at the kill); out of rotation after {down['seconds']} s, back after {recovered:.0f} s; "
          f"problems: {result['problems'][:5]}")
    assert down["seconds"] is not None and down["seconds"] < 10, down
    assert back["seconds"] is not None, "the engine did not come back (Restart=on-failure)"
    # Only answers already under way on the dead engine may be lost: no failure before a
    # response started, and no more losses than sessions it held.
    assert result["failed"] == 0, result["problems"]
    assert result["truncated"] <= before["scur"], result["problems"]
