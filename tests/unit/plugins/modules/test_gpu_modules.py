"""enclave.llm.gpu_facts and gpu_check as Ansible runs them, against the fake NVML TEST DOUBLE.

These tests do not patch pynvml at all: ansible-playbook runs the modules through
AnsiballZ in a child process whose LD_LIBRARY_PATH holds the double built from
tests/doubles/fake_nvml/fake_nvml.c, so pynvml's own CDLL("libnvidia-ml.so.1")
loads it. The in-process tests run main() with pynvml handed the same library.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

import fake_nvml
from moduletest import run_module
from ansible_collections.enclave.llm.plugins.modules import gpu_check, gpu_facts

ROOT = Path(__file__).resolve().parents[4]
PLAYBOOK = Path(__file__).parent / "playbooks" / "gpu.yml"


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory):
    return fake_nvml.build(tmp_path_factory.mktemp("nvml")).parent


def playbook(lib_dir: Path, scenario: str, extra: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "result.json"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(ROOT),
               ANSIBLE_NOCOLOR="1", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               LD_LIBRARY_PATH=str(lib_dir), FAKE_NVML_SCENARIO=scenario)
    args = json.dumps(dict(extra, result_file=str(out)))
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                           str(PLAYBOOK), "-e", args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    return proc, (json.loads(out.read_text()) if out.exists() else {})


def test_playbook_healthy_facts_then_check_in_check_mode(lib_dir, tmp_path):
    proc, result = playbook(lib_dir, "healthy", {"check": {"expected_count": 2, "expected_model": "H100"}}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert result["facts"]["nvml_available"] is True
    uuids = [g["uuid"] for g in result["facts"]["gpus"]]
    assert uuids == ["GPU-6a1f0c2e-0000-4000-8000-000000000000", "GPU-6a1f0c2e-0000-4000-8000-000000000001"]
    assert result["facts"]["gpu_driver"]["version"] == "550.90.07"
    assert result["check"]["changed"] is False and result["check"]["gpu_count"] == 2


def test_playbook_check_fails_listing_each_gpu(lib_dir, tmp_path):
    proc, result = playbook(lib_dir, "ecc", {"check": {"expected_count": 4}}, tmp_path)
    assert proc.returncode == 2
    assert "2 GPU check(s) failed: host: expected 4 GPUs, found 2 | GPU 1 (NVIDIA H100 80GB HBM3" in proc.stdout
    assert "ecc_uncorrected_volatile = 2 (allowed 0)" in proc.stdout


def test_playbook_without_the_library_reports_no_nvml(tmp_path):
    if ctypes.util.find_library("nvidia-ml"):
        pytest.skip("a real libnvidia-ml is installed here; the 'no driver' case needs a host without one")
    empty = tmp_path / "empty"
    empty.mkdir()
    proc, result = playbook(empty, "healthy", {}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert result["facts"]["nvml_available"] is False
    assert result["facts"]["gpus"] == []
    assert "libnvidia-ml.so.1 was not found" in result["reason"]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.fixture
def in_process(lib_dir, monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlLib", ctypes.CDLL(str(lib_dir / fake_nvml.SONAME)))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    return lambda scenario: monkeypatch.setenv("FAKE_NVML_SCENARIO", scenario)


def test_facts_module_sets_facts(in_process):
    in_process("mig")
    result = run_module(gpu_facts, {}, check_mode=True)
    assert result["changed"] is False and result["nvml_available"] is True
    assert result["ansible_facts"]["gpus"][0]["mig_devices"][1]["name"].endswith("2g.20gb")


def test_facts_module_without_driver_does_not_fail(in_process):
    in_process("no_driver")
    result = run_module(gpu_facts, {})
    assert "failed" not in result and result["nvml_available"] is False
    assert "kernel driver is not loaded" in result["reason"]


def test_check_module_hot(in_process):
    in_process("hot")
    result = run_module(gpu_check, {"max_temperature_c": 80}, check_mode=True)
    assert result["failed"] is True
    assert result["msg"] == ("1 GPU check(s) failed: GPU 0 (NVIDIA H100 80GB HBM3, 00000000:18:00.0): "
                             "temperature 91 C above 80 C; persistence mode is off (enable nvidia-persistenced)")
    assert result["gpu_count"] == 2


def test_check_module_no_driver_fails_with_reason(in_process):
    in_process("no_driver")
    result = run_module(gpu_check, {})
    assert result["failed"] is True and "NVML is not available: the NVIDIA kernel driver is not loaded" in result["msg"]


def test_check_module_on_given_facts_reads_no_nvml(monkeypatch):
    monkeypatch.setattr(pynvml, "nvmlLib", None)
    monkeypatch.setattr(pynvml, "CDLL", lambda *a, **k: pytest.fail("gpu_check read NVML although facts were given"))
    facts = {"nvml_available": True, "gpu_driver": {"version": "535.104.05"},
             "gpus": [{"index": 0, "name": "NVIDIA L4", "pci_bus_id": "00000000:01:00.0", "memory_free_mib": 22000,
                       "temperature_c": 50, "persistence_mode": True}]}
    assert run_module(gpu_check, {"facts": facts})["changed"] is False
    result = run_module(gpu_check, {"facts": facts, "min_driver_version": "550"})
    assert result["problems"] == ["host: driver 535.104.05 is older than the required 550"]
