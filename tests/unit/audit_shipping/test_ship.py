"""enclave-audit-ship (roles/audit_shipping/files/enclave_audit_ship.py) against the RELP
collector TEST DOUBLE (tests/doubles/relp_collector.py) on loopback. The Molecule scenario
audit_shipping ships to a real rsyslog imrelp; these tests cover what is hard to stage there:
a session broken mid-window, a refused frame, the shipper killed with SIGKILL, rotation while
stopped, partial lines, and the configuration errors."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from relp_collector import RelpCollectorDouble

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "roles" / "audit_shipping" / "files" / "enclave_audit_ship.py"
_spec = importlib.util.spec_from_file_location("enclave_audit_ship", SCRIPT)
ship = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ship)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=test CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    for name, usage in (("collector.test", "serverAuth"), ("sender.test", "clientAuth")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        ext = d / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage={usage}\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(d / f"{name}.crt"))
    return d


@pytest.fixture()
def collector(pki):
    double = RelpCollectorDouble(str(pki / "collector.test.crt"), str(pki / "collector.test.key"),
                                 str(pki / "ca.crt")).start()
    yield double
    double.stop()


def make_config(tmp_path, pki, port, **extra) -> Path:
    cfg = {
        "host": "127.0.0.1", "port": port, "server_name": "collector.test", "hostname": "sender1",
        "ca": str(pki / "ca.crt"), "cert": str(pki / "sender.test.crt"), "key": str(pki / "sender.test.key"),
        "state_directory": str(tmp_path / "state"), "metrics_file": str(tmp_path / "ship.prom"),
        "files": [{"path": str(tmp_path / "log" / "audit.jsonl"), "tag": "enclave-audit"}],
        "poll_seconds": 0.05, "reconnect_min_seconds": 0.1, "reconnect_max_seconds": 0.5,
        "rotation_grace_seconds": 0.3, "metrics_interval_seconds": 0.1, "response_timeout_seconds": 5,
    }
    cfg.update(extra)
    (tmp_path / "log").mkdir(exist_ok=True)
    path = tmp_path / "ship.json"
    path.write_text(json.dumps(cfg))
    return path


def append(path: Path, start: int, count: int, run: str = "r") -> None:
    with open(path, "a", encoding="utf-8") as handle:
        for seq in range(start, start + count):
            handle.write(json.dumps({"seq": seq, "run": run}) + "\n")


def seqs(double) -> list[int]:
    return [json.loads(m.split(b": ", 1)[1])["seq"] for m in double.lines()]


def run_until_idle(config: Path, idle: float = 0.5, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--until-idle", str(idle)],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_ships_every_line_once_with_host_and_tag(tmp_path, pki, collector):
    config = make_config(tmp_path, pki, collector.port)
    append(tmp_path / "log" / "audit.jsonl", 1, 300)
    result = run_until_idle(config)
    assert result.returncode == 0, result.stderr
    assert seqs(collector) == list(range(1, 301))
    first = collector.lines()[0]
    assert first.startswith(b"<182>") and b" sender1 enclave-audit: {" in first
    state = json.loads((tmp_path / "state" / "enclave-audit.state").read_text())
    assert state["offset"] == (tmp_path / "log" / "audit.jsonl").stat().st_size
    metrics = (tmp_path / "ship.prom").read_text()
    assert 'enclave_audit_queue_messages{queue="enclave-audit"} 0' in metrics
    assert "enclave_audit_shipped_lines_total 300" in metrics
    # A second run finds nothing new and sends nothing again.
    assert run_until_idle(config).returncode == 0
    assert len(collector.lines()) == 300


def test_metrics_match_the_monitoring_catalogue(tmp_path, pki, collector):
    """Every audit-shipping metric the dashboard and alert rules may query is what the shipper writes, typed alike."""
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "monitoring"))
    from metric_catalogue import CATALOGUE  # pylint: disable=import-outside-toplevel
    config = make_config(tmp_path, pki, collector.port)
    append(tmp_path / "log" / "audit.jsonl", 1, 3)
    assert run_until_idle(config).returncode == 0
    written = {}
    for line in (tmp_path / "ship.prom").read_text().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            written[name] = kind
    assert written == CATALOGUE["audit_shipping (node_exporter textfile)"]


def test_collector_down_then_up_loses_nothing(tmp_path, pki, collector):
    port = collector.port
    collector.stop()
    config = make_config(tmp_path, pki, port)
    log = tmp_path / "log" / "audit.jsonl"
    append(log, 1, 50)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config), "--until-idle", "0.5"],
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        append(log, 51, 50)
        backlog = 'enclave_audit_queue_messages{queue="enclave-audit"} 100'
        deadline = time.monotonic() + 10
        while backlog not in (tmp_path / "ship.prom").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        metrics = (tmp_path / "ship.prom").read_text()
        assert backlog in metrics
        assert "enclave_audit_shipping_failures_total 0" not in metrics
        collector.port = port
        collector.start()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert sorted(set(seqs(collector))) == list(range(1, 101))
    assert "cannot open a RELP session" in proc.stderr.read()


def test_session_broken_mid_window_resends_unacknowledged(tmp_path, pki, collector):
    collector.break_after = 37
    config = make_config(tmp_path, pki, collector.port, window=16)
    append(tmp_path / "log" / "audit.jsonl", 1, 200)
    assert run_until_idle(config).returncode == 0
    got = seqs(collector)
    assert sorted(set(got)) == list(range(1, 201))
    assert collector.sessions >= 2
    # First arrivals follow the file's order, also across the resend (resent lines come after).
    assert list(dict.fromkeys(got)) == list(range(1, 201))


def test_refused_frame_is_sent_again(tmp_path, pki, collector):
    config = make_config(tmp_path, pki, collector.port)
    append(tmp_path / "log" / "audit.jsonl", 1, 20)
    collector.refuse.add(json.dumps({"seq": 7, "run": "r"}).encode())
    assert run_until_idle(config).returncode == 0
    assert sorted(set(seqs(collector))) == list(range(1, 21))


def test_shipper_killed_during_outage_loses_nothing(tmp_path, pki, collector):
    """The scenario rsyslog's omrelp fails: the sender dies while the collector is away."""
    log = tmp_path / "log" / "audit.jsonl"
    config = make_config(tmp_path, pki, collector.port)
    append(log, 1, 100)
    assert run_until_idle(config).returncode == 0
    port = collector.port
    collector.stop()
    append(log, 101, 400)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    collector.port = port
    collector.start()
    assert run_until_idle(config).returncode == 0
    assert sorted(set(seqs(collector))) == list(range(1, 501))


def test_killed_after_send_before_checkpoint_resends(tmp_path, pki, collector):
    """Acknowledged but not yet checkpointed lines arrive twice, never zero times."""
    config = make_config(tmp_path, pki, collector.port)
    log = tmp_path / "log" / "audit.jsonl"
    append(log, 1, 2000)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config)],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(collector.lines()) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert run_until_idle(tmp_path / "ship.json").returncode == 0
    got = seqs(collector)
    assert sorted(set(got)) == list(range(1, 2001))
    assert len(got) >= 2000


def test_rotation_while_running_ships_old_file_to_its_end(tmp_path, pki, collector):
    log = tmp_path / "log" / "audit.jsonl"
    config = make_config(tmp_path, pki, collector.port)
    append(log, 1, 10)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while len(collector.lines()) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.rename(log, str(log) + ".1")
        append(Path(str(log) + ".1"), 11, 5)        # a late write to the old file (writer not reopened yet)
        append(log, 16, 10)
        deadline = time.monotonic() + 20
        while len(collector.lines()) < 25 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert seqs(collector) == list(range(1, 26))
    assert "was rotated" in proc.stderr.read()


def test_rotation_while_stopped_resumes_the_rotated_file(tmp_path, pki, collector):
    log = tmp_path / "log" / "audit.jsonl"
    config = make_config(tmp_path, pki, collector.port)
    append(log, 1, 10)
    assert run_until_idle(config).returncode == 0
    append(log, 11, 5)                               # written, then rotated before it was shipped
    os.rename(log, str(log) + ".1")
    append(log, 16, 5)
    assert run_until_idle(config, idle=1.0).returncode == 0
    assert seqs(collector) == list(range(1, 21))


def test_partial_line_waits_for_its_end(tmp_path, pki, collector):
    log = tmp_path / "log" / "audit.jsonl"
    config = make_config(tmp_path, pki, collector.port)
    log.write_text('{"seq": 1}\n{"seq": 2')
    assert run_until_idle(config).returncode == 0
    assert seqs(collector) == [1]
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("}\n")
    assert run_until_idle(config).returncode == 0
    assert seqs(collector) == [1, 2]


def test_wrong_collector_name_ships_nothing_and_counts_failures(tmp_path, pki, collector):
    config = make_config(tmp_path, pki, collector.port, server_name="someone-else.test")
    append(tmp_path / "log" / "audit.jsonl", 1, 5)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--config", str(config)], stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.terminate()
    proc.wait(timeout=10)
    assert collector.lines() == []
    metrics = (tmp_path / "ship.prom").read_text()
    failures = int(metrics.split("\nenclave_audit_shipping_failures_total ")[1].split()[0])
    assert failures >= 1
    assert "certificate" in proc.stderr.read().lower()


@pytest.mark.parametrize(("change", "message"), [
    ({"host": ""}, "set host"),
    ({"files": [{"path": "/x", "tag": "a"}, {"path": "/y", "tag": "a"}]}, "tags must be unique"),
    ({"files": [{"path": "relative.log", "tag": "a"}]}, "absolute path"),
    ({"files": [{"path": "/x", "tag": "a b"}]}, "tag of letters"),
    ({"window": 0}, "window must be at least 1"),
])
def test_configuration_errors_say_what_to_fix(tmp_path, pki, change, message):
    config = make_config(tmp_path, pki, 1, **change)
    with pytest.raises(ship.ConfigError, match=message):
        ship.load_config(str(config))


def test_check_reports_unreadable_key(tmp_path, pki):
    config = make_config(tmp_path, pki, 1, key=str(tmp_path / "missing.key"))
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "key file" in result.stderr and "missing.key" in result.stderr
