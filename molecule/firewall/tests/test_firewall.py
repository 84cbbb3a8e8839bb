"""Behaviour of enclave.llm.firewall on seven systemd hosts (podman network
10.233.0.0/16): management, DMZ, app, two inference hosts, storage, and a client
outside every zone.

Every host runs a TEST LISTENER (files/listen.py) on every probed port, standing
in for the platform's services, so that a probe tells the firewall's decision
apart from a missing service. The expected matrix below is written by hand from
the policy in roles/firewall/README.md and docs/design.md, not computed by the
role's code.

Tests that re-run the playbook come last: pytest keeps file order.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

import labtest

ZONE = {"fw-mgmt": "management", "fw-edge": "dmz", "fw-app": "app", "fw-infer1": "inference",
        "fw-infer2": "inference", "fw-store": "storage", "fw-client": None}
ADDRESS = {"fw-mgmt": "10.233.50.10", "fw-edge": "10.233.10.10", "fw-app": "10.233.20.10",
           "fw-infer1": "10.233.30.11", "fw-infer2": "10.233.30.12", "fw-store": "10.233.40.10",
           "fw-client": "10.233.60.10"}
FIREWALLED = [h for h, z in ZONE.items() if z]
TCP_PORTS = [22, 443, 514, 2049, 2514, 4180, 6379, 8000, 8080, 8265, 8443, 9090, 9093, 9100, 9835, 11434,
             29500, 29550]
UDP_PORTS = [514]
ENGINE_INTERNAL = {6379, 8265, 29500, 29550}  # Ray GCS, Ray dashboard, NCCL, vLLM ZeroMQ (data-parallel RPC)
ALL_ZONES = {"management", "dmz", "app", "inference", "storage"}
ANY = "any source"

# (source zone or ANY, destination zone, proto, port): the policy, by hand.
EXPECTED_OPEN = {
    # clients -> DMZ 443 (from anywhere, the client outside all zones included)
    (ANY, "dmz", "tcp", 443),
    # DMZ -> app: HTTPS, oauth2-proxy, gateway
    ("dmz", "app", "tcp", 443), ("dmz", "app", "tcp", 4180), ("dmz", "app", "tcp", 8443),
    # app -> inference: the engines' API ports the inventory declares (vLLM 8000 on infer1, Ollama 11434 on infer2)
    ("app", "inference", "tcp", 8000), ("app", "inference", "tcp", 11434),
    # inference -> storage: NFS
    ("inference", "storage", "tcp", 2049),
    # inference <-> inference: Ray, NCCL, ZeroMQ, multi-node serving is on in this scenario
    ("inference", "inference", "tcp", 6379), ("inference", "inference", "tcp", 8265),
    ("inference", "inference", "tcp", 29500), ("inference", "inference", "tcp", 29550),
    # published by the monitoring role: Prometheus and Alertmanager from management only
    ("management", "storage", "tcp", 9090), ("management", "storage", "tcp", 9093),
}
for zone in ALL_ZONES:
    # every zone -> log collector: syslog tcp+udp 514, RELP 2514
    EXPECTED_OPEN |= {(zone, "storage", "tcp", 514), (zone, "storage", "tcp", 2514), (zone, "storage", "udp", 514)}
    # management -> SSH everywhere
    EXPECTED_OPEN.add(("management", zone, "tcp", 22))
    # published by the monitoring role: node_exporter on every host, scraped from the storage zone
    EXPECTED_OPEN.add(("storage", zone, "tcp", 9100))


def expected(src: str, dst: str, proto: str, port: int) -> bool:
    return ((ANY, ZONE[dst], proto, port) in EXPECTED_OPEN
            or (ZONE[src] is not None and (ZONE[src], ZONE[dst], proto, port) in EXPECTED_OPEN))


def nft(host: str, args: str) -> str:
    return labtest.host(host).check_output(f"nft {args}")


def state(host: str) -> tuple[str, str]:
    """The running ruleset and the sha256 of the persisted file."""
    conf = labtest.host(host).file("/etc/nftables.conf").content
    return nft(host, "-s list ruleset"), hashlib.sha256(conf).hexdigest()


def probe_from(src: str, only: list[tuple[str, str, int]] | None = None,
               timeout: float = 1.0) -> dict[tuple[str, str, int], str]:
    items = [(ADDRESS[dst], port, proto) for dst in FIREWALLED if dst != src
             for proto, ports in (("tcp", TCP_PORTS), ("udp", UDP_PORTS)) for port in ports
             if only is None or (dst, proto, port) in only]
    out = subprocess.run(["podman", "exec", "-e", f"PROBE_TIMEOUT={timeout}", src, "python3", "/opt/fwtest/probe.py",
                          json.dumps(items)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    by_address = {a: h for h, a in ADDRESS.items()}
    return {(by_address[k.split()[0]], k.split()[2], int(k.split()[1])): v for k, v in json.loads(out).items()}


def test_matrix_every_source_destination_port():
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(ZONE)) as pool:
        results = dict(zip(ZONE, pool.map(probe_from, ZONE)))
    # A connection the firewall admits can miss a 1 s bound on a loaded machine (2 cores, many hosts):
    # every unexpected block is probed once more with a 5 s bound. An unexpected
    # open is never retried, an open is proof.
    retried = 0
    for src, rows in results.items():
        suspects = [key for key, result in rows.items() if result == "blocked" and expected(src, *key)]
        if suspects:
            retried += len(suspects)
            rows.update(probe_from(src, suspects, timeout=5.0))
    unexpected_open, unexpected_blocked, other, total, opens = [], [], [], 0, 0
    for src, rows in results.items():
        for (dst, proto, port), result in sorted(rows.items()):
            total += 1
            want = expected(src, dst, proto, port)
            if result == "open":
                opens += 1
                if not want:
                    unexpected_open.append(f"{src} -> {dst} {proto}/{port}")
            elif result == "blocked":
                if want:
                    unexpected_blocked.append(f"{src} -> {dst} {proto}/{port}")
            else:
                other.append(f"{src} -> {dst} {proto}/{port}: {result}")
    internal_from_outside = [(s, d, p) for s, rows in results.items() for (d, proto, p), r in rows.items()
                             if p in ENGINE_INTERNAL and ZONE[s] != "inference" and r != "blocked"]
    print(f"\nfirewall matrix: {total} probes ({len(ZONE)} sources x {len(FIREWALLED)} destinations x "
          f"{len(TCP_PORTS)} tcp + {len(UDP_PORTS)} udp ports, self excluded) in {time.monotonic() - started:.1f} s: "
          f"{opens} open, {total - opens - len(other)} blocked, unexpected opens {len(unexpected_open)}, "
          f"unexpected blocks {len(unexpected_blocked)}, other {len(other)}; {retried} block(s) re-probed with 5 s")
    assert total == len(ZONE) * len(FIREWALLED) * (len(TCP_PORTS) + len(UDP_PORTS)) - len(FIREWALLED) * (
        len(TCP_PORTS) + len(UDP_PORTS))
    assert not unexpected_open, unexpected_open
    assert not unexpected_blocked, unexpected_blocked
    assert not other, other
    assert not internal_from_outside
    assert opens > 0


def test_ruleset_shape_and_persistence_unit():
    for host in FIREWALLED:
        ruleset = nft(host, "list table inet enclave_filter")
        assert "policy drop" in ruleset and "ct state established,related accept" in ruleset
        assert 'iif "lo" accept' in ruleset
        assert "icmpv6 type echo-request limit rate 10/second" in ruleset
        assert 'log prefix "enclave-fw drop: "' in ruleset
        assert labtest.host(host).service("nftables").is_enabled


def test_flows_document_on_each_host_and_controller_matrix():
    doc = labtest.host("fw-store").file("/etc/enclave/firewall/flows.md").content_string
    assert "| management | storage | all | tcp | 9090, 9093 | prometheus | firewall_dependent_rules |" in doc
    assert "| inference | storage | all | tcp | 2049 | inference-to-storage | firewall flow |" in doc
    matrix = (labtest.EPHEMERAL_DIR / "firewall-matrix.md").read_text()
    assert "| any (clients) | dmz | all | tcp | 443 | clients-to-edge | firewall flow |" in matrix
    assert "| inference | inference | all | tcp | 6379, 8265, 29500, 29550 | inference-multinode | firewall flow |" in matrix
    print("\n" + matrix)


def test_broken_ruleset_is_rejected_and_running_rules_stay():
    before = {h: state(h) for h in ("fw-app",)}
    run = labtest.run_playbook(extra_vars={"firewall_raw_input_rules": ["tcp dport 22 acept"]}, limit="fw-app")
    assert run.rc != 0
    assert "nft -c -f" in run.output or "failed to validate" in run.output, run.output[-3000:]
    assert "acept" in run.output
    assert {h: state(h) for h in before} == before


def _extra_inventory(data: dict) -> str:
    """A second inventory source, merged with Molecule's (groups add up)."""
    path = tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False, dir=labtest.EPHEMERAL_DIR)
    yaml.safe_dump(data, path)
    path.close()
    return path.name


def _run_with_inventory(extra_inventory: dict, extra_vars: dict | None = None) -> labtest.PlaybookRun:
    cmd = [labtest._tool("ansible-playbook"), "-i", labtest.INVENTORY, "-i", _extra_inventory(extra_inventory),
           str(labtest.SCENARIO_DIR / "converge.yml")]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    proc = subprocess.run(cmd, env=labtest._env(), capture_output=True, text=True, timeout=300, check=False)
    return labtest.PlaybookRun(proc.returncode, proc.stdout + proc.stderr)


BAD = {
    "overlapping zone CIDRs": ({"firewall_zone_cidrs": {"management": ["10.233.0.0/16"]}}, None,
                               "zones app and management overlap in 10.233.20.0/24"),
    "port outside 1-65535": ({"firewall_rules": [{"name": "bad-port", "proto": "tcp", "ports": [70000],
                                                  "from_zones": ["app"]}]}, None,
                             "firewall_rules rule 'bad-port': port 70000 is outside 1-65535"),
    "unknown zone in a flow": ({"firewall_rules": [{"name": "to-backoffice", "proto": "tcp", "ports": [873],
                                                    "from_zones": ["backoffice"]}]}, None,
                               "firewall_rules rule 'to-backoffice': unknown zone 'backoffice' in from_zones"),
    "engine port outside inference": ({"firewall_rules": [{"name": "ray-for-all", "proto": "tcp", "ports": [6379],
                                                           "from_zones": ["app"]}]}, None,
                                      "rule 'ray-for-all': opens engine-internal port(s) 6379 to app"),
    "host in two zones": ({}, {"all": {"children": {"zone_app": {"hosts": {"fw-infer1": {}}}}}},
                          "host fw-infer1 is in more than one zone (zone_app, zone_inference)"),
    "address outside its zone": ({"firewall_address": "10.233.41.10"}, None,
                                 "host fw-store: address 10.233.41.10 is outside the CIDRs of zone storage"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inventory_fails_before_anything_is_applied(case):
    extra_vars, change, message = BAD[case]
    before = {h: state(h) for h in FIREWALLED}
    if change:
        run = _run_with_inventory(change, extra_vars)
    else:
        run = labtest.run_playbook(extra_vars=extra_vars)
    assert run.rc != 0
    assert message in run.output, run.output[-3000:]
    assert run.changed() == 0
    assert {h: state(h) for h in FIREWALLED} == before


# Runs limited to one host leave the controller's matrix of every host alone.
ONE_HOST = {"firewall_report_path": ""}


def test_controller_outside_management_is_refused_unless_forced():
    before = state("fw-app")
    run = labtest.run_playbook(extra_vars={"firewall_controller_address": "10.233.20.99"}, limit="fw-app")
    assert run.rc != 0
    assert "refusing to load a ruleset that drops new SSH connections from the controller (10.233.20.99 to port 22)" \
        in run.output, run.output[-3000:]
    assert state("fw-app") == before
    inside = labtest.run_playbook(extra_vars={**ONE_HOST, "firewall_controller_address": "10.233.50.7"}, limit="fw-app")
    assert inside.rc == 0 and inside.changed() == 0, inside.output[-3000:]
    forced = labtest.run_playbook(extra_vars={**ONE_HOST, "firewall_controller_address": "10.233.20.99",
                                              "firewall_force": True},
                                  limit="fw-app")
    assert forced.rc == 0 and forced.changed() == 0, forced.output[-3000:]


def test_table_removed_by_hand_is_loaded_again():
    loaded = nft("fw-app", "-s list table inet enclave_filter")
    nft("fw-app", "delete table inet enclave_filter")
    run = labtest.run_playbook(extra_vars=ONE_HOST, limit="fw-app")
    assert run.rc == 0 and run.changed() >= 1, run.output[-3000:]
    assert nft("fw-app", "-s list table inet enclave_filter") == loaded
    again = labtest.run_playbook(extra_vars=ONE_HOST, limit="fw-app")
    assert again.rc == 0 and again.changed() == 0


def test_ruleset_survives_a_restart():
    loaded = nft("fw-edge", "-s list table inet enclave_filter")
    subprocess.run(["podman", "restart", "fw-edge"], check=True, capture_output=True, timeout=120)
    for _attempt in range(60):  # bounded wait for systemd in the restarted host to run nftables.service
        boot = subprocess.run(["podman", "exec", "fw-edge", "systemctl", "is-active", "nftables"],
                              capture_output=True, text=True, timeout=30, check=False)
        if boot.stdout.strip() == "active":
            break
        time.sleep(1)
    assert nft("fw-edge", "-s list table inet enclave_filter") == loaded
    for _attempt in range(20):  # the listener, and the peers' neighbour caches (a new MAC), take a few seconds
        results = probe_from("fw-client")
        if results[("fw-edge", "tcp", 443)] == "open":
            break
        time.sleep(2)
    assert results[("fw-edge", "tcp", 443)] == "open"
    assert results[("fw-edge", "tcp", 22)] == "blocked"
