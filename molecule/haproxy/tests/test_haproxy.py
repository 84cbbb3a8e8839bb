"""Behaviour of enclave.llm.haproxy: one balancer (hap-lb) and three inference
hosts running the OpenAI-compatible backend DOUBLE (tests/doubles/openai_backend.py,
a stand-in for vLLM; real vLLM is not run here).

hap-b1: tiny-llama :8000, qwen-mini :8001; hap-b2: tiny-llama :8000;
hap-b3: tiny-llama :8000, qwen-mini :8001. The doubles on hap-b1 and hap-b3 require
an API key on /v1/* (like vLLM with --api-key), read from their root-only key files;
hap-b2's runs without one. hap-b2 also runs the Ollama-protocol DOUBLE
(tests/doubles/ollama_double.py, a stand-in for Ollama; real Ollama is not run here)
on 11434 with llama3.2:1b and tinyllama pulled. Requests are sent from hap-lb itself
(HAProxy listens on loopback) with /opt/tests/lbclient.py, which presents the
upstream key like the gateway does. Tests run in file order; each leaves every
backend healthy.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import labtest

LB = "hap-lb"
# Backends are numbered in model order: llama3.2:1b, qwen-mini, tiny-llama, tinyllama.
LLAMA_OLLAMA, QWEN, TINY, TINY_OLLAMA = "model1_llama3.2:1b", "model2_qwen-mini", "model3_tiny-llama", "model4_tinyllama"
KEY_MAP = "/etc/haproxy/check-keys.map"
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


def open_files(limits: str) -> tuple[int, int]:
    """Soft and hard "Max open files" of a /proc/<pid>/limits text."""
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_haproxy_runs_with_the_open_file_limit_its_maxconn_needs():
    lb = labtest.host(LB)
    dropin = lb.file("/etc/systemd/system/haproxy.service.d/enclave.conf").content_string
    nofile = int(next(line.split("=", 1)[1] for line in dropin.splitlines() if line.startswith("LimitNOFILE=")))
    # maxconn 400: 2 x 400 plus 8 pipe fds, at least 64 threads x 3, 3 listeners and 7 checked servers.
    assert 800 + 8 + 3 * 64 + 3 + 7 <= nofile <= open_files(lb.check_output("cat /proc/1/limits"))[1]
    pid = lb.check_output("systemctl show -p MainPID --value haproxy").strip()
    soft, hard = open_files(lb.check_output(f"cat /proc/{pid}/limits"))
    # The unit's hard limit; HAProxy raised its soft limit to what it needs, no higher.
    assert hard == nofile and 800 < soft <= nofile


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


def test_a_maxconn_beyond_the_hosts_open_file_limit_fails_with_the_numbers():
    result = labtest.run_playbook(extra_vars={"haproxy_global_maxconn": 100000})
    assert result.rc != 0
    assert "haproxy_global_maxconn 100000 needs" in result.output
    pid1_hard = open_files(labtest.host(LB).check_output("cat /proc/1/limits"))[1]
    assert f"at most {pid1_hard} (hard limit of PID 1" in result.output
    assert "lower haproxy_global_maxconn to at most" in result.output
    assert client("request", "tiny-llama")["status"] == 200


# ------------------------------------------------- health checks with the engine's API key

def http_status(host: str, url: str, method: str = "GET", body: str | None = None, key_file: str | None = None) -> int:
    """Status of one request made inside ``host`` (the key, when given, is read there from a file)."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "url, method, body, key_file = sys.argv[1:5]\n"
        "req = urllib.request.Request(url, method=method, data=body.encode() if body else None)\n"
        "if key_file:\n"
        "    req.add_header('Authorization', 'Bearer ' + open(key_file).read().strip())\n"
        "try:\n"
        "    print(urllib.request.urlopen(req, timeout=10).status)\n"
        "except urllib.error.HTTPError as error:\n"
        "    print(error.code)\n")
    cmd = ["podman", "exec", host, "python3", "-c", script, url, method, body or "", key_file or ""]
    return int(subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip())


def upstream_key() -> str:
    key = on_backend("hap-b1", "cat /etc/vllm/api-key").strip()
    assert len(key) == 40 and key == on_backend("hap-b3", "cat /etc/vllm/other-key").strip()
    return key


def test_keyed_backends_are_up_because_the_check_sends_the_engines_key():
    all_up()
    # The doubles really require the key: without it /v1/models is 401, with it 200.
    assert http_status(LB, "http://10.232.5.21:8000/v1/models") == 401
    assert http_status(LB, "http://10.232.5.23:8001/v1/models") == 401
    assert http_status(LB, "http://10.232.5.21:8000/v1/models", key_file="/opt/tests/upstream-key") == 200
    assert http_status(LB, "http://10.232.5.22:8000/v1/models") == 200   # hap-b2 runs without a key
    for backend in (TINY, QWEN):
        assert all(row["status"] == "UP" and row["check_status"] == "L7OK" for row in servers(backend).values())
    lb = labtest.host(LB)
    keys = lb.file(KEY_MAP)
    assert keys.user == "root" and keys.group == "root" and keys.mode == 0o600
    assert lb.run(f"su -s /bin/sh -c 'cat {KEY_MAP}' haproxy").rc != 0
    # The master CLI (Debian's unit adds -S /run/haproxy-master.sock) can show maps: root only too.
    assert lb.run("su -s /bin/sh -c 'test -w /run/haproxy-master.sock' haproxy").rc != 0
    key = upstream_key()
    # One line per keyed server (hap-b3's key comes from its non-default vllm_api_key_file);
    # none for hap-b2's keyless vLLM, none for Ollama.
    lines = sorted(lb.file(KEY_MAP).content_string.splitlines())
    assert lines == sorted(f"{b}/{h} Bearer {key}" for b in (QWEN, TINY) for h in ("hap-b1", "hap-b3")), \
        [line.split(" Bearer ")[0] for line in lines]
    # The key is nowhere else on the balancer: not in haproxy.cfg, a command line, an
    # environment, or the journal.
    config = lb.file("/etc/haproxy/haproxy.cfg")
    assert key not in config.content_string and KEY_MAP in config.content_string
    assert config.user == "root" and config.group == "haproxy" and config.mode == 0o640
    assert key not in lb.check_output("ps -eo args")
    environ = lb.check_output("for p in $(pgrep -x haproxy); do tr '\\0' '\\n' < /proc/$p/environ; done")
    assert "PATH=" in environ and key not in environ
    assert key not in lb.check_output("journalctl --no-pager -n 2000")


def test_a_wrong_key_takes_the_server_out_and_rerunning_the_role_puts_it_back():
    all_up()
    key = upstream_key()
    lb = labtest.host(LB)
    # Only tiny-llama on hap-b1 gets a wrong key: the lookup is per backend and server.
    reloaded = float(lb.check_output(f"sed -i 's|^{TINY}/hap-b1 .*|{TINY}/hap-b1 Bearer wrong-key|' {KEY_MAP} "
                                     "&& systemctl reload haproxy && date +%s.%N"))
    down = wait_state(TINY, "hap-b1", "DOWN", timeout=15)
    measured(f"wrong health-check key: server DOWN {round(down - reloaded, 3)} s after the reload")
    row = servers(TINY)["hap-b1"]
    assert row["check_status"] == "L7STS" and row["check_code"] == "401", row
    assert servers(TINY)["hap-b3"]["status"] == "UP" and servers(QWEN)["hap-b1"]["status"] == "UP"
    for _attempt in range(6):
        assert client("request", "tiny-llama")["status"] == 200
    # Re-running the play reads the key file on hap-b1 again and rewrites the map.
    run = labtest.run_playbook()
    assert run.rc == 0, run.output[-3000:]
    assert run.changed() >= 1
    assert key not in run.output
    wait_state(TINY, "hap-b1", "UP", timeout=20)
    assert servers(TINY)["hap-b1"]["check_status"] == "L7OK"


def test_a_missing_key_file_or_a_mixed_engine_model_fails_the_play_clearly():
    run = labtest.run_playbook(extra_vars={"vllm_api_key_file": "/etc/vllm/no-such-key"})
    assert run.rc != 0
    assert "/etc/vllm/no-such-key does not exist there" in run.output and "hap-b1" in run.output
    mixed = [{"model": "tiny-llama", "servers": [
        {"name": "hap-b1", "address": "10.232.5.21", "port": 8000, "engine": "vllm", "api_key_file": None},
        {"name": "hap-b2", "address": "10.232.5.22", "port": 11434, "engine": "ollama", "api_key_file": None}]}]
    run = labtest.run_playbook(extra_vars={"haproxy_backends": mixed})
    assert run.rc != 0
    assert "model tiny-llama is served by hap-b1 (vllm), hap-b2 (ollama)" in " ".join(run.output.split()), \
        run.output[-2000:]
    assert client("request", "tiny-llama")["status"] == 200


# ------------------------------------------------------------------ Ollama backends

def ollama(method: str, path: str, model: str) -> int:
    body = json.dumps({"model": model, "stream": False})
    return http_status("hap-b2", f"http://10.232.5.22:11434{path}", method=method, body=body)


def test_ollama_backends_are_up_while_they_list_the_model():
    for backend in (LLAMA_OLLAMA, TINY_OLLAMA):
        assert set(servers(backend)) == {"hap-b2"}
        wait_state(backend, "hap-b2", "UP", timeout=20)
        assert servers(backend)["hap-b2"]["check_status"] == "L7OK"
    # The OpenAI-compatible API of the Ollama double answers through the balancer.
    out = client("request", "llama3.2:1b")
    assert out["status"] == 200, out
    assert json.loads(out["body"])["model"] == "llama3.2:1b"


def test_an_ollama_backend_that_stops_listing_the_model_is_taken_out():
    wait_state(LLAMA_OLLAMA, "hap-b2", "UP", timeout=20)
    deleted = time.time()
    assert ollama("DELETE", "/api/delete", "llama3.2:1b") == 200
    try:
        down = wait_state(LLAMA_OLLAMA, "hap-b2", "DOWN", timeout=10)
        measured(f"Ollama model deleted: server DOWN {round(down - deleted, 3)} s after the delete request")
        assert down - deleted < 3.0
        assert servers(LLAMA_OLLAMA)["hap-b2"]["check_status"] == "L7RSP"
        out = client("request", "llama3.2:1b")
        assert out["status"] == 503 and out["headers"].get("retry-after") == "5", out
        # The other model of the same Ollama stays in rotation.
        assert servers(TINY_OLLAMA)["hap-b2"]["status"] == "UP"
    finally:
        assert ollama("POST", "/api/pull", "llama3.2:1b") == 200
    wait_state(LLAMA_OLLAMA, "hap-b2", "UP", timeout=20)
    assert client("request", "llama3.2:1b")["status"] == 200
