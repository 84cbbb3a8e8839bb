"""playbooks/awx_job_templates.yml against the AWX API DOUBLE (tests/doubles/awx_api.py).

No AWX runs here: the double answers the endpoints the awx.awx modules call, with
the shapes recorded from awx.awx 24.6.1, and records every request. The tests run
the real playbook and modules: check mode on an empty controller, an apply, a
second apply (changed=0) and check mode again (no write request).
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import threading
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PLAYBOOK = ROOT / "playbooks" / "awx_job_templates.yml"
TOKEN = "double-token-7f3a9c"
SEED = {
    "organizations": [{"name": "Enclave"}],
    "inventories": [{"name": "enclave", "organization": 1}],
    "credentials": [{"name": "enclave-ssh", "kind": "ssh", "organization": 1}],
}
INVENTORY = """
all:
  children:
    zone_inference:
      hosts:
        infer01:
          vllm_models: [{name: tiny-llama, port: 8000}, {name: other-model, port: 8001}]
        infer02:
          ollama_models: ["llama3.2:1b"]
"""
EXTRA = {"awx_project_scm_url": "https://git.example.internal/platform/enclave-llm.git",
         "awx_execution_environment_image": "registry.example.internal/enclave-llm-ee:0.1.0"}


def _load_double():
    spec = importlib.util.spec_from_file_location("awx_api", ROOT / "tests" / "doubles" / "awx_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    double = _load_double()
    double.Handler.token = TOKEN
    double.Handler.store = double.Store(json.loads(json.dumps(SEED)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), double.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    inventory = tmp_path_factory.mktemp("awx") / "hosts.yml"
    inventory.write_text(INVENTORY)
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}", "store": double.Handler.store,
           "inventory": inventory}
    server.shutdown()


def run(controller, check=False, extra=None, token=TOKEN):
    env = dict(os.environ, CONTROLLER_HOST=controller["url"], CONTROLLER_OAUTH_TOKEN=token,
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.pop("CONTROLLER_USERNAME", None)
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(controller["inventory"]), str(PLAYBOOK),
           "-e", json.dumps(EXTRA if extra is None else extra)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    recap = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)", output)
    return proc.returncode, output, int(recap.group(2)) if recap else None


def writes(store, since=0):
    return [r for r in store.requests[since:] if r["method"] in ("POST", "PATCH", "DELETE")]


def objects(store, collection):
    return {o["name"]: o for o in store.objects.get(collection, {}).values()}


def test_check_mode_on_an_empty_controller_writes_nothing(controller):
    store = controller["store"]
    rc, output, changed = run(controller, check=True)
    assert rc == 0, output[-3000:]
    assert changed >= 1
    assert writes(store) == []
    assert store.requests and all(r["auth"] for r in store.requests)
    assert TOKEN not in output


def test_apply_creates_the_environment_project_and_job_templates(controller):
    store = controller["store"]
    rc, output, _changed = run(controller)
    assert rc == 0, output[-3000:]
    ee = objects(store, "execution_environments")["enclave-llm-ee"]
    assert ee["image"] == EXTRA["awx_execution_environment_image"]
    project = objects(store, "projects")["enclave.llm"]
    assert project["scm_url"] == EXTRA["awx_project_scm_url"] and project["scm_type"] == "git"
    assert project["default_environment"] == ee["id"]
    templates = objects(store, "job_templates")
    assert {name: t["playbook"] for name, t in templates.items()} == {
        "enclave.llm - site deploy": "site.yml",
        "enclave.llm - validate": "playbooks/validate.yml",
        "enclave.llm - plan": "playbooks/plan.yml",
        "enclave.llm - rolling update": "playbooks/rolling_update.yml",
        "enclave.llm - rollback": "playbooks/rolling_update.yml",
    }
    # Every template runs a playbook this repository has.
    assert [t["playbook"] for t in templates.values() if not (ROOT / t["playbook"]).is_file()] == []
    credential = objects(store, "credentials")["enclave-ssh"]["id"]
    for template in templates.values():
        assert template["project"] == project["id"] and template["inventory"] == 2
        assert template["execution_environment"] == ee["id"]
        assert store.associations[("job_templates", template["id"], "credentials")] == [credential]
    assert templates["enclave.llm - site deploy"]["ask_tags_on_launch"] is True
    assert json.loads(templates["enclave.llm - rollback"]["extra_vars"]) == {"rollback": True}


def test_rolling_update_surveys_ask_for_model_and_version(controller):
    store = controller["store"]
    templates = objects(store, "job_templates")
    update = store.surveys[templates["enclave.llm - rolling update"]["id"]]
    questions = {q["variable"]: q for q in update["spec"]}
    assert set(questions) == {"rolling_update_model", "rolling_update_model_path", "rolling_update_engine_version"}
    assert questions["rolling_update_model"]["type"] == "multiplechoice"
    # The choices are the inventory's vLLM-served models (the rolling update's hosts), not Ollama's.
    assert questions["rolling_update_model"]["choices"] == ["other-model", "tiny-llama"]
    assert questions["rolling_update_model_path"]["required"] is False
    assert questions["rolling_update_engine_version"]["required"] is False
    assert templates["enclave.llm - rolling update"]["survey_enabled"] is True
    rollback = store.surveys[templates["enclave.llm - rollback"]["id"]]
    assert [q["variable"] for q in rollback["spec"]] == ["rolling_update_model"]
    assert templates["enclave.llm - site deploy"]["id"] not in store.surveys


def test_second_apply_changes_nothing(controller):
    store = controller["store"]
    before = len(store.requests)
    rc, output, changed = run(controller)
    assert rc == 0, output[-3000:]
    assert changed == 0, output[-3000:]
    assert writes(store, before) == []


def test_check_mode_on_a_configured_controller_reports_no_change(controller):
    store = controller["store"]
    before = len(store.requests)
    rc, output, changed = run(controller, check=True)
    assert rc == 0, output[-3000:]
    assert changed == 0
    assert writes(store, before) == []


def test_missing_settings_fail_before_any_request(controller):
    store = controller["store"]
    before = len(store.requests)
    rc, output, _changed = run(controller, extra={"awx_execution_environment_image": "x"})
    assert rc != 0
    assert "Set awx_project_scm_url" in output
    assert len(store.requests) == before


def test_a_wrong_token_is_refused_by_the_double(controller):
    rc, output, _changed = run(controller, token="wrong")
    assert rc != 0
    assert "Invalid authentication credentials" in output
    request = urllib.request.Request(controller["url"] + "/api/v2/job_templates/")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)  # noqa: S310 (loopback double)
    assert caught.value.code == 401
