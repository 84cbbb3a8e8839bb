"""enclave.llm.nvidia_driver on Debian 12, userspace path (no GPU, no kernel module in a container).

What is proven: Debian's non-free components are added; the pinned NVML, nvidia-smi and
nvidia-persistenced are installed and held by an apt pin; nouveau is blacklisted in a file
modprobe parses; nvidia-persistenced is enabled; the NVML Python environment loads Debian's real
libnvidia-ml.so.1, and the role's gpu_facts reported nvml_available=false because no kernel driver
is loaded. NOT proven here: building/loading the DKMS module, the reboot path, fabric manager,
the container toolkit and gpu_check on a GPU (see the role README).
"""
from __future__ import annotations

import json

import labtest

HOST = "nv-gpu"
VERSION = "535.261.03"


def host():
    return labtest.host(HOST)


def test_debian_non_free_source_is_used():
    out = host().check_output("apt-cache policy nvidia-smi")
    assert "non-free" in out and f"{VERSION}-" in out


def test_pinned_packages_installed_and_held():
    h = host()
    for pkg in ("nvidia-smi", "libnvidia-ml1"):
        assert h.package(pkg).is_installed
        assert h.package(pkg).version.startswith(VERSION)
    assert h.package("nvidia-persistenced").is_installed
    policy = h.check_output("apt-cache policy libnvidia-ml1")
    assert f"{VERSION}-1 1001" in " ".join(policy.split())  # the version table shows the pin priority


def test_kernel_module_packages_not_installed_in_userspace_mode():
    assert not host().package("nvidia-kernel-dkms").is_installed


def test_nouveau_blacklist_is_parsed_by_modprobe():
    h = host()
    if h.exists("modprobe"):
        config = h.check_output("modprobe --showconfig")
        assert "blacklist nouveau" in config
        assert "options nouveau modeset=0" in config
    else:  # kmod is not in the image; read the file modprobe would read
        assert "blacklist nouveau" in h.file("/etc/modprobe.d/enclave-blacklist-nouveau.conf").content_string


def test_persistence_daemon_enabled():
    assert host().service("nvidia-persistenced").is_enabled


def test_real_nvml_loads_and_reports_no_driver():
    """pynvml in the role's venv finds Debian's libnvidia-ml.so.1 (not 'library not found') and NVML itself
    answers 'driver not loaded', as on a GPU host before the module is loaded."""
    run = host().run("/opt/enclave-llm/nvml/bin/python -c 'import pynvml; pynvml.nvmlInit()'")
    assert run.rc != 0
    assert "NVMLError_DriverNotLoaded" in run.stderr or "Driver Not Loaded" in run.stderr
    smi = host().run("nvidia-smi")
    assert smi.rc != 0 and "couldn't communicate with the NVIDIA driver" in smi.stdout + smi.stderr


def test_role_gpu_facts_reported_the_missing_driver():
    facts = json.loads(host().check_output("cat /var/tmp/enclave-gpu-facts.json"))
    assert facts["nvml_available"] is False and facts["changed"] is False
    assert "kernel driver is not loaded" in facts["reason"]
    assert facts["ansible_facts"]["gpus"] == []
