"""Loss-free shipping: N records, collector down, M more, sender and collector restarted,
all N+M sequence numbers arrive (rsyslog's own queue-test method). The collector is the
real rsyslog imrelp of enclave.llm.audit_collector, standing in for the SIEM."""
from __future__ import annotations

import json
import shlex
import time

from labtest import host

SENDER, COLLECTOR = "as-sender", "as-collector"
SOURCE = "/var/log/enclave-gateway/audit.jsonl"
N, M = 500, 1500


def collected() -> list[dict]:
    node = host(COLLECTOR)
    out = node.run("cat /var/log/enclave-audit/*/enclave-audit.log 2>/dev/null")
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def append(start: int, count: int, run: str) -> None:
    # One python process writes the numbered lines (as the gateway would, one line per record).
    script = (f"import json\nwith open('{SOURCE}', 'a') as f:\n"
              f"    for i in range({start}, {start + count}):\n"
              f"        f.write(json.dumps({{'seq': i, 'run': '{run}', 'pad': 'x' * 200}}) + '\\n')\n"
              f"        f.flush()\n")
    host(SENDER).run_expect([0], f"python3 -c {shlex.quote(script)}")


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(2)
    return False


def test_shipper_runs_sandboxed_as_its_user():
    node = host(SENDER)
    assert node.service("enclave-audit-ship").is_running
    assert node.service("enclave-audit-ship").is_enabled
    pid = node.run_expect([0], "systemctl show -p MainPID --value enclave-audit-ship").stdout.strip()
    assert node.run_expect([0], f"stat -c %U /proc/{pid}").stdout.strip() == "enclave-audit-ship"
    show = node.run_expect([0], "systemctl show enclave-audit-ship -p ProtectSystem -p NoNewPrivileges "
                                "-p SupplementaryGroups -p ReadWritePaths").stdout
    assert "ProtectSystem=strict" in show and "NoNewPrivileges=yes" in show and "adm" in show
    assert node.file("/etc/enclave/audit-ship.json").mode == 0o640
    assert host(COLLECTOR).socket("tcp://0.0.0.0:2514").is_listening


def test_no_record_lost_across_collector_outage_and_restarts():
    run = str(time.time_ns())

    def mine() -> list[dict]:
        return [r for r in collected() if r.get("run") == run]

    append(1, N, run)
    assert wait_for(lambda: len(mine()) >= N, 90), f"only {len(mine())} of {N} arrived before the outage"

    collector, sender = host(COLLECTOR), host(SENDER)
    # syslog.socket would start rsyslog again on the next local log line: stop both.
    collector.run_expect([0], "systemctl stop syslog.socket rsyslog.service")
    append(N + 1, M, run)
    time.sleep(5)                                             # the sender retries and queues
    during_outage = len(mine())
    sender.run_expect([0], "systemctl restart enclave-audit-ship")  # restarted during the outage
    queued = sender.run("cat /var/lib/enclave-audit-ship/enclave-audit.state").stdout
    metrics = "/var/lib/enclave-audit-ship/enclave_audit_shipping.prom"
    backlog_line = f'enclave_audit_queue_messages{{queue="enclave-audit"}} {M}'
    # The restarted shipper reports the M waiting records as its backlog (the file is the queue).
    assert wait_for(lambda: backlog_line in sender.run(f"cat {metrics}").stdout, 30), sender.run(f"cat {metrics}").stdout
    backlog = backlog_line
    collector.run_expect([0], "systemctl start rsyslog.service")
    assert wait_for(lambda: len({r['seq'] for r in mine()}) >= N + M, 120), \
        f"{len({r['seq'] for r in mine()})} of {N + M} distinct records arrived"

    assert during_outage == N                                 # the outage was real: nothing got through
    seqs = [r["seq"] for r in mine()]
    missing = sorted(set(range(1, N + M + 1)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    print(f"N={N} M={M} received={len(seqs)} distinct={len(set(seqs))} duplicates={duplicates} "
          f"missing={len(missing)} checkpoint-after-restart={queued.strip()} metrics={backlog.strip()}")
    assert not missing
    assert len(set(seqs)) == N + M


def test_records_arrive_unchanged():
    node = host(SENDER)
    local = node.file(SOURCE).content_string.splitlines()[-1]
    assert local in host(COLLECTOR).run("cat /var/log/enclave-audit/*/enclave-audit.log").stdout


def test_rotation_is_daily_365_compressed():
    node = host(SENDER)
    out = node.run("logrotate --debug /etc/logrotate.d/enclave-audit 2>&1")
    assert out.rc == 0
    conf = node.file("/etc/logrotate.d/enclave-audit").content_string
    assert "daily" in conf and "rotate 365" in conf and "compress" in conf and "create 0640" in conf


def test_forced_rotation_keeps_shipping():
    node = host(SENDER)
    node.run_expect([0], "logrotate -f /etc/logrotate.d/enclave-audit")
    assert node.file(SOURCE).exists and node.file(SOURCE).mode == 0o640
    run = "after-rotation-" + str(time.time_ns())
    append(1, 20, run)
    assert wait_for(lambda: len([r for r in collected() if r.get("run") == run]) == 20, 60)
