"""module_utils/nvml.py through the real pynvml against the fake NVML TEST DOUBLE.

tests/doubles/fake_nvml/ is a small C library, built here with gcc, that stands
in for the driver's libnvidia-ml.so.1 (no GPU or driver exists where these tests
run). pynvml is not patched beyond being handed that library: every call goes
through pynvml's ctypes bindings into C, as it would into the real NVML.
"""
from __future__ import annotations

import ctypes

import pynvml
import pytest

import fake_nvml
from ansible_collections.enclave.llm.plugins.module_utils import nvml


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory):
    return fake_nvml.build(tmp_path_factory.mktemp("fake_nvml"))


@pytest.fixture
def scenario(fake_lib, monkeypatch):
    """Point pynvml at the double (as if CDLL('libnvidia-ml.so.1') had found it) and choose a scenario."""
    monkeypatch.setattr(pynvml, "nvmlLib", ctypes.CDLL(str(fake_lib)))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})

    def choose(name: str) -> dict:
        monkeypatch.setenv("FAKE_NVML_SCENARIO", name)
        return nvml.collect()
    return choose


HEALTHY_RULES = dict(expected_count=None, expected_model=None, min_free_memory_mib=None, max_temperature_c=85,
                     max_uncorrectable_ecc=0, require_ecc=False, require_persistence_mode=True,
                     min_driver_version=None, mig_mode=None, mig_profiles=None)


def rules(**changes):
    return dict(HEALTHY_RULES, **changes)


def test_healthy_host_reports_every_field(scenario):
    facts = scenario("healthy")
    assert facts["nvml_available"] is True and facts["reason"] is None
    assert facts["gpu_driver"] == {"version": "550.90.07", "nvml_version": "12.550.90.07",
                                   "cuda_driver_version": "12.4", "errors": []}
    assert [g["index"] for g in facts["gpus"]] == [0, 1]
    gpu = facts["gpus"][1]
    assert gpu["name"] == "NVIDIA H100 80GB HBM3"
    assert gpu["uuid"] == "GPU-6a1f0c2e-0000-4000-8000-000000000001"
    assert gpu["pci_bus_id"] == "00000000:2A:00.0" and gpu["pci_device_id"] == "0x233010DE"
    assert gpu["memory_total_mib"] == 81559 and gpu["memory_free_mib"] == 81559 - 555
    assert gpu["memory_total_bytes"] == gpu["memory_used_bytes"] + gpu["memory_free_bytes"]
    assert (gpu["temperature_c"], gpu["power_draw_w"], gpu["power_limit_w"]) == (34, 71.0, 700.0)
    assert gpu["ecc_mode_current"] is True and gpu["ecc_uncorrected_volatile"] == 0
    # Hopper remaps rows instead of retiring pages: retired pages are unsupported (null), rows are counted
    assert gpu["retired_pages_double_bit"] is None and gpu["remapped_rows_uncorrectable"] == 0
    assert gpu["persistence_mode"] is True and gpu["compute_mode"] == "default"
    assert gpu["mig_mode_current"] is False and gpu["mig_devices"] == []
    assert gpu["nvlink"] == {"links": 18, "active": 18}
    assert gpu["errors"] == []
    assert nvml.check(facts, rules(expected_count=2, expected_model="H100", min_driver_version="550.54.15")) == []


def test_ecc_errors_fail_the_gpu_that_has_them(scenario):
    facts = scenario("ecc")
    gpu = facts["gpus"][1]
    assert (gpu["ecc_uncorrected_volatile"], gpu["ecc_uncorrected_aggregate"]) == (2, 5)
    assert gpu["remapped_rows_uncorrectable"] == 1 and gpu["remapped_rows_pending"] is True
    problems = nvml.check(facts, rules())
    assert len(problems) == 1 and problems[0].startswith("GPU 1 (NVIDIA H100 80GB HBM3, 00000000:2A:00.0): ")
    for reason in ("ecc_uncorrected_volatile = 2 (allowed 0)", "ecc_uncorrected_aggregate = 5 (allowed 0)",
                   "remapped_rows_uncorrectable = 1", "a row remapping is pending"):
        assert reason in problems[0]
    assert nvml.check(facts, rules(max_uncorrectable_ecc=5)) == ["GPU 1 (NVIDIA H100 80GB HBM3, 00000000:2A:00.0): "
                                                                 "a row remapping is pending: reset the GPU"]


def test_hot_gpu_and_persistence_off(scenario):
    facts = scenario("hot")
    assert facts["gpus"][0]["temperature_c"] == 91 and facts["gpus"][0]["persistence_mode"] is False
    problems = nvml.check(facts, rules(max_temperature_c=80))
    assert problems == ["GPU 0 (NVIDIA H100 80GB HBM3, 00000000:18:00.0): temperature 91 C above 80 C; "
                        "persistence mode is off (enable nvidia-persistenced)"]
    assert nvml.check(facts, rules(max_temperature_c=95, require_persistence_mode=False)) == []


def test_mig_devices_and_layout(scenario):
    facts = scenario("mig")
    gpu = facts["gpus"][0]
    assert gpu["mig_mode_current"] is True
    assert [(d["name"], d["gpu_instance_id"], d["memory_total_bytes"] // 2**20) for d in gpu["mig_devices"]] == [
        ("NVIDIA A100-SXM4-80GB MIG 3g.40gb", 1, 40192), ("NVIDIA A100-SXM4-80GB MIG 2g.20gb", 3, 19968)]
    assert gpu["mig_devices"][0]["uuid"].startswith("MIG-")
    assert nvml.check(facts, rules(mig_mode=True, mig_profiles=["2g.20gb", "3g.40gb"])) == []
    problems = nvml.check(facts, rules(mig_mode=False, mig_profiles=["7g.80gb"]))
    assert "MIG mode is on, expected off" in problems[0]
    assert "MIG layout ['2g.20gb', '3g.40gb'] differs from ['7g.80gb']" in problems[0]


def test_unsupported_fields_are_null_not_errors(scenario):
    facts = scenario("unsupported")
    gpu = facts["gpus"][0]
    for field in ("power_limit_w", "ecc_mode_current", "ecc_uncorrected_volatile", "ecc_uncorrected_aggregate",
                  "retired_pages_double_bit", "remapped_rows_uncorrectable", "mig_mode_current", "nvlink"):
        assert gpu[field] is None, field
    assert gpu["errors"] == [] and gpu["mig_devices"] == []
    assert gpu["name"] == "NVIDIA GeForce RTX 4090" and gpu["power_draw_w"] == 25.0
    # unsupported is not failing, but a rule that needs the feature still says so
    assert nvml.check(facts, rules()) == []
    assert nvml.check(facts, rules(mig_mode=True)) == [
        "GPU 0 (NVIDIA GeForce RTX 4090, 00000000:01:00.0): MIG mode is off, expected on"]


def test_a_lost_gpu_is_an_error_on_that_gpu_not_a_traceback(scenario):
    facts = scenario("lost")
    gpu = facts["gpus"][0]
    assert gpu["temperature_c"] is None
    assert gpu["errors"] == ["temperature: GPU is lost"]
    assert nvml.check(facts, rules()) == [
        "GPU 0 (NVIDIA H100 80GB HBM3, 00000000:18:00.0): NVML error on temperature: GPU is lost"]


def test_driver_not_loaded(scenario):
    facts = scenario("no_driver")
    assert facts == {"nvml_available": False, "gpus": [], "gpu_driver": {},
                     "reason": nvml.REASONS[nvml.NVML_ERROR_DRIVER_NOT_LOADED]}
    assert nvml.check(facts, rules()) == ["NVML is not available: " + nvml.REASONS[nvml.NVML_ERROR_DRIVER_NOT_LOADED]]


def test_host_rules_and_several_gpus_in_one_list(scenario):
    facts = scenario("healthy")
    problems = nvml.check(facts, rules(expected_count=8, expected_model="A100", min_driver_version="555.42.2",
                                       min_free_memory_mib=90000))
    assert problems[0] == "host: expected 8 GPUs, found 2"
    assert problems[1] == "host: driver 550.90.07 is older than the required 555.42.2"
    assert len(problems) == 4
    assert all("model 'NVIDIA H100 80GB HBM3' does not match 'A100'" in p and "81004 MiB free, below 90000 MiB" in p
               for p in problems[2:])


@pytest.mark.parametrize("text,expected", [("550.90.07", (550, 90, 7)), ("535.183.01", (535, 183, 1)),
                                           ("560", (560,)), ("r550", (550,))])
def test_version_tuple(text, expected):
    assert nvml.version_tuple(text) == expected


@pytest.mark.parametrize("value,expected", [(12040, "12.4"), (11080, "11.8"), (12090, "12.9"), (None, None)])
def test_cuda_version_text(value, expected):
    assert nvml.cuda_version_text(value) == expected
