#!/usr/bin/python
# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: Read every NVIDIA GPU and the driver through NVML
version_added: 0.1.0
author: enclave.llm maintainers (@enclave-llm)
description:
  - Reads, through NVML (the C(pynvml) bindings from C(nvidia-ml-py)), for each GPU its index, name, UUID, PCI bus
    id, memory total/used/free, temperature, power draw and limit, utilization, ECC mode and uncorrectable ECC
    error counts, retired pages or remapped rows, persistence mode, compute mode, MIG mode and MIG devices, and
    NVLink state; and the driver, NVML and CUDA driver versions.
  - Sets C(ansible_facts.gpus), C(ansible_facts.gpu_driver) and C(ansible_facts.nvml_available).
  - A host without the NVIDIA driver (library missing, kernel module not loaded) returns RV(nvml_available=false)
    and RV(reason); the task does not fail. Fields a GPU does not support are V(null). Any other NVML error on a
    field is listed in that GPU's C(errors) (M(enclave.llm.gpu_check) fails on them).
extends_documentation_fragment:
  - enclave.llm.attributes
  - enclave.llm.attributes.INFO_MODULE
attributes:
  facts:
    support: full
    description: Sets C(ansible_facts.gpus), C(ansible_facts.gpu_driver), C(ansible_facts.nvml_available).
options: {}
requirements:
  - nvidia-ml-py (C(pynvml)) on the target
  - the NVIDIA driver's C(libnvidia-ml.so.1) for RV(nvml_available=true)
notes:
  - Reading takes a few milliseconds per GPU and changes nothing on the GPUs.
seealso:
  - module: enclave.llm.gpu_check
"""

EXAMPLES = r"""
- name: Read the GPUs
  enclave.llm.gpu_facts:

- name: Show the free memory of each GPU
  ansible.builtin.debug:
    msg: "{{ ansible_facts.gpus | map(attribute='memory_free_mib') | list }}"
  when: ansible_facts.nvml_available
"""

RETURN = r"""
nvml_available:
  description: Whether NVML answered (the driver is installed and loaded).
  returned: always
  type: bool
  sample: true
reason:
  description: Why NVML is not available; V(null) when it is.
  returned: always
  type: str
  sample: "the NVIDIA kernel driver is not loaded (no nvidia module: not installed, blocked by nouveau, or a reboot is pending)"
ansible_facts:
  description: The facts set.
  returned: always
  type: dict
  contains:
    nvml_available:
      description: As RV(nvml_available).
      type: bool
    gpu_driver:
      description: Driver versions; empty when NVML is not available.
      type: dict
      sample: {version: 550.90.07, nvml_version: 12.550.90.07, cuda_driver_version: '12.4', errors: []}
    gpus:
      description:
        - One entry per GPU, in NVML index order. Keys index, name, uuid, pci_bus_id, pci_device_id,
          memory_total_bytes, memory_used_bytes, memory_free_bytes, memory_total_mib, memory_free_mib, temperature_c,
          power_draw_w, power_limit_w, utilization_gpu_percent, utilization_memory_percent, ecc_mode_current,
          ecc_mode_pending, ecc_uncorrected_volatile, ecc_uncorrected_aggregate, retired_pages_single_bit,
          retired_pages_double_bit, remapped_rows_correctable, remapped_rows_uncorrectable, remapped_rows_pending,
          remapped_rows_failure, persistence_mode, compute_mode, mig_mode_current, mig_mode_pending, mig_devices
          (index, name, uuid, gpu_instance_id, compute_instance_id, memory_total_bytes, memory_used_bytes), nvlink
          (links, active), errors.
        - A field the GPU does not support is V(null).
      type: list
      elements: dict
      sample:
        - {index: 0, name: NVIDIA H100 80GB HBM3, uuid: GPU-6a1f0c2e-0000-4000-8000-000000000000,
           pci_bus_id: '00000000:18:00.0', memory_total_mib: 81559, memory_free_mib: 81004, temperature_c: 34,
           power_draw_w: 71.0, power_limit_w: 700.0, ecc_mode_current: true, ecc_uncorrected_volatile: 0,
           retired_pages_double_bit: null, remapped_rows_uncorrectable: 0, persistence_mode: true,
           compute_mode: default, mig_mode_current: false, mig_devices: [], nvlink: {links: 18, active: 18}, errors: []}
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.enclave.llm.plugins.module_utils import nvml


def main() -> None:
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    if not nvml.HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=str(nvml.PYNVML_IMPORT_ERROR))
    facts = nvml.collect()
    module.exit_json(
        changed=False,
        nvml_available=facts["nvml_available"],
        reason=facts["reason"],
        ansible_facts={"gpus": facts["gpus"], "gpu_driver": facts["gpu_driver"], "nvml_available": facts["nvml_available"]},
    )


if __name__ == "__main__":
    main()
