"""playbooks/plan.yml and the GPU capacity check of playbooks/validate.yml, run by ansible-playbook.

The inventory (inventory.yml here) is the reference guide's worked example. validate.yml reads
the GPUs with enclave.llm.gpu_facts on localhost through the fake NVML TEST DOUBLE
(tests/doubles/fake_nvml, two H100 80GB), loaded by pynvml through LD_LIBRARY_PATH.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

import fake_nvml

ROOT = Path(__file__).resolve().parents[3]
INVENTORY = Path(__file__).with_name("inventory.yml")


def ansible_playbook(playbook: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", **(env or {}))
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), str(ROOT / "playbooks" / playbook),
                           "-i", str(INVENTORY), "-e", f"ansible_python_interpreter={sys.executable}", *args],
                          cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300, check=False)


def test_plan_renders_the_report_and_chart_idempotently(tmp_path):
    out = tmp_path / "plan"
    first = ansible_playbook("plan.yml", "-e", f"capacity_output_dir={out}")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    report = (out / "capacity-plan.md").read_text()
    assert "| infer02 | 1 x H100 SXM | llama-3.1-8b | bf16 | 8192 x 16 | 16.06 | 17.18 | 35.85 | yes | 208.6 |" in report
    assert "| llama-3.1-70b-fp16 | fp16 | 4096 x 4 | 141.2 | 5.37 | 161.69 | NO (72.0 GB usable) |" in report
    assert "| infer01 | 2 x A100 80GB SXM | llama-3.1-70b-q4 | q4 | 8192 x 8 | 39.71 |" in report
    assert "Break-even: 925,412 requests per month (30,847 per day)" in report
    assert "API $12,750.00 per month, self-hosting saves $8,817.00 per month" in report
    with Image.open(out / "cost-vs-requests.png") as chart:
        assert chart.format == "PNG" and chart.size == (800, 450)
    second = ansible_playbook("plan.yml", "-e", f"capacity_output_dir={out}")
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout[-3000:]


def test_validate_fails_early_when_the_gpus_cannot_hold_the_model(tmp_path):
    lib = fake_nvml.build(tmp_path / "nvml")
    proc = ansible_playbook("validate.yml", env={"LD_LIBRARY_PATH": str(lib.parent), "FAKE_NVML_SCENARIO": "healthy"})
    assert proc.returncode == 2
    assert ("infer02: model llama-3.1-70b-fp16 needs 161.69 GB (weights 141.2 + KV cache" in
            " ".join(proc.stdout.split()))
    recap = {line.split()[0]: line for line in proc.stdout.splitlines() if " : ok=" in line}
    assert "failed=0" in recap["infer01"] and "failed=1" in recap["infer02"] and "failed=0" in recap["store01"]
    # infer02 stopped at the capacity check, before the PKI and monitoring checks
    assert "ok=2 " in recap["infer02"]
