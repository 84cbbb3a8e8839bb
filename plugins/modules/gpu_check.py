#!/usr/bin/python
# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_check
short_description: Assert that every NVIDIA GPU of a host is healthy and as expected
version_added: 0.1.0
author: enclave.llm maintainers (@enclave-llm)
description:
  - Reads the GPUs through NVML as M(enclave.llm.gpu_facts) does (or takes its facts in O(facts)) and checks
    health thresholds; fails with one message listing every failing GPU and each of its reasons.
  - A host where NVML is not available fails, with the reason.
  - Any NVML error other than "not supported" on a field of a GPU (for example a lost GPU) fails that GPU.
  - Thresholds left unset (V(null)) are not checked. Fields a GPU does not support (V(null) in the facts) pass.
extends_documentation_fragment:
  - enclave.llm.attributes
  - enclave.llm.attributes.INFO_MODULE
options:
  facts:
    description:
      - The result of M(enclave.llm.gpu_facts) (a dict with C(nvml_available), C(gpus), C(gpu_driver) and
        optionally C(reason)) to check instead of reading NVML again.
    type: dict
  expected_count:
    description: Number of GPUs the host must have.
    type: int
  expected_model:
    description: Regular expression every GPU name must match (C(re.search)), for example V(H100).
    type: str
  min_free_memory_mib:
    description: Minimum free memory per GPU in MiB.
    type: int
  max_temperature_c:
    description: Maximum GPU temperature in degrees Celsius.
    type: int
    default: 85
  max_uncorrectable_ecc:
    description:
      - Highest allowed count of uncorrectable ECC errors (volatile and aggregate), double-bit retired pages and
        uncorrectable remapped rows. A pending or failed row remapping always fails while this is set.
    type: int
    default: 0
  require_ecc:
    description: Fail a GPU that supports ECC but has it off.
    type: bool
    default: false
  require_persistence_mode:
    description: Fail a GPU whose persistence mode is off.
    type: bool
    default: true
  min_driver_version:
    description: Lowest acceptable driver version, compared numerically part by part (V(550.54.15)).
    type: str
  mig_mode:
    description: Required MIG mode on every GPU (V(true) on, V(false) off); not checked when unset.
    type: bool
  mig_profiles:
    description:
      - Required MIG layout of every GPU as profile names, order ignored, for example V(['3g.40gb', '2g.20gb']).
    type: list
    elements: str
requirements:
  - nvidia-ml-py (C(pynvml)) on the target, unless O(facts) is given
seealso:
  - module: enclave.llm.gpu_facts
"""

EXAMPLES = r"""
- name: Check the GPUs before serving
  enclave.llm.gpu_check:
    expected_count: 8
    expected_model: H100
    min_free_memory_mib: 75000
    max_temperature_c: 80
    min_driver_version: "550.54.15"

- name: Check facts read earlier
  enclave.llm.gpu_check:
    facts: "{{ gpu_read }}"
    mig_mode: true
    mig_profiles: [3g.40gb, 2g.20gb]
"""

RETURN = r"""
problems:
  description: Every failing rule, one line per GPU (host-wide rules on a line of their own); empty when healthy.
  returned: always
  type: list
  elements: str
  sample: ["GPU 1 (NVIDIA H100 80GB HBM3, 00000000:2A:00.0): ecc_uncorrected_volatile = 2 (allowed 0)"]
gpu_count:
  description: Number of GPUs checked.
  returned: always
  type: int
  sample: 8
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.enclave.llm.plugins.module_utils import nvml

RULES = ("expected_count", "expected_model", "min_free_memory_mib", "max_temperature_c", "max_uncorrectable_ecc",
         "require_ecc", "require_persistence_mode", "min_driver_version", "mig_mode", "mig_profiles")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "facts": {"type": "dict"},
            "expected_count": {"type": "int"},
            "expected_model": {"type": "str"},
            "min_free_memory_mib": {"type": "int"},
            "max_temperature_c": {"type": "int", "default": 85},
            "max_uncorrectable_ecc": {"type": "int", "default": 0},
            "require_ecc": {"type": "bool", "default": False},
            "require_persistence_mode": {"type": "bool", "default": True},
            "min_driver_version": {"type": "str"},
            "mig_mode": {"type": "bool"},
            "mig_profiles": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    facts = module.params["facts"]
    if facts is None:
        if not nvml.HAS_PYNVML:
            module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=str(nvml.PYNVML_IMPORT_ERROR))
        facts = nvml.collect()
    rules = {name: module.params[name] for name in RULES}
    problems = nvml.check(facts, rules)
    gpu_count = len(facts.get("gpus") or [])
    if problems:
        module.fail_json(
            msg=f"{len(problems)} GPU check(s) failed: " + " | ".join(problems),
            problems=problems,
            gpu_count=gpu_count,
        )
    module.exit_json(changed=False, problems=[], gpu_count=gpu_count)


if __name__ == "__main__":
    main()
