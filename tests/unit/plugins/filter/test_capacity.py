"""Capacity filters against figures computed elsewhere: the sizing table and the worked cost example of the
reference guide (shared/seeds/003), published KV-cache sizes of Llama 3, and the H100's datasheet bandwidth."""
from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter import capacity as cap

LLAMA_8B = {"name": "llama-3.1-8b", "params_b": 8.03, "layers": 32, "kv_heads": 8, "head_dim": 128}
LLAMA_70B = {"name": "llama-3.1-70b", "params_b": 70.6, "layers": 80, "kv_heads": 8, "head_dim": 128}
H100_SXM = {"name": "H100 SXM", "memory_gb": 80, "bandwidth_tbps": 3.35}
A100_80 = {"name": "A100 80GB SXM", "memory_gb": 80, "bandwidth_tbps": 2.039}
GUIDE = {"input_tokens": 500, "output_tokens": 300, "input_usd_per_mtok": 2.50, "output_usd_per_mtok": 10.00}


@pytest.mark.parametrize("params_b,fp16,q8,q4", [
    (8, 16, 8, 5), (13, 26, 14, 8), (34, 68, 36, 20), (70, 140, 72, 40),
])
def test_weights_match_the_guide_sizing_table(params_b, fp16, q8, q4):
    """The guide's 'VRAM by model size' table (weights only), which rounds; 10% covers its rounding."""
    def weights(quant):
        return cap.vram_required({"params_b": params_b, "quantization": quant})["weights_gb"]
    assert weights("fp16") == pytest.approx(fp16, rel=0.001)
    assert weights("q8") == pytest.approx(q8, rel=0.10)
    assert weights("q4") == pytest.approx(q4, rel=0.10)


def test_weights_are_parameters_times_bits():
    assert cap.vram_required({"params_b": 70, "quantization": "bf16"})["weights_gb"] == 140.0
    assert cap.vram_required({"params_b": 70, "quantization": "fp8"})["weights_gb"] == 70.0
    assert cap.vram_required({"params_b": 70, "quantization": "awq"})["weights_gb"] == 37.19
    assert cap.vram_required({"params_b": 8, "bits_per_weight": 3.0})["weights_gb"] == 3.0


def test_kv_cache_matches_published_llama3_sizes():
    # Llama 3 8B: 128 KiB per token in fp16; 128k tokens of context = 16 GiB. 70B: 320 KiB per token.
    assert cap.kv_bytes_per_token(LLAMA_8B) == 128 * 1024
    assert cap.kv_bytes_per_token(LLAMA_70B) == 320 * 1024
    assert cap.kv_bytes_per_token(LLAMA_8B, "fp8") == 64 * 1024
    need = cap.vram_required(dict(LLAMA_8B, quantization="bf16"), context_tokens=131072, concurrency=1)
    assert need["kv_cache_gb"] * 1e9 / 2**30 == pytest.approx(16.0, abs=0.01)


def test_total_adds_weights_kv_and_overhead():
    need = cap.vram_required(dict(LLAMA_8B, quantization="bf16"), context_tokens=8192, concurrency=16)
    assert need["weights_gb"] == 16.06 and need["kv_cache_gb"] == 17.18
    assert need["overhead_gb"] == pytest.approx(0.1 * 16.06 + 1.0, abs=0.01)
    assert need["total_gb"] == pytest.approx(16.06 + 17.18 + 2.61, abs=0.02)
    assert need["total_gib"] == pytest.approx(need["total_gb"] * 1e9 / 2**30, abs=0.01)


def test_decode_ceiling_8b_bf16_on_h100_is_near_208():
    ceiling = cap.decode_ceiling_tokens_per_s(dict(LLAMA_8B, quantization="bf16"), 3.35)
    assert ceiling == pytest.approx(208, abs=1.5)


def test_the_guides_h100_and_a100_single_user_claims_exceed_the_bandwidth_ceiling():
    """The guide claims 300-400 tok/s single-user for 8B FP16 on an H100 and 150-200 on an A100; physics allows
    about 208 and 127. Our planner never uses those claims."""
    assert cap.decode_ceiling_tokens_per_s(dict(LLAMA_8B, quantization="fp16"), 3.35) < 300
    assert cap.decode_ceiling_tokens_per_s(dict(LLAMA_8B, quantization="fp16"), 2.039) < 150


def test_decode_ceiling_scales_with_gpus_context_and_active_parameters():
    model = dict(LLAMA_70B, quantization="fp16")
    one = cap.decode_ceiling_tokens_per_s(model, 3.35)
    assert cap.decode_ceiling_tokens_per_s(model, 3.35, gpus=2) == pytest.approx(2 * one, abs=0.2)
    assert cap.decode_ceiling_tokens_per_s(model, 3.35, context_tokens=32768) < one
    moe = {"params_b": 46.7, "active_params_b": 12.9, "quantization": "fp16"}  # Mixtral 8x7B
    assert cap.decode_ceiling_tokens_per_s(moe, 3.35) == pytest.approx(3.35e12 / (12.9e9 * 2), abs=0.1)


def test_gpus_required_reproduces_the_guides_server_count():
    """Guide: 100 users x 30 tok/s = 3000 tok/s; / 300 tok/s per A100 (batched 8B) = 10 A100s."""
    plan = cap.gpus_required(dict(LLAMA_8B, quantization="fp16"), A100_80, 100, 30, context_tokens=8192,
                             tokens_per_s_per_gpu=300)
    assert plan["gpus"] == 10 and plan["tensor_parallel"] == 1 and plan["meets_target"] is True
    assert plan["limited_by"] == "throughput"


def test_gpus_required_tensor_parallel_follows_memory():
    plan = cap.gpus_required(dict(LLAMA_70B, quantization="fp16"), H100_SXM, 8, 20, context_tokens=8192)
    # 141 GB of weights + overhead do not fit 2 x 72 GB usable: 4-way tensor parallel
    assert plan["tensor_parallel"] == 4 and plan["gpus"] % 4 == 0 and plan["meets_target"] is True
    small = cap.gpus_required(dict(LLAMA_70B, quantization="q4"), {"memory_gb": 24, "bandwidth_tbps": 1.008}, 8, 10,
                              context_tokens=8192)
    assert small["tensor_parallel"] == 4


def test_gpus_required_more_users_need_more_gpus():
    model = dict(LLAMA_8B, quantization="bf16")
    few = cap.gpus_required(model, H100_SXM, 10, 30, context_tokens=8192)
    many = cap.gpus_required(model, H100_SXM, 400, 30, context_tokens=8192)
    assert few["gpus"] == 1 and many["gpus"] > few["gpus"]
    assert many["per_user_tokens_per_s"] >= 30 and many["users_per_replica"] <= many["sequences_per_replica_max"]


def test_gpus_required_says_when_no_count_is_enough():
    plan = cap.gpus_required(dict(LLAMA_70B, quantization="fp16"), H100_SXM, 1, 500, context_tokens=4096)
    assert plan["meets_target"] is False and plan["gpus"] is None
    assert "below the target 500" in plan["limited_by"]


def test_breakeven_reproduces_the_guides_worked_example():
    result = cap.selfhost_breakeven(3933, GUIDE, requests_per_day=100000)
    assert result["api_usd_per_request"] == pytest.approx(0.00425)
    assert result["breakeven_requests_per_month"] == pytest.approx(925000, rel=0.001)
    assert result["breakeven_requests_per_day"] == pytest.approx(30800, rel=0.002)
    assert result["api_usd_per_month"] == 12750.0                       # guide: 100,000 requests/day = $12,750
    assert result["selfhost_saves_usd_per_month"] == pytest.approx(8800, rel=0.005)   # guide: ~ $8,800
    assert cap.selfhost_breakeven(3933, 0.00425, requests_per_day=1000)["api_usd_per_month"] == 127.5


@pytest.mark.parametrize("call,fragment", [
    (lambda: cap.vram_required({"quantization": "fp16"}), "params_b"),
    (lambda: cap.vram_required({"params_b": 8, "quantization": "int3"}), "quantization 'int3' is unknown"),
    (lambda: cap.vram_required({"params_b": -1}), "params_b must be > 0"),
    (lambda: cap.vram_required({"params_b": 8}, context_tokens=4096), "layers, kv_heads, head_dim needed"),
    (lambda: cap.vram_required("8b"), "must be a dict"),
    (lambda: cap.decode_ceiling_tokens_per_s({"params_b": 8}, 0), "bandwidth_tbps must be > 0"),
    (lambda: cap.gpus_required({"params_b": 8}, {"bandwidth_tbps": 3}, 1, 30), "memory_gb"),
    (lambda: cap.gpus_required({"params_b": 8}, {"memory_gb": 80}, 1, 30), "needs gpu.bandwidth_tbps"),
    (lambda: cap.selfhost_breakeven(3933, 0), "above 0"),
    (lambda: cap.selfhost_breakeven("lots", 0.1), "must be a number"),
])
def test_bad_input_is_named(call, fragment):
    with pytest.raises(AnsibleFilterError, match=fragment):
        call()


def test_filters_are_registered():
    assert set(cap.FilterModule().filters()) == {"vram_required", "gpus_required", "decode_ceiling_tokens_per_s",
                                                 "selfhost_breakeven", "capacity_fit_errors"}


def _facts(*gib, mig=None):
    gpus = [{"index": i, "memory_total_bytes": g * 2**30, "mig_devices": []} for i, g in enumerate(gib)]
    if mig:
        gpus[0]["mig_devices"] = [{"name": f"MIG {n}", "memory_total_bytes": g * 2**30} for n, g in mig]
    return {"nvml_available": True, "gpus": gpus}


def test_fit_places_models_on_power_of_two_gpu_groups():
    small = dict(LLAMA_8B, quantization="bf16", context_tokens=8192, concurrency=16)      # 35.85 GB
    big = dict(LLAMA_70B, quantization="fp16", context_tokens=8192, concurrency=8)        # ~170 GB
    assert cap.capacity_fit_errors([small], "infer01", _facts(80)) == []
    assert cap.capacity_fit_errors([big, small], "infer01", _facts(80, 80, 80, 80, 80)) == []
    errors = cap.capacity_fit_errors([big, small], "infer01", _facts(80, 80, 80, 80))
    assert len(errors) == 1 and errors[0].startswith("infer01: model llama-3.1-8b needs 35.85 GB")
    assert "the free GPUs give 0.0 GB usable (0 GPU/MIG device(s) x 0.9)" in errors[0]


def test_fit_uses_mig_devices_and_reports_no_driver():
    small = dict(LLAMA_8B, quantization="bf16", context_tokens=8192, concurrency=4)         # 22.96 GB
    assert cap.capacity_fit_errors([small], "h", _facts(80, mig=[("3g.40gb", 39.25), ("2g.20gb", 19.5)])) == []
    errors = cap.capacity_fit_errors([small, small], "h", _facts(80, mig=[("3g.40gb", 39.25), ("2g.20gb", 19.5)]))
    assert len(errors) == 1 and "needs 22.96 GB (weights 16.06 + KV cache 4.29 + overhead 2.61)" in errors[0]
    assert "give 18.8 GB usable (1 GPU/MIG device(s) x 0.9)" in errors[0]
    assert cap.capacity_fit_errors([small], "h", {"nvml_available": False, "reason": "driver not loaded"}) == [
        "h: capacity_models are set but no NVIDIA GPU answers: driver not loaded"]
    assert cap.capacity_fit_errors([], "h", {}) == []
