"""The whole platform on the podman lab, after `make lab` (site.yml on inventories/lab):
a request through the front door (TLS, demo API key, gateway, HAProxy, real vLLM on
CPU) and its audit record on the log host; a second site.yml that changes nothing;
a rolling model update, a restart without drain (the control) and a killed engine,
each under steady load. Load goes to HAProxy's loopback port on app01 only (the
rolling scenario's load generator, molecule/rolling/tests/loadgen.py), bounded in
count and time. Tests depend on the state the previous one left (file order).
Figures are printed for the closing note: run with `make lab-test` (pytest -s).
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

import labtest

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ROOT / ".pki" / "lab"
# The edge answers only its server name (SNI); the controller has no DNS entry
# for it, so the tests connect to its address and name it, as curl --resolve does.
EDGE_NAME, EDGE_IP = "edge01", "10.231.10.10"
LB, COLLECTOR = "enclave-lab-app01", "enclave-lab-store01"
HOSTS = {"infer01": "enclave-lab-infer01", "infer02": "enclave-lab-infer02"}
UNIT = "vllm-tiny-llama.service"
OUT, STOP = "/tmp/load.json", "/tmp/load.stop"
R1, R2 = "/srv/models/tiny-llama/r1", "/srv/model-store/tiny-llama/r2"


class EdgeConnection(http.client.HTTPSConnection):
    """HTTPS to the edge's address with its server name in SNI, Host and the certificate check."""

    def connect(self) -> None:
        sock = socket.create_connection((EDGE_IP, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=EDGE_NAME)


def front_door(key: str | None, content: str = "Hello") -> tuple[int, dict, dict]:
    body = json.dumps({"model": "tiny-llama", "messages": [{"role": "user", "content": content}],
                       "max_tokens": 8}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    context = ssl.create_default_context(cafile=str(SECRETS / "ca.crt"))
    conn = EdgeConnection(EDGE_NAME, 443, timeout=120, context=context)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(raw or b"{}")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def demo_key() -> str:
    return "ek-demo-" + (SECRETS / "demo-api-key").read_text().strip()


@pytest.fixture(scope="module")
def lb():
    """app01, with the load generator, the HAProxy test client it reads the runtime API
    with, and the platform's engine key the clients present to HAProxy."""
    host = labtest.host(LB)
    host.run("mkdir -p /opt/tests")
    for src in ("molecule/rolling/tests/loadgen.py", "molecule/haproxy/tests/lbclient.py"):
        subprocess.run(["podman", "cp", str(ROOT / src), f"{LB}:/opt/tests/{Path(src).name}"], check=True)
    key = (SECRETS / "engine-api-key").read_text().strip()
    assert host.run(f"umask 077 && printf '%s\\n' {key} > /opt/tests/api-key").rc == 0
    return host


def loadgen(lb, *args) -> dict:
    return json.loads(lb.check_output("python3 /opt/tests/loadgen.py " + " ".join(args)))


def start_load(lb, concurrency=4, max_seconds=900):
    lb.run(f"rm -f {OUT} {STOP}")
    lb.run(f"nohup python3 /opt/tests/loadgen.py run --out {OUT} --stop {STOP} --concurrency {concurrency} "
           f"--max-seconds {max_seconds} >/dev/null 2>&1 &")
    time.sleep(3)


def stop_load(lb, timeout=180) -> dict:
    lb.run(f"touch {STOP}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lb.file(OUT).exists:
            return json.loads(lb.file(OUT).content_string)
        time.sleep(1)
    raise AssertionError("the load generator did not finish within its bound")


def engine_pid(name: str) -> int:
    return int(labtest.host(HOSTS[name]).check_output(f"systemctl show -p MainPID --value {UNIT}"))


def served(name: str) -> str:
    return json.loads(labtest.host(HOSTS[name]).check_output("cat /etc/vllm/deployed.json"))["models"][0]["model"]


def test_front_door_answers_and_the_audit_record_reaches_the_log_host(demo_key):
    status, headers, answer = front_door(demo_key)
    assert status == 200, answer
    assert answer["choices"][0]["message"]["content"], answer
    assert answer["usage"]["completion_tokens"] > 0, answer
    rid = headers.get("X-Request-Id")
    assert rid, headers
    collector = labtest.host(COLLECTOR)
    began = time.monotonic()
    found = ""
    while time.monotonic() - began < 60 and not found:
        found = collector.run(f"grep -rl -- {rid} /var/log/enclave-audit").stdout.strip()
        if not found:
            time.sleep(1)
    print(f"front door: completion of {answer['usage']['completion_tokens']} tokens; audit record {rid} at "
          f"store01:{found} after {time.monotonic() - began:.1f} s")
    assert found, f"no audit record {rid} reached store01 within 60 s"
    path = found.splitlines()[0]
    record = json.loads(_record(collector, rid, path))
    assert record["request_id"] == rid
    assert demo_key not in collector.check_output(f"cat {path}")


def _record(collector, rid: str, path: str) -> str:
    line = collector.check_output(f"grep -h -- {rid} {path}").splitlines()[0]
    return line[line.index("{"):]


def test_the_front_door_refuses_a_missing_or_wrong_key(demo_key):
    assert front_door(None)[0] == 401
    assert front_door(demo_key[:-4] + "xxxx")[0] == 401


def test_second_site_run_changes_nothing():
    began = time.monotonic()
    run = labtest.run_playbook("site.yml", timeout=2400)
    took = time.monotonic() - began
    print(f"second site.yml on the lab: {took:.0f} s, changed={run.changed()}")
    assert run.rc == 0, run.output[-4000:]
    changed = {h: c.get("changed") for h, c in run.recap().items() if c.get("changed")}
    assert changed == {}, run.output[-6000:]


def test_both_engines_take_traffic(lb):
    start_load(lb)
    time.sleep(10)
    result = stop_load(lb)
    state = loadgen(lb, "stat")
    assert {s: state[s]["status"] for s in HOSTS} == {"infer01": "UP", "infer02": "UP"}, state
    assert all(state[s]["stot"] > 0 for s in HOSTS), state
    assert result["failed"] == result["truncated"] == 0, result["problems"]


def test_rolling_update_under_load_loses_nothing(lb):
    pids = {h: engine_pid(h) for h in HOSTS}
    start_load(lb)
    began = time.monotonic()
    run = labtest.run_playbook("playbooks/rolling_update.yml", timeout=1500,
                               extra_vars={"rolling_update_model": "tiny-llama", "rolling_update_model_path": R2})
    took = time.monotonic() - began
    time.sleep(5)
    result = stop_load(lb)
    assert run.rc == 0, run.output[-4000:]
    print(f"rolling update r1 -> r2 of {len(HOSTS)} lab hosts under load: {took:.0f} s; {result['requests']} "
          f"requests (stream {result['stream']}, plain {result['plain']}), failed {result['failed']}, "
          f"truncated {result['truncated']}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]
    assert result["requests"] >= 50, result
    for name in HOSTS:
        assert served(name) == R2
        assert engine_pid(name) != pids[name], f"{name}'s engine was not restarted"
    state = loadgen(lb, "stat")
    assert all(state[s]["status"].startswith("UP") for s in HOSTS), state


def test_control_restart_without_drain(lb):
    """The same load, one engine restarted with systemctl and no drain: what the drain saves."""
    pid = engine_pid("infer01")
    start_load(lb)
    time.sleep(5)
    before = loadgen(lb, "stat")["infer01"]
    assert labtest.host(HOSTS["infer01"]).run(f"systemctl restart {UNIT}").rc == 0
    back = loadgen(lb, "wait", "infer01", "UP", "--timeout", "300")
    time.sleep(5)
    result = stop_load(lb)
    print(f"control, restart without drain under load: {result['requests']} requests, failed {result['failed']}, "
          f"truncated {result['truncated']} ({before['scur']} sessions on infer01 at the restart); "
          f"problems: {result['problems'][:3]}")
    assert engine_pid("infer01") != pid
    assert back["seconds"] is not None, back


def test_killed_engine_under_load(lb):
    """SIGKILL of one engine: HAProxy retries requests that got no answer; streams the
    dead engine had started cannot be retried. Reports both, and how long the dead
    host stayed in rotation."""
    start_load(lb)
    time.sleep(5)
    before = loadgen(lb, "stat")["infer02"]
    killed = time.monotonic()
    assert labtest.host(HOSTS["infer02"]).run(f"systemctl kill -s KILL {UNIT}").rc == 0
    down = loadgen(lb, "wait", "infer02", "DOWN", "--timeout", "30")
    back = loadgen(lb, "wait", "infer02", "UP", "--timeout", "400")
    recovered = time.monotonic() - killed
    time.sleep(5)
    result = stop_load(lb)
    print(f"engine killed under load: {result['requests']} requests, failed {result['failed']}, truncated "
          f"{result['truncated']} ({before['scur']} sessions on infer02 at the kill); out of rotation after "
          f"{down['seconds']} s, back after {recovered:.0f} s; problems: {result['problems'][:5]}")
    assert down["seconds"] is not None and down["seconds"] < 10, down
    assert back["seconds"] is not None, "the engine did not come back (Restart=on-failure)"
    assert result["failed"] == 0, result["problems"]
    assert result["truncated"] <= before["scur"], result["problems"]
