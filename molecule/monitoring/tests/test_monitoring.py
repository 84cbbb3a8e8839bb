"""Behaviour of enclave.llm.monitoring on two systemd hosts.

mon-store runs Prometheus and Alertmanager; mon-infer runs node_exporter, the
OpenAI-compatible backend DOUBLE (tests/doubles/openai_backend.py, standing in
for vLLM and its /metrics) on the ports of its vllm_models, and the STAND-IN
nvidia_gpu_exporter (tests/doubles/nvidia_gpu_exporter_standin.py) installed
from a stand-in archive through the role's real download/checksum path. No
GPU, no real vLLM and no real nvidia_gpu_exporter run here.

Tests that re-run the playbook come last: pytest keeps file order.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

import labtest

STORE, INFER = "mon-store", "mon-infer"
PROM = "https://10.232.9.10:9090"
ALERTMANAGER = "https://10.232.9.10:9093"
CA = "/etc/enclave/pki/ca.crt"
CERT = "/etc/enclave/pki/certs/monitoring.fullchain.crt"
KEY = "/etc/enclave/pki/private/monitoring.key"
ROOT = Path(labtest.SCENARIO_DIR).parents[1]
EXPECTED_TARGETS = {
    ("prometheus", "10.232.9.10:9090"), ("alertmanager", "10.232.9.10:9093"),
    ("node", "10.232.9.10:9100"), ("node", "10.232.9.11:9100"), ("gpu", "10.232.9.11:9835"),
    ("vllm", "10.232.9.11:8000"), ("vllm", "10.232.9.11:8001"),
}

FETCH = """
import json, ssl, sys, urllib.request
url, cafile, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=cafile)
if cert:
    ctx.load_cert_chain(cert, key)
try:
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        print(json.dumps({"status": resp.status, "body": resp.read().decode()}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": exc.read().decode()}))
except Exception as exc:
    print(json.dumps({"status": 0, "body": type(exc).__name__ + ": " + str(exc)}))
"""


def fetch(url: str, host: str = STORE, client_cert: bool = False) -> dict:
    """GET ``url`` from inside ``host`` (the images have python3, not curl)."""
    args = [url, CA, CERT if client_cert else "", KEY if client_cert else ""]
    out = labtest.host(host).check_output(f"python3 -c {shlex.quote(FETCH)} " + " ".join(map(shlex.quote, args)))
    return json.loads(out)


def prom(path: str) -> dict:
    answer = fetch(PROM + path)
    assert answer["status"] == 200, answer
    return json.loads(answer["body"])


def wait_for(check, timeout: float, step: float = 2.0):
    """Poll ``check`` until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def targets() -> list[dict]:
    return prom("/api/v1/targets?state=active")["data"]["activeTargets"]


def test_prometheus_and_alertmanager_are_ready_over_tls():
    assert fetch(PROM + "/-/ready")["status"] == 200
    assert fetch(ALERTMANAGER + "/-/ready")["status"] == 200


def test_every_configured_target_is_up():
    def all_up():
        found = targets()
        return found if len(found) == len(EXPECTED_TARGETS) and all(t["health"] == "up" for t in found) else None

    found = wait_for(all_up, timeout=60) or targets()
    table = sorted((t["labels"]["job"], t["labels"]["instance"], t["health"], t["lastError"]) for t in found)
    print("\nTargets page (job, instance, health, last error):")
    for row in table:
        print("  ", *row)
    assert {(t["labels"]["job"], t["labels"]["instance"]) for t in found} == EXPECTED_TARGETS
    assert all(t["health"] == "up" for t in found), table
    # Every series of `up` from a generated job (they carry the inventory's host label) is 1.
    up = [s for s in prom("/api/v1/query?query=up")["data"]["result"] if "host" in s["metric"]]
    assert {(s["metric"]["job"], s["metric"]["instance"]) for s in up} == EXPECTED_TARGETS
    assert all(sample["value"][1] == "1" for sample in up), up


def test_targets_carry_inventory_labels():
    by_instance = {t["labels"]["instance"]: t["labels"] for t in targets()}
    assert by_instance["10.232.9.11:8000"]["model"] == "tiny-llama"
    assert by_instance["10.232.9.11:8001"]["model"] == "other-model"
    assert by_instance["10.232.9.11:9100"]["host"] == INFER
    assert by_instance["10.232.9.11:9100"]["zone"] == "inference"
    assert by_instance["10.232.9.10:9100"]["zone"] == "storage"


def test_exporters_refuse_clients_without_a_certificate():
    url = "https://10.232.9.11:9100/metrics"
    assert fetch(url, client_cert=True)["status"] == 200
    refused = fetch(url, client_cert=False)
    assert refused["status"] == 0, refused
    plain = fetch("http://10.232.9.11:9100/metrics")
    assert plain["status"] != 200, plain


def test_gpu_standin_is_scraped_through_the_role_install():
    result = prom("/api/v1/query?query=count(nvidia_smi_gpu_info)")["data"]["result"]
    assert result and result[0]["value"][1] == "2"
    expected = prom("/api/v1/query?query=enclave_gpu_expected_count")["data"]["result"]
    assert expected and expected[0]["value"][1] == "2"
    infer = labtest.host(INFER)
    assert infer.file("/usr/local/bin/nvidia_gpu_exporter").linked_to == "/opt/nvidia_gpu_exporter/1.3.2/nvidia_gpu_exporter"
    assert infer.service("nvidia-gpu-exporter").is_running


def test_certificate_expiry_metric_matches_the_certificate():
    def metric():
        result = prom("/api/v1/query?query=enclave_certificate_expiry_timestamp_seconds"
                      "{host=%22mon-infer%22,name=%22monitoring%22}")["data"]["result"]
        return result

    result = wait_for(metric, timeout=30)
    assert result, "no enclave_certificate_expiry_timestamp_seconds for mon-infer"
    enddate = labtest.host(INFER).check_output("openssl x509 -noout -enddate -in /etc/enclave/pki/certs/monitoring.crt")
    expected = labtest.host(INFER).check_output(f"date -d {shlex.quote(enddate.split('=', 1)[1])} +%s")
    assert int(float(result[0]["value"][1])) == int(expected)
    assert result[0]["metric"]["path"] == "/etc/enclave/pki/certs/monitoring.crt"
    errors = prom("/api/v1/query?query=enclave_certificate_expiry_collector_errors")["data"]["result"]
    assert {r["value"][1] for r in errors} == {"0"}


def test_promtool_checks_the_installed_config_and_passes_the_rule_tests(tmp_path):
    store = labtest.host(STORE)
    assert store.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert store.run("promtool check rules /etc/prometheus/rules/enclave.rules.yml").rc == 0
    assert store.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0
    # The unit tests expect the default durations, so they run against the rules
    # rendered with the role defaults (as `make promtool` does), with the host's promtool.
    render = subprocess.run([str(ROOT / ".venv/bin/ansible-playbook"), str(ROOT / "tests/promtool/render.yml")],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert render.returncode == 0, render.stdout[-2000:]
    out = ROOT / "tests/output/promtool"
    prepare = subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "tools/promtool_tests.py"),
                              str(out / "enclave.rules.yml"), str(ROOT / "tests/promtool"), str(tmp_path)],
                             capture_output=True, text=True, check=False)
    assert prepare.returncode == 0, prepare.stderr
    store.run("rm -rf /tmp/promtool-tests && mkdir -p /tmp/promtool-tests")
    for path in tmp_path.glob("*.yml"):
        subprocess.run(["podman", "cp", str(path), f"{STORE}:/tmp/promtool-tests/{path.name}"], check=True)
    result = store.run("cd /tmp/promtool-tests && promtool test rules *.test.yml")
    assert result.rc == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 3


def test_a_stopped_backend_fires_an_alert_into_alertmanager():
    """End to end: stop the engine double of one model; Prometheus scrapes it down,
    the rules fire (scenario `for`: 10s), Alertmanager holds the alerts, and the
    per-backend alert is inhibited by the all-backends-down alert of the model."""
    infer = labtest.host(INFER)
    infer.run("systemctl stop openai-backend-double@8000")
    start = time.monotonic()
    try:
        def alerts():
            answer = fetch(ALERTMANAGER + "/api/v2/alerts")
            found = {a["labels"]["alertname"]: a for a in json.loads(answer["body"])
                     if a["labels"].get("model") == "tiny-llama"}
            return found if {"InferenceBackendDown", "ModelAllBackendsDown"} <= set(found) else None

        found = wait_for(alerts, timeout=120)
        elapsed = time.monotonic() - start
        print(f"\nalerts in Alertmanager {elapsed:.0f} s after stopping the backend double: {sorted(found or {})}")
        assert found, "InferenceBackendDown and ModelAllBackendsDown did not reach Alertmanager within 120 s"
        down = found["InferenceBackendDown"]
        assert down["labels"]["host"] == INFER and down["labels"]["instance"] == "10.232.9.11:8000"
        assert down["annotations"]["runbook"].startswith("On the host")
        assert found["ModelAllBackendsDown"]["status"]["state"] == "active"
        assert down["status"]["state"] == "suppressed"
        assert down["status"]["inhibitedBy"]
        # The other model's backend still serves: nothing fires for it.
        others = [a for a in json.loads(fetch(ALERTMANAGER + "/api/v2/alerts")["body"])
                  if a["labels"].get("model") == "other-model"]
        assert others == []
    finally:
        infer.run("systemctl start openai-backend-double@8000")


def _config_digest() -> str:
    return labtest.host(STORE).check_output("sha256sum /etc/prometheus/prometheus.yml /etc/prometheus/rules/*.yml")


def test_scrape_target_missing_from_the_inventory_fails_before_any_change():
    before = _config_digest()
    run = labtest.run_playbook(extra_vars={"monitoring_haproxy_hosts": ["app99"]}, limit=STORE)
    assert run.rc != 0
    assert "monitoring_haproxy_hosts names 'app99', which is not in the inventory" in run.output
    assert _config_digest() == before


@pytest.mark.parametrize("value", ["hot", [85]])
def test_threshold_that_is_not_a_number_fails_before_any_change(value):
    before = _config_digest()
    run = labtest.run_playbook(extra_vars={"monitoring_gpu_temperature_max_celsius": value}, limit=STORE)
    assert run.rc != 0
    assert "monitoring_gpu_temperature_max_celsius" in run.output
    assert "float" in run.output or "must be a number" in run.output
    assert _config_digest() == before


def test_wrong_gpu_exporter_checksum_is_refused_and_the_exporter_keeps_running():
    infer = labtest.host(INFER)
    before = infer.check_output("sha256sum /opt/nvidia_gpu_exporter/1.3.2/nvidia_gpu_exporter")
    wrong = {"amd64": {"1.3.2": "sha256:" + "0" * 64}}
    # Only the role's GPU exporter tasks (gpu_exporter.yml), to keep the scenario inside its time budget.
    run = labtest.run_playbook("gpu_exporter.yml", extra_vars={"monitoring_gpu_exporter_checksums": wrong}, limit=INFER)
    assert run.rc != 0
    assert "did not match" in run.output or "checksum" in run.output.lower()
    assert "Download the pinned GPU exporter archive" in run.output
    assert infer.check_output("sha256sum /opt/nvidia_gpu_exporter/1.3.2/nvidia_gpu_exporter") == before
    assert infer.service("nvidia-gpu-exporter").is_running
