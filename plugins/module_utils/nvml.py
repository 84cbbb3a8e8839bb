# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""NVML reading and GPU health rules shared by gpu_facts and gpu_check.

The one seam to the driver is the ``nvml`` object (the pynvml module by
default): unit tests hand the real pynvml a fake libnvidia-ml.so.1, so this
code runs its real path. A field a GPU does not support is ``None``; any other
NVML error on one field is recorded in that GPU's ``errors`` and never raised.
"""
from __future__ import annotations

import re
from typing import Any, Callable

try:
    import pynvml

    HAS_PYNVML = True
    PYNVML_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised on hosts without nvidia-ml-py
    pynvml = None
    HAS_PYNVML = False
    PYNVML_IMPORT_ERROR = exc

# NVML return codes and enums used here (nvml.h); kept local so the module
# imports even where pynvml is missing.
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_NO_PERMISSION = 4
NVML_TEMPERATURE_GPU = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVLINK_MAX_LINKS = 36  # NVML_NVLINK_MAX_LINKS in nvml.h 12.x; links a GPU lacks answer an error and are skipped
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}
MIB = 1024 * 1024

REASONS = {
    NVML_ERROR_LIBRARY_NOT_FOUND: "the NVML library libnvidia-ml.so.1 was not found: the NVIDIA driver is not installed",
    NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded (no nvidia module: not installed, "
    "blocked by nouveau, or a reboot is pending)",
    NVML_ERROR_NO_PERMISSION: "no permission to open the NVIDIA device files (/dev/nvidia*)",
}


def _code(exc: Exception) -> int | None:
    return getattr(exc, "value", None)


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Reader:
    """Calls NVML for one device, turning unsupported fields into None and other errors into notes."""

    def __init__(self, nvml: Any, errors: list[str]):
        self.nvml = nvml
        self.errors = errors

    def get(self, field: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            if _code(exc) in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT):
                return None
            self.errors.append(f"{field}: {exc}")
            return None


def cuda_version_text(value: int | None) -> str | None:
    """12040 -> '12.4' (NVML encodes the CUDA driver API version as 1000*major + 10*minor)."""
    if value is None:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


def _mig_devices(nvml: Any, handle: Any, read: _Reader) -> list[dict[str, Any]]:
    count = read.get("mig_device_count", nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
    devices = []
    for slot in range(count):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError as exc:
            if _code(exc) in (NVML_ERROR_NOT_FOUND, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED):
                continue
            read.errors.append(f"mig device {slot}: {exc}")
            continue
        memory = read.get("mig memory", nvml.nvmlDeviceGetMemoryInfo, mig)
        devices.append({
            "index": slot,
            "name": _text(read.get("mig name", nvml.nvmlDeviceGetName, mig)),
            "uuid": _text(read.get("mig uuid", nvml.nvmlDeviceGetUUID, mig)),
            "gpu_instance_id": read.get("mig gpu instance", nvml.nvmlDeviceGetGpuInstanceId, mig),
            "compute_instance_id": read.get("mig compute instance", nvml.nvmlDeviceGetComputeInstanceId, mig),
            "memory_total_bytes": memory.total if memory is not None else None,
            "memory_used_bytes": memory.used if memory is not None else None,
        })
    return devices


def _nvlink(nvml: Any, handle: Any, read: _Reader) -> dict[str, int] | None:
    links = active = 0
    for link in range(NVLINK_MAX_LINKS):
        state = read.get(f"nvlink {link}", nvml.nvmlDeviceGetNvLinkState, handle, link)
        if state is None:
            continue
        links += 1
        active += 1 if state else 0
    return {"links": links, "active": active} if links else None


def _retired_pages(nvml: Any, handle: Any, read: _Reader, cause: int) -> int | None:
    pages = read.get("retired_pages", nvml.nvmlDeviceGetRetiredPages, handle, cause)
    return None if pages is None else len(pages)


def read_gpu(nvml: Any, index: int) -> dict[str, Any]:
    """Everything gpu_facts reports about the GPU at ``index``."""
    errors: list[str] = []
    read = _Reader(nvml, errors)
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = read.get("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
    pci = read.get("pci", nvml.nvmlDeviceGetPciInfo, handle)
    util = read.get("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
    power = read.get("power_draw", nvml.nvmlDeviceGetPowerUsage, handle)
    limit = read.get("power_limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    ecc = read.get("ecc_mode", nvml.nvmlDeviceGetEccMode, handle)
    remapped = read.get("remapped_rows", nvml.nvmlDeviceGetRemappedRows, handle)
    mig = read.get("mig_mode", nvml.nvmlDeviceGetMigMode, handle)
    persistence = read.get("persistence_mode", nvml.nvmlDeviceGetPersistenceMode, handle)
    compute = read.get("compute_mode", nvml.nvmlDeviceGetComputeMode, handle)
    ecc_on = ecc is not None and bool(ecc[0])

    def ecc_count(counter: int) -> int | None:
        if ecc is None:
            return None
        return read.get("ecc_errors", nvml.nvmlDeviceGetTotalEccErrors, handle, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter)

    gpu = {
        "index": index,
        "name": _text(read.get("name", nvml.nvmlDeviceGetName, handle)),
        "uuid": _text(read.get("uuid", nvml.nvmlDeviceGetUUID, handle)),
        "pci_bus_id": _text(pci.busId) if pci is not None else None,
        "pci_device_id": f"0x{pci.pciDeviceId:08X}" if pci is not None else None,
        "memory_total_bytes": memory.total if memory is not None else None,
        "memory_used_bytes": memory.used if memory is not None else None,
        "memory_free_bytes": memory.free if memory is not None else None,
        "memory_total_mib": memory.total // MIB if memory is not None else None,
        "memory_free_mib": memory.free // MIB if memory is not None else None,
        "temperature_c": read.get("temperature", nvml.nvmlDeviceGetTemperature, handle, NVML_TEMPERATURE_GPU),
        "power_draw_w": round(power / 1000.0, 1) if power is not None else None,
        "power_limit_w": round(limit / 1000.0, 1) if limit is not None else None,
        "utilization_gpu_percent": util.gpu if util is not None else None,
        "utilization_memory_percent": util.memory if util is not None else None,
        "ecc_mode_current": ecc_on if ecc is not None else None,
        "ecc_mode_pending": bool(ecc[1]) if ecc is not None else None,
        "ecc_uncorrected_volatile": ecc_count(NVML_VOLATILE_ECC) if ecc_on else None,
        "ecc_uncorrected_aggregate": ecc_count(NVML_AGGREGATE_ECC) if ecc_on else None,
        "retired_pages_single_bit": _retired_pages(nvml, handle, read, NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
        "retired_pages_double_bit": _retired_pages(nvml, handle, read, NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        "remapped_rows_correctable": remapped[0] if remapped is not None else None,
        "remapped_rows_uncorrectable": remapped[1] if remapped is not None else None,
        "remapped_rows_pending": bool(remapped[2]) if remapped is not None else None,
        "remapped_rows_failure": bool(remapped[3]) if remapped is not None else None,
        "persistence_mode": bool(persistence) if persistence is not None else None,
        "compute_mode": COMPUTE_MODES.get(compute, str(compute)) if compute is not None else None,
        "mig_mode_current": bool(mig[0]) if mig is not None else None,
        "mig_mode_pending": bool(mig[1]) if mig is not None else None,
        "mig_devices": _mig_devices(nvml, handle, read) if mig is not None and mig[0] else [],
        "nvlink": _nvlink(nvml, handle, read),
    }
    gpu["errors"] = errors
    return gpu


def collect(nvml: Any = None) -> dict[str, Any]:
    """Read the driver and every GPU. Never raises for a missing driver: returns nvml_available false and why."""
    nvml = nvml if nvml is not None else pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        reason = REASONS.get(_code(exc), f"NVML could not start: {exc}")
        return {"nvml_available": False, "reason": reason, "gpus": [], "gpu_driver": {}}
    try:
        read = _Reader(nvml, [])
        driver = {
            "version": _text(read.get("driver_version", nvml.nvmlSystemGetDriverVersion)),
            "nvml_version": _text(read.get("nvml_version", nvml.nvmlSystemGetNVMLVersion)),
            "cuda_driver_version": cuda_version_text(read.get("cuda_version", nvml.nvmlSystemGetCudaDriverVersion)),
        }
        count = nvml.nvmlDeviceGetCount()
        gpus = [read_gpu(nvml, index) for index in range(count)]
        driver["errors"] = read.errors
        return {"nvml_available": True, "reason": None, "gpus": gpus, "gpu_driver": driver}
    except nvml.NVMLError as exc:
        return {"nvml_available": False, "reason": f"NVML failed while listing GPUs: {exc}", "gpus": [], "gpu_driver": {}}
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass


def version_tuple(text: str) -> tuple[int, ...]:
    """'550.90.07' -> (550, 90, 7); non-numeric parts are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", str(text)))


def check(facts: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    """Every health rule a host's GPUs break, one line per GPU (or per host-wide rule); empty when healthy."""
    if not facts.get("nvml_available"):
        return [f"NVML is not available: {facts.get('reason') or 'unknown reason'}"]
    problems: list[str] = []
    gpus = facts.get("gpus") or []
    driver = facts.get("gpu_driver") or {}
    expected_count = rules.get("expected_count")
    if expected_count is not None and len(gpus) != expected_count:
        problems.append(f"host: expected {expected_count} GPUs, found {len(gpus)}")
    minimum = rules.get("min_driver_version")
    if minimum and version_tuple(driver.get("version") or "0") < version_tuple(minimum):
        problems.append(f"host: driver {driver.get('version')} is older than the required {minimum}")
    for gpu in gpus:
        reasons = _gpu_problems(gpu, rules)
        if reasons:
            problems.append(f"GPU {gpu.get('index')} ({gpu.get('name')}, {gpu.get('pci_bus_id')}): " + "; ".join(reasons))
    return problems


def _gpu_problems(gpu: dict[str, Any], rules: dict[str, Any]) -> list[str]:
    reasons = [f"NVML error on {error}" for error in gpu.get("errors") or []]
    model = rules.get("expected_model")
    if model and not re.search(model, gpu.get("name") or ""):
        reasons.append(f"model {gpu.get('name')!r} does not match {model!r}")
    free_mib = rules.get("min_free_memory_mib")
    if free_mib is not None and gpu.get("memory_free_mib") is not None and gpu["memory_free_mib"] < free_mib:
        reasons.append(f"{gpu['memory_free_mib']} MiB free, below {free_mib} MiB")
    max_temp = rules.get("max_temperature_c")
    if max_temp is not None and gpu.get("temperature_c") is not None and gpu["temperature_c"] > max_temp:
        reasons.append(f"temperature {gpu['temperature_c']} C above {max_temp} C")
    max_ecc = rules.get("max_uncorrectable_ecc")
    if max_ecc is not None:
        for field in ("ecc_uncorrected_volatile", "ecc_uncorrected_aggregate", "retired_pages_double_bit",
                      "remapped_rows_uncorrectable"):
            value = gpu.get(field)
            if value is not None and value > max_ecc:
                reasons.append(f"{field} = {value} (allowed {max_ecc})")
        if gpu.get("remapped_rows_pending"):
            reasons.append("a row remapping is pending: reset the GPU")
        if gpu.get("remapped_rows_failure"):
            reasons.append("row remapping failed: the GPU needs service")
    if rules.get("require_ecc") and gpu.get("ecc_mode_current") is False:
        reasons.append("ECC is off")
    if rules.get("require_persistence_mode") and gpu.get("persistence_mode") is False:
        reasons.append("persistence mode is off (enable nvidia-persistenced)")
    mig_mode = rules.get("mig_mode")
    if mig_mode is not None and bool(gpu.get("mig_mode_current")) != mig_mode:
        reasons.append(f"MIG mode is {'on' if gpu.get('mig_mode_current') else 'off'}, expected {'on' if mig_mode else 'off'}")
    layout = rules.get("mig_profiles")
    if layout is not None:
        have = sorted(_mig_profile(d.get("name") or "") for d in gpu.get("mig_devices") or [])
        if have != sorted(layout):
            reasons.append(f"MIG layout {have} differs from {sorted(layout)}")
    return reasons


def _mig_profile(name: str) -> str:
    """'NVIDIA A100-SXM4-80GB MIG 3g.40gb' -> '3g.40gb'."""
    match = re.search(r"MIG\s+(\S+)", name)
    return match.group(1) if match else name
