"""Behaviour of enclave.llm.oauth2_proxy with a STAND-IN binary.

The real oauth2-proxy release cannot be fetched here: prepare.yml packs
tests/doubles/oauth2_proxy_standin.py into stand-in release archives, and the role
installs it through its real path (URL, pinned sha256, unpack, link, config,
hardened unit). Not run here: a real OIDC login, JWT validation, the real flags'
parsing by the 7.15.x binary.
"""
from __future__ import annotations

import base64
import json

import labtest

HOST = "op-app"
ENV_FILE = "/etc/oauth2-proxy/oauth2-proxy.env"
COOKIE = "/etc/oauth2-proxy/cookie-secret"


def state() -> dict:
    lab = labtest.host(HOST)
    out = lab.check_output("python3 -c \"import ssl,urllib.request;"
                           "c=ssl.create_default_context(cafile='/etc/enclave/pki/ca.crt');"
                           "print(urllib.request.urlopen('https://oauth2-proxy:4180/standin/state',context=c)"
                           ".read().decode())\"")
    return json.loads(out)


def test_service_runs_the_pinned_binary_as_its_own_user_over_tls():
    lab = labtest.host(HOST)
    assert lab.service("oauth2-proxy").is_running and lab.service("oauth2-proxy").is_enabled
    assert lab.file("/usr/local/bin/oauth2-proxy").linked_to == "/opt/oauth2-proxy/7.15.5/oauth2-proxy"
    assert "v7.15.5" in lab.check_output("/usr/local/bin/oauth2-proxy --version")
    lab.run_expect([0], "grep -q 'oauth2-proxy\\s' /etc/hosts || echo '127.0.0.1 oauth2-proxy' >> /etc/hosts")
    current = state()
    assert current["uid"] == int(lab.check_output("id -u oauth2-proxy"))
    assert all(current["secrets_present"].values())


def test_config_rendering():
    config = state()["config"]
    assert config["provider"] == "oidc"
    assert config["oidc_issuer_url"] == "https://sso.lab.internal/realms/enclave"
    assert config["email_domains"] == ["example.com"] and config["allowed_groups"] == ["llm-users"]
    assert config["skip_jwt_bearer_tokens"] is True
    assert config["extra_jwt_issuers"] == ["https://sso.lab.internal/realms/services=enclave-api"]
    assert config["upstreams"] == ["https://gateway.lab.internal:8443/"]
    assert config["pass_user_headers"] and config["set_xauthrequest"] and not config["pass_access_token"]
    assert config["cookie_secure"] and config["https_address"] == "0.0.0.0:4180"
    text = labtest.host(HOST).file("/etc/oauth2-proxy/oauth2-proxy.cfg").content_string
    assert "secret" not in text.lower().replace("secrets are not here", "").replace("client secret and cookie secret", "")


def test_trusted_proxy_ip_is_the_edge_only():
    assert state()["trusted_proxy_ips"] == ["10.232.5.74/32"]


def test_secrets_are_root_only_and_never_on_a_command_line():
    lab = labtest.host(HOST)
    env = lab.file(ENV_FILE)
    assert env.user == "root" and env.mode == 0o600
    cookie = lab.file(COOKIE)
    assert cookie.user == "root" and cookie.mode == 0o600
    processes = lab.check_output("ps -eo args")
    assert "test-client-secret" not in processes and cookie.content_string.strip() not in processes
    assert "OAUTH2_PROXY" not in processes


def test_unit_is_hardened():
    lab = labtest.host(HOST)
    props = dict(line.split("=", 1) for line in lab.check_output(
        "systemctl show oauth2-proxy -p User -p NoNewPrivileges -p ProtectSystem -p ProtectHome "
        "-p PrivateTmp -p CapabilityBoundingSet -p RestrictSUIDSGID -p MemoryDenyWriteExecute").splitlines())
    assert props["User"] == "oauth2-proxy" and props["NoNewPrivileges"] == "yes"
    assert props["ProtectSystem"] == "strict" and props["ProtectHome"] == "yes" and props["PrivateTmp"] == "yes"
    assert props["CapabilityBoundingSet"] == "" and props["RestrictSUIDSGID"] == "yes"


def test_cookie_secret_is_generated_once_and_kept():
    lab = labtest.host(HOST)
    before = lab.file(COOKIE).content_string
    run = labtest.run_playbook()
    assert run.rc == 0 and run.changed() == 0, run.output[-2000:]
    assert lab.file(COOKIE).content_string == before
    assert len(base64.urlsafe_b64decode(before.strip() + "=" * (-len(before.strip()) % 4))) == 32


def test_wrong_checksum_is_refused_and_the_running_binary_stays():
    # The archive in place no longer matches the pinned sum: get_url fetches again and refuses it.
    lab = labtest.host(HOST)
    run = labtest.run_playbook(extra_vars={"oauth2_proxy_checksums": {"amd64": {"7.15.5": "sha256:" + "0" * 64}}})
    assert run.rc != 0 and "checksum" in run.output.lower(), run.output[-2000:]
    assert lab.service("oauth2-proxy").is_running
    assert "v7.15.5" in lab.check_output("/usr/local/bin/oauth2-proxy --version")
    unpinned = labtest.run_playbook(extra_vars={"oauth2_proxy_checksums": {}})
    assert unpinned.rc != 0 and "No sha256 pinned for oauth2-proxy 7.15.5" in unpinned.output
    assert labtest.run_playbook().rc == 0  # puts the archive back


def test_vulnerable_versions_are_refused_naming_the_cves():
    run = labtest.run_playbook(extra_vars={"oauth2_proxy_version": "7.14.0"})
    assert run.rc != 0
    for cve in ("CVE-2025-54576", "CVE-2026-40575", "CVE-2026-34457", "CVE-2026-41059"):
        assert cve in run.output
    assert "v7.15.5" in labtest.host(HOST).check_output("/usr/local/bin/oauth2-proxy --version")


def test_missing_secret_file_and_open_trust_are_clear_errors():
    missing = labtest.run_playbook(extra_vars={"oauth2_proxy_client_secret_file": "/etc/oauth2-proxy/nope"})
    assert missing.rc != 0 and "secret file /etc/oauth2-proxy/nope is missing" in missing.output
    lab = labtest.host(HOST)
    lab.run("chmod 0644 /etc/oauth2-proxy/client-secret")
    try:
        loose = labtest.run_playbook()
        assert loose.rc != 0 and "not a root-only file" in loose.output
    finally:
        lab.run("chmod 0600 /etc/oauth2-proxy/client-secret")
    anyone = labtest.run_playbook(extra_vars={"oauth2_proxy_trusted_proxy_ips": ["0.0.0.0/0"]})
    assert anyone.rc != 0 and "never 0.0.0.0/0" in anyone.output
