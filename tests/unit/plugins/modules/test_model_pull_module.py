"""enclave.llm.model_pull as Ansible runs it.

In-process runs of main() cover argument handling and results; one test runs
ansible-playbook against localhost, so the module goes through AnsiballZ as in
production, with check, apply, check, apply and an assertion on `changed` each
time. The servers are the TEST DOUBLE of tests/doubles/model_server.py (a
Hugging Face-style hub and a file mirror) on loopback.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import model_server
from moduletest import run_module
from ansible_collections.enclave.llm.plugins.modules import model_pull

ROOT = Path(__file__).resolve().parents[4]
WEIGHTS = os.urandom(150_000)
CONFIG = b'{"model_type": "llama"}\n'


@pytest.fixture
def server():
    double = model_server.ModelServer().start()
    double.add_repo("acme/tiny", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    double.mirror = {"model.safetensors": WEIGHTS, "config.json": CONFIG}
    double.mirror["SHA256SUMS"] = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n"
                                          for n, d in double.mirror.items()).encode()
    yield double
    double.stop()


def hub_args(server, dest, **extra):
    extra.setdefault("state_dir", str(Path(dest).parent / "pull-state"))
    return dict(source="huggingface", url=server.url, repo="acme/tiny", revision="main", dest=str(dest),
                disk_margin_mib=0, **extra)


def test_check_apply_check_apply(server, tmp_path):
    dest = tmp_path / "models" / "tiny"
    args = hub_args(server, dest)
    first = run_module(model_pull, args, check_mode=True, diff=True)
    assert first["changed"] is True and not dest.exists()
    assert first["diff"] == {"before": {"files": []}, "after": {"files": ["config.json", "model.safetensors"]}}
    applied = run_module(model_pull, args)
    assert applied["changed"] is True and "diff" not in applied
    assert applied["bytes"] == len(WEIGHTS) + len(CONFIG)
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert run_module(model_pull, args, check_mode=True)["changed"] is False
    again = run_module(model_pull, args)
    assert again["changed"] is False
    assert again["state_file"].startswith(args["state_dir"] + "/") and os.path.isfile(again["state_file"])
    assert sorted(os.listdir(dest)) == ["config.json", "model.safetensors"]


def test_read_only_store(server, tmp_path, monkeypatch):
    """Verified: ok, nothing written into dest. Missing: a failure naming the cause, the files and the fix."""
    dest = tmp_path / "models" / "tiny"
    args = hub_args(server, dest)
    assert run_module(model_pull, args)["changed"] is True
    monkeypatch.setattr(model_pull.mp, "write_problem", lambda path: f"{path} is on a read-only filesystem")
    assert run_module(model_pull, args)["changed"] is False
    (dest / "model.safetensors").unlink()
    result = run_module(model_pull, args, check_mode=True)
    assert result["failed"] is True and result["read_only"] is True and result["missing"] == ["model.safetensors"]
    assert f"dest {dest} cannot be written ({dest} is on a read-only filesystem)" in result["msg"]
    assert "point dest at a writable directory" in result["msg"]


def test_a_state_dir_that_cannot_be_written_is_a_warning(server, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    result = run_module(model_pull, hub_args(server, tmp_path / "m", state_dir=str(tmp_path / "file" / "state")))
    assert result["changed"] is True and "failed" not in result
    # Through AnsibleModule.warn: in the result's warnings, and printed when run in-process.
    assert "their record could not be written" in json.dumps(result.get("warnings")) + capsys.readouterr().err


def test_failure_is_a_message_with_details(server, tmp_path):
    server.faults["model.safetensors"] = {"corrupt": True}
    result = run_module(model_pull, dict(source="http", url=server.url + "/mirror/", manifest="SHA256SUMS",
                                         dest=str(tmp_path / "m"), disk_margin_mib=0,
                                         state_dir=str(tmp_path / "state")))
    assert result["failed"] is True
    assert result["msg"].startswith("checksum mismatch for model.safetensors: expected sha256:")
    assert result["file"] == "model.safetensors" and result["expected"].startswith("sha256:")
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_token_file_is_read_and_its_problems_named(server, tmp_path):
    server.token = "hf_abc"
    token = tmp_path / "token"
    token.write_text("hf_abc\n")
    assert run_module(model_pull, hub_args(server, tmp_path / "m", token_file=str(token)))["changed"] is True
    result = run_module(model_pull, hub_args(server, tmp_path / "n", token_file=str(tmp_path / "none")))
    assert result["failed"] and "cannot read the token file" in result["msg"] and "fix token_file" in result["msg"]
    assert "hf_abc" not in json.dumps(result)


@pytest.mark.parametrize("args,fragment", [
    ({"source": "huggingface", "url": "http://x", "dest": "/tmp/x"},
     "source is huggingface but all of the following are missing: repo, revision"),
    ({"source": "http", "url": "http://x", "dest": "/tmp/x"}, "missing: manifest"),
    ({"source": "path", "dest": "/tmp/x"}, "missing: src"),
    ({"source": "ollama", "url": "http://x"}, "missing: model"),
    ({"source": "path", "src": "/s", "dest": "/d", "retries": -1}, "must not be negative"),
    ({"source": "path", "src": "/s", "dest": "/d", "manifest": {"a": 1}}, "manifest must be a list"),
])
def test_argument_errors(args, fragment):
    result = run_module(model_pull, args)
    assert result["failed"] and fragment in result["msg"]


def test_through_ansible_playbook(server, tmp_path):
    """check, apply, check, apply through AnsiballZ; the playbook asserts `changed` each time."""
    playbook = Path(__file__).parent / "playbooks" / "model_pull.yml"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(ROOT),
               ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    bindir = Path(sys.executable).parent
    extra = json.dumps({"mirror_url": server.url + "/mirror/", "hub_url": server.url, "dest": str(tmp_path / "store")})
    proc = subprocess.run([str(bindir / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook),
                           "-e", extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "failed=0" in proc.stdout
    assert (tmp_path / "store" / "mirror" / "model.safetensors").read_bytes() == WEIGHTS
    assert (tmp_path / "store" / "hub" / "config.json").read_bytes() == CONFIG


def test_bytes_total_is_known_for_a_manifest_without_sizes(server, tmp_path):
    """SHA256SUMS carries no sizes: bytes_total comes from the source, then from the store."""
    args = dict(source="http", url=server.url + "/mirror/", manifest="SHA256SUMS", dest=str(tmp_path / "m"),
                disk_margin_mib=0, state_dir=str(tmp_path / "state"))
    first = run_module(model_pull, args)
    assert first["changed"] is True and first["bytes_total"] == len(WEIGHTS) + len(CONFIG)
    again = run_module(model_pull, args)
    assert again["changed"] is False and again["bytes_total"] == len(WEIGHTS) + len(CONFIG)
