"""Helpers shared by the Molecule verifiers (testinfra) of enclave.llm.

Hosts are reached through podman exec (testinfra's podman backend), and
playbooks are re-run against the scenario's own inventory and Molecule's
ansible.cfg, so a test can prove what a second, a check-mode or a failing run
does.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import testinfra

SCENARIO_DIR = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path.cwd()))
EPHEMERAL_DIR = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", str(EPHEMERAL_DIR / "inventory"))
ANSIBLE_BIN = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / ".venv" / "bin"


@lru_cache(maxsize=None)
def inventory() -> dict:
    out = subprocess.run([_tool("ansible-inventory"), "-i", INVENTORY, "--list"], env=_env(),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def hostnames(group: str = "all") -> list[str]:
    inv = inventory()
    names: list[str] = []

    def walk(name: str) -> None:
        entry = inv.get(name, {})
        names.extend(h for h in entry.get("hosts", []) if h not in names)
        for child in entry.get("children", []):
            walk(child)

    walk(group)
    return names


def hostvars(name: str) -> dict:
    return inventory().get("_meta", {}).get("hostvars", {}).get(name, {})


def host(name: str):
    """A testinfra host reached with podman exec."""
    return testinfra.get_host(f"podman://{name}")


def _tool(name: str) -> str:
    candidate = ANSIBLE_BIN / name
    return str(candidate) if candidate.exists() else name


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(EPHEMERAL_DIR / "ansible.cfg"))
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


@dataclass
class PlaybookRun:
    rc: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP counters per host."""
        counts: dict[str, dict[str, int]] = {}
        for line in self.output.split("PLAY RECAP")[-1].splitlines():
            match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
            if match:
                counts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
        return counts

    def changed(self) -> int:
        return sum(c.get("changed", 0) for c in self.recap().values())


def run_playbook(playbook: str = "converge.yml", extra_vars: dict | None = None, check: bool = False,
                 limit: str | None = None, timeout: int = 900) -> PlaybookRun:
    cmd = [_tool("ansible-playbook"), "-i", INVENTORY, str(SCENARIO_DIR / playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd.append("--check")
    if limit:
        cmd += ["--limit", limit]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False)
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)
