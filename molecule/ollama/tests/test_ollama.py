"""Behaviour of enclave.llm.ollama on a systemd host, with a STAND-IN release
archive (tests/doubles/ollama_standin.py + the Ollama-protocol TEST DOUBLE
tests/doubles/ollama_double.py) because the real Ollama cannot be fetched
here. Real: download, sha256 check, unpack, versioned link, user, directories,
unit, environment, sandbox, model pull through enclave.llm.model_pull and the
readiness/preload gate. Not real: Ollama itself, a model, a GPU.
"""
from __future__ import annotations

import json
import re

import pytest

import labtest

NODE = "ollama-node"
BASE = "http://10.232.8.11:11434"


@pytest.fixture(scope="module")
def node():
    return labtest.host(NODE)


def get(node, path):
    return json.loads(node.check_output(
        "python3 -c %s %s", "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())",
        BASE + path))


def flat(output: str) -> str:
    """The playbook output with YAML line folding undone, so a message reads as one line."""
    return " ".join(output.split())


def main_pid(node) -> int:
    return int(node.check_output("systemctl show -p MainPID --value ollama.service"))


def test_installed_from_the_verified_archive(node):
    link = node.file("/opt/ollama/current")
    assert link.is_symlink and link.linked_to == "/opt/ollama/0.0.1"
    assert node.file("/opt/ollama/0.0.1/STAND-IN").exists
    binary = node.file("/opt/ollama/0.0.1/bin/ollama")
    assert binary.user == "root" and binary.mode == 0o755
    assert "stand-in" in node.check_output("/opt/ollama/current/bin/ollama --version")


def test_user_and_directories(node):
    user = node.user("ollama")
    assert user.shell == "/usr/sbin/nologin" and user.home == "/var/lib/ollama"
    for path in ("/var/lib/ollama", "/var/lib/ollama/models"):
        d = node.file(path)
        assert (d.user, d.group, d.mode) == ("ollama", "ollama", 0o750)


def test_unit_environment(node):
    env = node.check_output("systemctl show -p Environment --value ollama.service").split()
    for expected in ("OLLAMA_HOST=10.232.8.11:11434", "OLLAMA_MODELS=/var/lib/ollama/models",
                     "OLLAMA_KEEP_ALIVE=45m", "OLLAMA_NUM_PARALLEL=2", "OLLAMA_MAX_LOADED_MODELS=1"):
        assert expected in env
    assert node.check_output(f"ps -o user= -p {main_pid(node)}").strip() == "ollama"


def test_listens_on_the_inference_address_only(node):
    listeners = [line.split()[3] for line in node.check_output("ss -Hltn").splitlines()]
    assert "10.232.8.11:11434" in listeners
    assert not [a for a in listeners if a.endswith(":11434") and a != "10.232.8.11:11434"]


def test_model_pulled_into_the_models_dir_and_preloaded(node):
    tags = get(node, "/api/tags")
    assert [m["name"] for m in tags["models"]] == ["llama3.2:1b"]
    assert node.file("/var/lib/ollama/models/manifests/registry.ollama.ai/library/llama3.2/1b").exists
    blobs = node.check_output("ls /var/lib/ollama/models/blobs").split()
    assert blobs and all(b.startswith("sha256-") for b in blobs)
    assert [m["name"] for m in get(node, "/api/ps")["models"]] == ["llama3.2:1b"]


def test_sandbox_keeps_gpu_reachable_settings_and_exposure(node):
    dropin = node.file("/etc/systemd/system/ollama.service.d/10-enclave-hardening.conf").content_string
    assert "NoNewPrivileges=yes" in dropin and "ProtectSystem=strict" in dropin
    assert "ReadWritePaths=/var/lib/ollama /var/lib/ollama/models" in dropin
    out = node.check_output("systemd-analyze security --no-pager ollama.service")
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"systemd-analyze security ollama.service: {score}")
    assert score <= 3.0, out


def test_wrong_checksum_fails_and_keeps_the_previous_binary(node):
    pid = main_pid(node)
    run = labtest.run_playbook("converge.yml", extra_vars={"ollama_version": "0.0.2"})
    assert run.rc != 0
    assert "does not match the pinned checksum for 0.0.2/amd64" in flat(run.output), run.output[-3000:]
    assert node.file("/opt/ollama/current").linked_to == "/opt/ollama/0.0.1"
    assert not node.file("/var/cache/ollama/ollama-0.0.2-linux-amd64.tgz").exists
    assert main_pid(node) == pid


def test_missing_checksum_fails_before_any_change(node):
    run = labtest.run_playbook("converge.yml", extra_vars={"ollama_version": "9.9.9"})
    assert run.rc != 0
    assert "no pinned checksum for version 9.9.9 on amd64" in flat(run.output)
    assert not node.file("/opt/ollama/9.9.9").exists


def test_unknown_model_fails_naming_it_and_leaves_the_service(node):
    pid = main_pid(node)
    unit = node.file("/etc/systemd/system/ollama.service").content_string
    run = labtest.run_playbook("converge.yml", extra_vars={"ollama_models": ["llama3.2:1b", "no-such-model:7b"]})
    assert run.rc != 0
    assert "could not pull no-such-model:7b" in flat(run.output), run.output[-3000:]
    assert main_pid(node) == pid
    assert node.file("/etc/systemd/system/ollama.service").content_string == unit
    assert [m["name"] for m in get(node, "/api/tags")["models"]] == ["llama3.2:1b"]


def test_port_clash_fails_naming_it_and_leaves_the_service(node):
    pid = main_pid(node)
    unit = node.file("/etc/systemd/system/ollama.service").content_string
    squatter = node.run("nohup python3 -m http.server 11435 --bind 10.232.8.11 >/dev/null 2>&1 & sleep 1")
    assert squatter.rc == 0
    try:
        run = labtest.run_playbook("converge.yml", extra_vars={"ollama_port": 11435})
    finally:
        node.run("pkill -f 'http.server 11435'")
    assert run.rc != 0
    assert "port 11435 is already in use by" in flat(run.output), run.output[-3000:]
    assert main_pid(node) == pid
    assert node.file("/etc/systemd/system/ollama.service").content_string == unit


def test_second_run_changes_nothing():
    run = labtest.run_playbook("converge.yml")
    assert run.rc == 0, run.output[-3000:]
    assert run.changed() == 0
