"""execution-environment.yml gives ansible-builder a valid build context with this
collection and its pinned Python requirements (the image itself is not built here:
no container registry is reachable)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
BIN = ROOT / ".venv" / "bin"


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    work = tmp_path_factory.mktemp("ee")
    shutil.copy(ROOT / "execution-environment.yml", work)
    shutil.copytree(ROOT / "awx", work / "awx")
    subprocess.run([str(BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path",
                    str(work / "dist"), str(ROOT)], check=True, capture_output=True, text=True)
    out = work / "context"
    proc = subprocess.run([str(BIN / "ansible-builder"), "create", "-f", str(work / "execution-environment.yml"),
                           "-c", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_ansible_builder_is_pinned():
    assert "ansible-builder" in pins(ROOT / "requirements.txt")


def test_containerfile_builds_from_a_replaceable_base_and_installs_offline(context):
    containerfile = (context / "Containerfile").read_text()
    assert 'ARG EE_BASE_IMAGE="localhost/enclave-ee-base:latest"' in containerfile
    assert "FROM $EE_BASE_IMAGE AS base" in containerfile
    assert 'ARG ANSIBLE_GALAXY_CLI_COLLECTION_OPTS="--no-deps --offline"' in containerfile
    assert "ansible-core==2.19.14" in containerfile
    assert "COPY _build /build" in containerfile


def test_the_collection_tarball_is_in_the_context(context):
    requirements = yaml.safe_load((context / "_build" / "requirements.yml").read_text())
    [entry] = requirements["collections"]
    assert entry["type"] == "file"
    tarball = context / "_build" / entry["name"].removeprefix("/build/")
    assert tarball.is_file()
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
        manifest = json.load(archive.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["namespace"] == "enclave" and manifest["collection_info"]["name"] == "llm"
    assert "roles/monitoring/tasks/main.yml" in names
    assert "plugins/filter/monitoring.py" in names
    # Development caches and build outputs stay out of the collection.
    assert not [n for n in names if n.startswith((".cache", "dist", ".venv", "tests/output", "molecule"))]


def test_python_requirements_match_the_controller_pins(context):
    ee = pins(context / "_build" / "requirements.txt")
    controller = pins(ROOT / "requirements.txt")
    assert {"ansible", "netaddr", "cryptography", "jinja2"} <= set(ee)
    for package, version in ee.items():
        assert controller.get(package) == version, package
    definition = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    core = definition["dependencies"]["ansible_core"]["package_pip"]
    assert core == f"ansible-core=={controller['ansible-core']}"
