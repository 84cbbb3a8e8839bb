"""Behaviour of enclave.llm.haproxy: one balancer (hap-lb) and three inference
hosts running the OpenAI-compatible backend DOUBLE (tests/doubles/openai_backend.py,
a stand-in for vLLM; real vLLM is not run here).

hap-b1: tiny-llama :8000, qwen-mini :8001; hap-b2: tiny-llama :8000;
hap-b3: tiny-llama :8000, qwen-mini :8001. Requests are sent from hap-lb itself
(HAProxy listens on loopback) with /opt/tests/lbclient.py. Tests run in file order;
each leaves every backend healthy.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import labtest

LB = "hap-lb"
TINY, QWEN = "model2_tiny-llama", "model1_qwen-mini"
BACKEND_HOSTS = {"hap-b1": {TINY: 8000, QWEN: 8001}, "hap-b2": {TINY: 8000}, "hap-b3": {TINY: 8000, QWEN: 8001}}


MEASURED = Path(labtest.SCENARIO_DIR).parents[1] / "tests" / "output" / "molecule" / "haproxy-measured.txt"


def measured(line: str) -> None:
    """Print a measurement and keep it in tests/output/molecule/haproxy-measured.txt."""
    print(f"MEASURED {line}")
    MEASURED.parent.mkdir(parents=True, exist_ok=True)
    with MEASURED.open("a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}\n")


def client(*args: str, timeout: int = 120) -> dict:
    cmd = ["podman", "exec", LB, "python3", "/opt/tests/lbclient.py", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    return json.loads(out)


def client_background(*args: str) -> subprocess.Popen:
    cmd = ["podman", "exec", LB, "python3", "/opt/tests/lbclient.py", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: int = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def on_backend(host: str, script: str) -> str:
    return subprocess.run(["podman", "exec", host, "sh", "-c", script], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def servers(backend: str) -> dict[str, dict]:
    return {row["svname"]: row for row in client("stat") if row["pxname"] == backend
            and row["svname"] not in ("FRONTEND", "BACKEND")}


def wait_state(backend: str, server: str, state: str, timeout: float = 15) -> float:
    result = client("watch", backend, server, state, "--timeout", str(timeout), timeout=int(timeout) + 30)
    assert result["time"], f"{backend}/{server} did not become {state} within {timeout}s"
    return result["time"]


def all_up() -> None:
    for backend in (TINY, QWEN):
        for name in servers(backend):
            wait_state(backend, name, "UP", timeout=20)


def test_haproxy_runs_with_a_root_only_runtime_socket():
    lb = labtest.host(LB)
    assert lb.service("haproxy").is_running
    sock = lb.file("/run/haproxy/admin.sock")
    assert sock.is_socket and sock.user == "root" and sock.mode == 0o600
    assert lb.run("su -s /bin/sh -c 'test -w /run/haproxy/admin.sock' nobody").rc != 0


def test_backends_are_generated_from_the_inventory():
    all_up()
    assert set(servers(TINY)) == {"hap-b1", "hap-b2", "hap-b3"}
    assert set(servers(QWEN)) == {"hap-b1", "hap-b3"}
    assert all(row["check_status"] == "L7OK" for b in (TINY, QWEN) for row in servers(b).values())


def test_requests_reach_only_hosts_serving_the_model():
    before = {b: {s: int(r["stot"]) for s, r in servers(b).items()} for b in (TINY, QWEN)}
    for model in ("tiny-llama", "qwen-mini"):
        for _attempt in range(9):
            out = client("request", model)
            assert out["status"] == 200, out
            assert json.loads(out["body"])["model"] == model
    # Body routing (no header): the gateway normally sets the header.
    out = client("request", "qwen-mini", "--no-header")
    assert out["status"] == 200 and json.loads(out["body"])["model"] == "qwen-mini"
    after = {b: {s: int(r["stot"]) for s, r in servers(b).items()} for b in (TINY, QWEN)}
    assert sum(after[TINY].values()) - sum(before[TINY].values()) == 9
    assert sum(after[QWEN].values()) - sum(before[QWEN].values()) == 10
    # leastconn spreads sequential requests over every server of the model.
    assert all(after[TINY][s] > before[TINY][s] for s in after[TINY])


def test_header_wins_over_body_and_unknown_model_gets_openai_404():
    # Header qwen-mini, body tiny-llama: HAProxy routes on the header, so a qwen-mini-only
    # server answers (and its double says it has no tiny-llama).
    before = sum(int(r["stot"]) for r in servers(QWEN).values())
    out = client("request", "qwen-mini", "--body-model", "tiny-llama")
    assert out["status"] == 404 and "tiny-llama" in out["body"] and out["headers"]["server"] == "openai-backend-double"
    assert sum(int(r["stot"]) for r in servers(QWEN).values()) == before + 1
    out = client("request", 'no-such"model')
    assert out["status"] == 404
    error = json.loads(out["body"])["error"]
    assert error["type"] == "NotFoundError" and 'no-such"model' in error["message"]
    out = client("request", "nothing", "--no-header", "--body-model", "")
    assert out["status"] == 404


def test_prometheus_endpoint_and_request_logs():
    lb = labtest.host(LB)
    metrics = lb.check_output("python3 -c \"import urllib.request;print(urllib.request.urlopen("
                              "'http://127.0.0.1:8404/metrics').read().decode())\"")
    assert f'haproxy_server_status{{proxy="{TINY}",server="hap-b1",state="UP"}} 1' in metrics
    assert "haproxy_backend_active_servers" in metrics
    logs = lb.check_output("journalctl -t haproxy --no-pager -n 200")
    assert f"{TINY}/hap-" in logs and 'model="tiny-llama"' in logs
    line = next(x for x in logs.splitlines() if 'model="tiny-llama"' in x)
    assert " 200 " in line and "/" in line.split(f"{TINY}/")[1]


def test_stopping_a_backend_under_load_costs_no_client_errors_and_removes_it_within_3s():
    all_up()
    load = client_background("load", "tiny-llama", "--seconds", "10", "--concurrency", "4")
    watch = client_background("watch", TINY, "hap-b2", "DOWN", "--timeout", "12")
    time.sleep(3)
    stopped = float(on_backend("hap-b2", "date +%s.%N; systemctl stop openai-backend-double-8000"))
    down = finish(watch)["time"]
    result = finish(load)
    removal = down - stopped if down else None
    measured(f"removal of a stopped backend: {None if removal is None else round(removal, 3)} s after stop; "
             f"load loop: {result}")
    assert result["errors"] == 0, result
    assert result["ok"] > 50, result
    assert removal is not None and removal < 3.0, removal
    # Back: rise checks, then slowstart ramps the weight.
    on_backend("hap-b2", "systemctl start openai-backend-double-8000")
    ramp = client("ramp", TINY, "hap-b2", "--timeout", "30", timeout=90)
    weights = ramp["samples"]
    measured(f"slowstart weights (seconds after UP, weight): {weights}")
    ramp = [w for _offset, w in weights]
    assert ramp[0] < 100 and ramp[-1] == 100 and ramp == sorted(ramp), weights


def test_a_backend_that_stops_listing_the_model_is_taken_out():
    all_up()
    on_backend("hap-b3", "printf 'some-other-model\\n' > /run/double-8000/models")
    try:
        wait_state(TINY, "hap-b3", "DOWN", timeout=10)
        row = servers(TINY)["hap-b3"]
        assert row["check_status"] in ("L7RSP", "L7STS"), row
        for _attempt in range(6):
            assert client("request", "tiny-llama")["status"] == 200
    finally:
        on_backend("hap-b3", "rm -f /run/double-8000/models")
    wait_state(TINY, "hap-b3", "UP", timeout=20)
    on_backend("hap-b1", "touch /run/double-8001/unhealthy")
    try:
        wait_state(QWEN, "hap-b1", "DOWN", timeout=10)
        assert servers(QWEN)["hap-b1"]["check_status"] == "L7STS"
    finally:
        on_backend("hap-b1", "rm -f /run/double-8001/unhealthy")
    wait_state(QWEN, "hap-b1", "UP", timeout=20)


def test_drain_through_the_runtime_api_lets_streams_finish():
    all_up()
    stream = client_background("request", "qwen-mini", "--stream", "--max-tokens", "80")  # ~4 s
    busy = None
    for _attempt in range(50):
        busy = next((s for s, r in servers(QWEN).items() if int(r["scur"] or 0) > 0), None)
        if busy:
            break
        time.sleep(0.1)
    assert busy, "the stream never reached a server"
    other = next(s for s in servers(QWEN) if s != busy)
    client("cmd", f"set server {QWEN}/{busy} state drain")
    try:
        assert servers(QWEN)[busy]["status"] == "DRAIN"
        before = int(servers(QWEN)[busy]["stot"])
        for _attempt in range(6):
            assert client("request", "qwen-mini")["status"] == 200
        assert int(servers(QWEN)[busy]["stot"]) == before
        result = finish(stream)
        assert result["status"] == 200 and result["body"].rstrip().endswith("data: [DONE]")
        assert result["body"].count("data: ") == 80 + 2
        assert len(result["arrivals"]) > 10, "the stream arrived in one piece, not chunk by chunk"
        assert int(servers(QWEN)[other]["stot"]) > 0
    finally:
        client("cmd", f"set server {QWEN}/{busy} state ready")


def test_a_full_queue_answers_503_with_retry_after():
    all_up()
    # qwen-mini: 2 servers x maxconn 2 = 4 in service, 3 may queue, the queue waits 2 s.
    result = client("concurrent", "qwen-mini", "--count", "12", "--max-tokens", "60")["results"]
    statuses = sorted(r["status"] for r in result)
    measured(f"queue test statuses: {statuses}")
    assert set(statuses) <= {200, 503}, result
    assert statuses.count(200) >= 4 and statuses.count(503) >= 5, statuses
    for r in result:
        if r["status"] == 503:
            assert r["retry_after"] == "5"
            assert json.loads(r["body"])["error"]["code"] == 503


def test_bad_inventory_fails_clearly_and_leaves_haproxy_running():
    odd = labtest.run_playbook(extra_vars={"vllm_models": [{"name": "tiny llama;drop", "port": 8000}]})
    assert odd.rc != 0
    assert "model name 'tiny llama;drop' has characters outside" in odd.output
    empty = labtest.run_playbook(extra_vars={"haproxy_inference_group": "zone_nothing"})
    assert empty.rc != 0 and "no inference backends" in empty.output
    assert client("request", "tiny-llama")["status"] == 200
