"""The gateway role on a lab host, in front of the OpenAI-compatible backend DOUBLE
(tests/doubles/openai_backend.py on 127.0.0.1:8080, standing in for HAProxy + vLLM)."""
from __future__ import annotations

import hashlib
import json
import shlex

import pytest

from labtest import EPHEMERAL_DIR, host, run_playbook

HOST = "gw-app"
URL = "https://10.232.6.10:8443"
CA = "/etc/enclave/pki/ca.crt"
AUDIT = "/var/log/enclave-gateway/audit.jsonl"
GATEWAY = "/opt/enclave-gateway/venv/bin/enclave-gateway"


def key() -> str:
    return (EPHEMERAL_DIR / "keys" / "molecule.key").read_text().strip()


def call(path="/v1/chat/completions", body=None, api_key=None, extra=""):
    """POST through TLS from the host itself; the key goes in a header file, not argv."""
    node = host(HOST)
    headers = "Content-Type: application/json\n" + (f"Authorization: Bearer {api_key}\n" if api_key else "")
    node.run(f"umask 077; printf %s {shlex.quote(headers)} > /root/.hdr")
    payload = json.dumps(body or {"model": "tiny-llama", "max_tokens": 6,
                                  "messages": [{"role": "user", "content": "hello from molecule"}]})
    out = node.run(f"curl -sS --cacert {CA} -H @/root/.hdr -w '\\n%{{http_code}}' {extra} "
                   f"--data {shlex.quote(payload)} {URL}{path}")
    node.run("rm -f /root/.hdr")
    assert out.rc == 0, out.stderr
    text, status = out.stdout.rsplit("\n", 1)
    return int(status), text


def records() -> list[dict]:
    return [json.loads(line) for line in host(HOST).file(AUDIT).content_string.splitlines() if line]


def test_service_runs_hardened_as_its_user():
    node = host(HOST)
    assert node.service("enclave-gateway").is_running
    pid = node.check_output("systemctl show -p MainPID --value enclave-gateway")
    assert node.check_output(f"ps -o user= -p {pid}").strip() == "enclave-gateway"
    props = node.check_output("systemctl show enclave-gateway -p NoNewPrivileges -p ProtectSystem -p CapabilityBoundingSet")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props


def test_keys_file_holds_only_hashes():
    node = host(HOST)
    keys = node.file("/etc/enclave-gateway/keys.json")
    assert keys.mode == 0o640 and keys.user == "root" and keys.group == "enclave-gateway"
    doc = json.loads(keys.content_string)
    assert doc["keys"][0]["sha256"] == hashlib.sha256(key().encode()).hexdigest()
    secret = key().split("-", 2)[2]
    assert node.run(f"grep -rF {shlex.quote(secret)} /etc /opt/enclave-gateway /var/log").rc == 1


def test_real_key_is_served_through_the_backend_double():
    status, text = call(api_key=key())
    assert status == 200, text
    # The double echoes the prompt it received, cut to max_tokens (6) words.
    assert '"content": "hello' in json.loads(text)["choices"][0]["message"]["content"]


def test_streamed_answer_passes_through():
    status, text = call(body={"model": "tiny-llama", "max_tokens": 5, "stream": True,
                              "messages": [{"role": "user", "content": "stream please"}]}, api_key=key(), extra="-N")
    assert status == 200 and text.rstrip().endswith("data: [DONE]") and text.count("data: ") == 7


@pytest.mark.parametrize("api_key", [None, "ek-molecule-wrongwrongwrongwrong", "ek-nobody-xxxxxxxxxxxxxxxxxxxx"])
def test_no_or_wrong_key_is_refused(api_key):
    status, text = call(api_key=api_key)
    assert status == 401 and json.loads(text)["error"]["code"] == "invalid_api_key"


def test_audit_records_are_written_and_chain_verifies():
    call(api_key=key())
    call(api_key=None)
    node = host(HOST)
    recs = records()
    served = [r for r in recs if r["status"] == 200 and r.get("identity", {}).get("key_id") == "molecule"]
    refused = [r for r in recs if r["status"] == 401]
    assert served and refused
    assert served[-1]["model_answered"] is True and len(served[-1]["prompt_sha256"]) == 64
    audit = node.file(AUDIT)
    assert audit.user == "enclave-gateway" and audit.mode == 0o640
    out = node.run(f"{GATEWAY} verify {AUDIT}")
    assert out.rc == 0 and out.stdout.startswith("OK"), out.stdout


def test_metrics_endpoint():
    text = host(HOST).check_output("curl -sS http://10.232.6.10:9180/metrics")
    assert 'enclave_gateway_requests_total{model="tiny-llama",status="200",decision="allow"}' in text
    assert "enclave_gateway_audit_write_errors_total 0" in text


def test_tls_below_1_2_is_refused():
    out = host(HOST).run(f"curl -sS --cacert {CA} --tls-max 1.1 {URL}/health")
    assert out.rc != 0


def test_revocation_by_rerunning_the_role():
    digest = hashlib.sha256(key().encode()).hexdigest()
    revoked = [{"id": "molecule", "owner": "molecule@example.test", "models": ["tiny-llama"], "sha256": digest,
                "revoked": True}]
    run = run_playbook("converge.yml", extra_vars={"gateway_api_keys": revoked})
    assert run.rc == 0, run.output
    try:
        status, _unused = call(api_key=key())
        assert status == 401
    finally:
        restore = run_playbook("converge.yml")
        assert restore.rc == 0, restore.output
    assert call(api_key=key())[0] == 200
