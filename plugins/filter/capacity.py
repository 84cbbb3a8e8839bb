# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Capacity planning: VRAM, GPU counts, the bandwidth ceiling of decode, and the self-hosting break-even.

Units are in the names: GB are 10**9 bytes (as GPU vendors and the sizing table
in the reference guide count), GiB are 2**30, TB/s are 10**12 bytes per second.
These are physical bounds and planning estimates, not benchmarks: measure the
served model (tokens_per_s_per_gpu) once hardware exists and feed that back.
"""
from __future__ import annotations

import math
from typing import Any

from ansible.errors import AnsibleFilterError

GB = 10**9
GIB = 2**30

# Bits stored per weight, including the quantization scales each format keeps.
BITS_PER_WEIGHT = {
    "fp32": 32.0,
    "fp16": 16.0,
    "bf16": 16.0,
    "fp8": 8.0,
    "int8": 8.0,       # W8A8/W8A16 with per-channel scales (negligible overhead)
    "q8": 8.5,         # GGUF Q8_0: 32 int8 weights + one fp16 scale = 34 bytes per 32 weights
    "int4": 4.25,      # AWQ/GPTQ 4-bit, group size 128, fp16 scale and zero per group
    "q4": 4.5,         # GGUF Q4_0: 32 4-bit weights + one fp16 scale = 18 bytes per 32 weights
    "q4_k_m": 4.85,    # GGUF Q4_K_M, a mix of 4- and 6-bit blocks (llama.cpp's measured average)
}
KV_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "auto": "fp16",
           "fp8_e4m3": "fp8", "fp8_e5m2": "fp8", "w8a8": "int8", "gptq": "int4", "awq": "int4",
           "q8_0": "q8", "q4_0": "q4"}


def _number(value: Any, field: str, minimum: float = 0.0, allow_zero: bool = True) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{field} must be a number, got {value!r}") from None
    if math.isnan(number) or number < minimum or (not allow_zero and number == 0):
        raise AnsibleFilterError(f"{field} must be {'>' if not allow_zero else '>='} {minimum}, got {value!r}")
    return number


def _model(model: Any) -> dict[str, Any]:
    if not isinstance(model, dict):
        raise AnsibleFilterError(f"the model must be a dict with params_b and quantization, got {type(model).__name__}")
    if "params_b" not in model:
        raise AnsibleFilterError(f"model {model.get('name', '?')}: params_b (parameters in billions) is required")
    return model


def _key(value: Any, table: dict[str, Any], field: str) -> str:
    key = str(value).lower()
    key = ALIASES.get(key, key)
    if key not in table:
        raise AnsibleFilterError(f"{field} {value!r} is unknown; use one of {', '.join(sorted(table))}")
    return key


def bits_per_weight(model: dict[str, Any]) -> float:
    """The model's bits_per_weight if given, else the table's value for its quantization (default fp16)."""
    if model.get("bits_per_weight") is not None:
        return _number(model["bits_per_weight"], "bits_per_weight", allow_zero=False)
    return BITS_PER_WEIGHT[_key(model.get("quantization", "fp16"), BITS_PER_WEIGHT, "quantization")]


def weights_bytes(model: dict[str, Any], active: bool = False) -> float:
    """Bytes of weights; with active=True only the parameters read per token (active_params_b of a MoE model)."""
    params = model.get("active_params_b") if active and model.get("active_params_b") is not None else model["params_b"]
    return _number(params, "params_b", allow_zero=False) * 1e9 * bits_per_weight(model) / 8


def kv_bytes_per_token(model: dict[str, Any], kv_dtype: str | None = None) -> int:
    """2 (K and V) x layers x KV heads x head dimension x bytes of the KV dtype."""
    missing = [f for f in ("layers", "kv_heads", "head_dim") if model.get(f) is None]
    if missing:
        raise AnsibleFilterError(f"model {model.get('name', '?')}: {', '.join(missing)} needed to size the KV cache "
                                 "(from the model's config.json: num_hidden_layers, num_key_value_heads, head_dim)")
    dtype = _key(kv_dtype or model.get("kv_dtype", "fp16"), KV_BYTES, "kv_dtype")
    return 2 * int(model["layers"]) * int(model["kv_heads"]) * int(model["head_dim"]) * KV_BYTES[dtype]


def vram_required(model: dict[str, Any], context_tokens: int | None = None, concurrency: int | None = None,
                  kv_dtype: str | None = None, overhead_ratio: float = 0.10, overhead_gb: float = 1.0) -> dict[str, Any]:
    """Memory to serve ``model``: weights + KV cache (context_tokens x concurrency) + runtime overhead.

    The overhead is overhead_ratio x weights (activations, CUDA graphs, fragmentation) plus overhead_gb
    (the CUDA context and the engine). Context and concurrency default to the model's own keys, then 0 and 1.
    """
    model = _model(model)
    context = int(_number(context_tokens if context_tokens is not None else model.get("context_tokens", 0),
                          "context_tokens"))
    sequences = int(_number(concurrency if concurrency is not None else model.get("concurrency", 1), "concurrency"))
    weights = weights_bytes(model)
    per_token = kv_bytes_per_token(model, kv_dtype) if context and sequences else 0
    kv = per_token * context * sequences
    overhead = _number(overhead_ratio, "overhead_ratio") * weights + _number(overhead_gb, "overhead_gb") * GB
    total = weights + kv + overhead
    return {
        "bits_per_weight": bits_per_weight(model),
        "weights_gb": round(weights / GB, 2),
        "kv_bytes_per_token": per_token,
        "kv_cache_gb": round(kv / GB, 2),
        "overhead_gb": round(overhead / GB, 2),
        "total_gb": round(total / GB, 2),
        "total_gib": round(total / GIB, 2),
        "context_tokens": context,
        "concurrency": sequences,
    }


def decode_ceiling_tokens_per_s(model: dict[str, Any], bandwidth_tbps: float, gpus: int = 1,
                                context_tokens: int = 0, kv_dtype: str | None = None) -> float:
    """Physical ceiling of single-stream decode: every token reads all (active) weights once from GPU memory,
    plus the KV cache of its context, so tokens/s <= bandwidth / bytes read per token. With tensor parallelism
    over ``gpus`` the bandwidths add up (ideal; real scaling is lower). Real engines reach 60-85% of it."""
    model = _model(model)
    bandwidth = _number(bandwidth_tbps, "bandwidth_tbps", allow_zero=False) * 1e12
    count = int(_number(gpus, "gpus", minimum=1))
    per_token = weights_bytes(model, active=True)
    if context_tokens:
        per_token += kv_bytes_per_token(model, kv_dtype) * int(_number(context_tokens, "context_tokens"))
    return round(bandwidth * count / per_token, 1)


def _power_of_two_at_least(value: float) -> int:
    size = 1
    while size < value:
        size *= 2
    return size


def gpus_required(model: dict[str, Any], gpu: dict[str, Any], concurrency: int, tokens_per_s_per_user: float,
                  context_tokens: int | None = None, kv_dtype: str | None = None, gpu_memory_utilization: float = 0.90,
                  tokens_per_s_per_gpu: float | None = None, efficiency: float = 0.5,
                  overhead_ratio: float = 0.10, overhead_gb: float = 1.0, max_replicas: int = 4096) -> dict[str, Any]:
    """GPUs to serve ``concurrency`` users at ``tokens_per_s_per_user`` each.

    Each replica gets the smallest power-of-two tensor-parallel size whose usable memory
    (memory x gpu_memory_utilization) holds the weights, overhead and one full-context sequence. Replicas are
    then added until the users fit into the replicas' KV cache and each user gets the target rate. The rate
    is tokens_per_s_per_gpu (measured, preferred) x GPUs of the replica / users on it, or, unmeasured, a
    bandwidth estimate: each batched decode step reads the weights once plus every sequence's KV cache, times
    ``efficiency``.
    """
    model = _model(model)
    if not isinstance(gpu, dict) or (gpu.get("memory_gb") is None and gpu.get("memory_gib") is None):
        raise AnsibleFilterError("gpu must be a dict with memory_gb (or memory_gib) and bandwidth_tbps")
    memory = (_number(gpu["memory_gb"], "gpu.memory_gb", allow_zero=False) * GB if gpu.get("memory_gb") is not None
              else _number(gpu["memory_gib"], "gpu.memory_gib", allow_zero=False) * GIB)
    usable = memory * _number(gpu_memory_utilization, "gpu_memory_utilization", allow_zero=False)
    users = int(_number(concurrency, "concurrency", minimum=1))
    target = _number(tokens_per_s_per_user, "tokens_per_s_per_user", allow_zero=False)
    context = int(_number(context_tokens if context_tokens is not None else model.get("context_tokens", 0),
                          "context_tokens"))
    base = vram_required(model, context_tokens=0, concurrency=1, overhead_ratio=overhead_ratio, overhead_gb=overhead_gb)
    fixed = base["total_gb"] * GB
    kv_seq = kv_bytes_per_token(model, kv_dtype) * context if context else 0
    tensor_parallel = _power_of_two_at_least((fixed + kv_seq) / usable)
    room = tensor_parallel * usable - fixed
    seq_capacity = int(room // kv_seq) if kv_seq else users
    weights_read = weights_bytes(model, active=True)
    bandwidth = _number(gpu.get("bandwidth_tbps") or 0, "gpu.bandwidth_tbps") * 1e12
    if tokens_per_s_per_gpu is None and not bandwidth:
        raise AnsibleFilterError("gpus_required needs gpu.bandwidth_tbps or a measured tokens_per_s_per_gpu")

    def per_user_rate(batch: int) -> float:
        if tokens_per_s_per_gpu is not None:
            return _number(tokens_per_s_per_gpu, "tokens_per_s_per_gpu", allow_zero=False) * tensor_parallel / batch
        step_s = (weights_read + batch * kv_seq) / (tensor_parallel * bandwidth)
        return efficiency / step_s

    for replicas in range(1, int(max_replicas) + 1):
        batch = math.ceil(users / replicas)
        if batch > seq_capacity:
            continue
        rate = per_user_rate(batch)
        if rate >= target:
            return {
                "gpus": replicas * tensor_parallel, "tensor_parallel": tensor_parallel, "replicas": replicas,
                "users_per_replica": batch, "sequences_per_replica_max": seq_capacity,
                "per_user_tokens_per_s": round(rate, 1), "aggregate_tokens_per_s": round(rate * users, 1),
                "meets_target": True,
                "limited_by": "memory" if math.ceil(users / seq_capacity) == replicas else "throughput",
            }
    best = per_user_rate(1)
    return {"gpus": None, "tensor_parallel": tensor_parallel, "replicas": None, "users_per_replica": None,
            "sequences_per_replica_max": seq_capacity, "per_user_tokens_per_s": round(best, 1),
            "aggregate_tokens_per_s": None, "meets_target": False,
            "limited_by": f"a single user gets at most {best:.1f} tokens/s on {tensor_parallel} GPU(s), below the "
                          f"target {target:g}: use a smaller quantization, faster GPUs or more tensor parallelism"}


def api_usd_per_request(input_tokens: float, output_tokens: float, input_usd_per_mtok: float,
                        output_usd_per_mtok: float) -> float:
    """Cost of one API request from its token counts and the per-million-token prices."""
    return (_number(input_tokens, "input_tokens") * _number(input_usd_per_mtok, "input_usd_per_mtok")
            + _number(output_tokens, "output_tokens") * _number(output_usd_per_mtok, "output_usd_per_mtok")) / 1e6


def selfhost_breakeven(selfhost_usd_per_month: float, api: Any, requests_per_day: float | None = None,
                       days_per_month: float = 30) -> dict[str, Any]:
    """Monthly request volume at which a fixed self-hosting cost equals a per-request API cost.

    ``api`` is the API cost of one request in USD, or a dict with input_tokens, output_tokens,
    input_usd_per_mtok and output_usd_per_mtok. With requests_per_day, also both monthly costs and the saving.
    """
    monthly = _number(selfhost_usd_per_month, "selfhost_usd_per_month")
    if isinstance(api, dict):
        per_request = api_usd_per_request(api.get("input_tokens"), api.get("output_tokens"),
                                          api.get("input_usd_per_mtok"), api.get("output_usd_per_mtok"))
    else:
        per_request = _number(api, "api USD per request")
    if per_request <= 0:
        raise AnsibleFilterError("the API cost per request must be above 0 to break even")
    days = _number(days_per_month, "days_per_month", allow_zero=False)
    per_month = monthly / per_request
    result: dict[str, Any] = {
        "api_usd_per_request": round(per_request, 8),
        "breakeven_requests_per_month": round(per_month),
        "breakeven_requests_per_day": round(per_month / days),
    }
    if requests_per_day is not None:
        api_monthly = _number(requests_per_day, "requests_per_day") * days * per_request
        result.update({
            "requests_per_day": requests_per_day,
            "api_usd_per_month": round(api_monthly, 2),
            "selfhost_usd_per_month": round(monthly, 2),
            "selfhost_saves_usd_per_month": round(api_monthly - monthly, 2),
        })
    return result


def _gpu_slots(gpus: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """(memory bytes, label) of every place a model can run: each MIG device of a GPU in MIG mode, else the GPU."""
    slots = []
    for gpu in gpus:
        migs = gpu.get("mig_devices") or []
        if migs:
            slots.extend((float(m.get("memory_total_bytes") or 0), f"GPU {gpu.get('index')} {m.get('name')}") for m in migs)
        elif gpu.get("memory_total_bytes"):
            slots.append((float(gpu["memory_total_bytes"]), f"GPU {gpu.get('index')}"))
    return sorted(slots, reverse=True)


def capacity_fit_errors(models: Any, host: str, gpu_facts: dict[str, Any], gpu_memory_utilization: float = 0.90,
                        overhead_ratio: float = 0.10, overhead_gb: float = 1.0) -> list[str]:
    """Why the GPUs of ``host`` (gpu_facts' facts) cannot hold its ``models``; empty when they can.

    Models are placed largest first, each on the fewest (a power of two) still-free GPUs or MIG devices whose
    usable memory (the smallest of them x count x gpu_memory_utilization) holds its vram_required total.
    """
    if not models:
        return []
    if not isinstance(models, list):
        raise AnsibleFilterError(f"{host}: capacity_models must be a list of models")
    if not gpu_facts or not gpu_facts.get("nvml_available"):
        reason = (gpu_facts or {}).get("reason") or "no GPU facts"
        return [f"{host}: capacity_models are set but no NVIDIA GPU answers: {reason}"]
    free = _gpu_slots(gpu_facts.get("gpus") or [])
    utilization = _number(gpu_memory_utilization, "gpu_memory_utilization", allow_zero=False)
    needs = [(vram_required(m, overhead_ratio=overhead_ratio, overhead_gb=overhead_gb), m) for m in models]
    errors = []
    for need, model in sorted(needs, key=lambda item: item[0]["total_gb"], reverse=True):
        size = 1
        placed = False
        while size <= len(free):
            chosen = free[:size]
            if size * chosen[-1][0] * utilization >= need["total_gb"] * GB:
                free = free[size:]
                placed = True
                break
            size *= 2
        if not placed:
            usable = sum(slot[0] for slot in free) * utilization / GB
            errors.append(
                f"{host}: model {model.get('name', '?')} needs {need['total_gb']} GB (weights {need['weights_gb']} + KV "
                f"cache {need['kv_cache_gb']} + overhead {need['overhead_gb']}) but the free GPUs give "
                f"{usable:.1f} GB usable ({len(free)} GPU/MIG device(s) x {utilization:g}): choose a smaller "
                "quantization or context, fewer concurrent sequences, or more GPUs")
    return errors


class FilterModule:
    """enclave.llm capacity planning filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "vram_required": vram_required,
            "gpus_required": gpus_required,
            "decode_ceiling_tokens_per_s": decode_ceiling_tokens_per_s,
            "selfhost_breakeven": selfhost_breakeven,
            "capacity_fit_errors": capacity_fit_errors,
        }
