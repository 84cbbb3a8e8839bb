# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that turn the inventory into Prometheus scrape jobs and check the
monitoring settings before anything is deployed."""
from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")
_JOB = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]*$")
_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
SCHEMES = ("http", "https")

# Thresholds the alert rules take: variable -> (lowest, highest, what it is).
# None means unbounded; the lowest bound is exclusive where noted by a float > 0.
THRESHOLDS: dict[str, tuple[float | None, float | None, str]] = {
    "monitoring_gpu_memory_used_ratio_max": (0.0, 1.0, "a ratio between 0 and 1"),
    "monitoring_gpu_temperature_max_celsius": (1.0, 150.0, "degrees Celsius between 1 and 150"),
    "monitoring_request_error_ratio_max": (0.0, 1.0, "a ratio between 0 and 1"),
    "monitoring_ttft_p95_max_seconds": (0.001, None, "seconds above 0"),
    "monitoring_itl_p95_max_seconds": (0.0001, None, "seconds above 0"),
    "monitoring_haproxy_queue_max": (0.0, None, "a count of 0 or more"),
    "monitoring_audit_queue_max_messages": (0.0, None, "a count of 0 or more"),
    "monitoring_audit_shipping_lag_max_seconds": (1.0, None, "seconds, 1 or more"),
    "monitoring_certificate_expiry_days": (0.0, 3650.0, "days between 0 and 3650"),
    "monitoring_model_store_free_ratio_min": (0.0, 1.0, "a ratio between 0 and 1"),
}


def is_duration(value: Any) -> bool:
    """Whether ``value`` is a Prometheus duration such as ``90s``, ``5m`` or ``1h30m``."""
    return isinstance(value, str) and value != "" and bool(_DURATION.match(value))


def threshold_number(value: Any) -> float | None:
    """The number in ``value`` (an int, a float or a numeric string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _vars_of(hostvars: Any, host: str) -> Mapping:
    try:
        found = hostvars[host]
    except KeyError:
        return {}
    return found if isinstance(found, Mapping) else {}


def host_address(hostvars: Any, host: str, prefer: str | None = None) -> str:
    """The address a host's endpoints are reached at: ``prefer`` (e.g. the
    inference address), then ``monitoring_address``, ``ansible_host``, the name."""
    hv = _vars_of(hostvars, host)
    for key in (prefer, "monitoring_address", "ansible_host"):
        if key and hv.get(key):
            return str(hv[key])
    return host


def _target(address: str, port: int) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


def _zone(hostvars: Any, host: str) -> str:
    for group in _as_list(_vars_of(hostvars, host).get("group_names")):
        if isinstance(group, str) and group.startswith("zone_"):
            return group[len("zone_"):]
    return ""


def _port(value: Any) -> int | None:
    """The port in ``value`` (an int or a string of digits), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return value if isinstance(value, int) and 1 <= value <= 65535 else None


def _port_error(value: Any) -> bool:
    return _port(value) is None


def _models_of(hostvars: Any, host: str, models_var: str) -> Any:
    return _vars_of(hostvars, host).get(models_var, [])


def monitoring_config_errors(hostvars: Any, jobs: Any, server_host: Any = None, thresholds: Any = None,
                             for_overrides: Any = None, known_alerts: Any = None,
                             durations: Any = None) -> list[str]:
    """Check scrape jobs, the server host, thresholds and durations; one message per problem.

    Each message names the variable, the host or the alert, and what is expected, so a
    failing assertion reads as a one-line fix.
    """
    errors: list[str] = []
    if server_host is not None:
        if not isinstance(server_host, str) or not server_host:
            errors.append("monitoring_server_host is empty: put the storage/monitoring host in a group "
                          "'monitoring' or 'zone_storage', or set monitoring_server_host")
        elif server_host not in hostvars:
            errors.append(f"monitoring_server_host names '{server_host}', which is not in the inventory")
    seen: dict[str, str] = {}
    for job in _as_list(jobs):
        if not isinstance(job, Mapping):
            errors.append(f"scrape job {job!r} must be a mapping")
            continue
        name = job.get("job")
        field = job.get("field") or f"scrape job {name}"
        if not isinstance(name, str) or not _JOB.match(name):
            errors.append(f"{field}: job name {name!r} must match [a-zA-Z_][a-zA-Z0-9_-]*")
        if job.get("scheme", "http") not in SCHEMES:
            errors.append(f"{field}: scheme {job.get('scheme')!r} must be http or https")
        hosts = job.get("hosts")
        if not isinstance(hosts, (list, tuple)):
            errors.append(f"{field} must be a list of inventory host names, got {type(hosts).__name__}")
            continue
        models_var = job.get("models_var")
        if not models_var and _port_error(job.get("port")):
            errors.append(f"{field}: port {job.get('port')!r} must be an integer between 1 and 65535")
        for host in hosts:
            if not isinstance(host, str) or host not in hostvars:
                errors.append(f"{field} names '{host}', which is not in the inventory "
                              "(add the host to the inventory or remove it from the list)")
                continue
            if models_var:
                errors += _model_errors(hostvars, host, models_var, seen, job)
            elif _port(job.get("port")):
                target = _target(host_address(hostvars, host), _port(job["port"]))
                if target in seen and seen[target] != name:
                    errors.append(f"{field}: {host} target {target} is also scraped by job {seen[target]}")
                seen.setdefault(target, str(name))
    for var, value in (thresholds or {}).items():
        number = threshold_number(value)
        low, high, what = THRESHOLDS.get(var, (None, None, "a number"))
        if number is None:
            errors.append(f"{var} must be a number ({what}), got {value!r}")
        elif (low is not None and number < low) or (high is not None and number > high):
            errors.append(f"{var} must be {what}, got {value!r}")
    known = set(_as_list(known_alerts))
    if for_overrides is not None and not isinstance(for_overrides, Mapping):
        errors.append("monitoring_alert_for_overrides must be a mapping of alert name to duration")
    else:
        for alert, duration in (for_overrides or {}).items():
            if known and alert not in known:
                errors.append(f"monitoring_alert_for_overrides names alert '{alert}', which does not exist "
                              f"(known: {', '.join(sorted(known))})")
            if not is_duration(duration) and duration != "0s":
                errors.append(f"monitoring_alert_for_overrides.{alert} {duration!r} is not a Prometheus duration "
                              "such as 30s, 5m or 1h")
    for var, duration in (durations or {}).items():
        if not is_duration(duration) or duration in ("0s", "0m"):
            errors.append(f"{var} {duration!r} is not a Prometheus duration above zero, such as 15s or 1m")
    return errors


def _model_errors(hostvars: Any, host: str, models_var: str, seen: dict[str, str], job: Mapping) -> list[str]:
    errors: list[str] = []
    models = _models_of(hostvars, host, models_var)
    if not isinstance(models, (list, tuple)):
        return [f"{host}: {models_var} must be a list of {{name, port}} entries"]
    for index, model in enumerate(models):
        where = f"{host}: {models_var}[{index}]"
        if not isinstance(model, Mapping):
            errors.append(f"{where} must be a mapping with name and port")
            continue
        if not isinstance(model.get("name"), str) or not _MODEL.match(model["name"]):
            errors.append(f"{where}.name {model.get('name')!r} must be a served model name "
                          "(letters, digits and . _ : / -)")
        if _port_error(model.get("port")):
            errors.append(f"{where}.port {model.get('port')!r} must be an integer between 1 and 65535")
            continue
        target = _target(host_address(hostvars, host, job.get("address_var")), _port(model["port"]))
        if target in seen:
            errors.append(f"{where}: target {target} is already scraped by job {seen[target]}")
        seen.setdefault(target, str(job.get("job")))
    return errors


def monitoring_scrape_configs(hostvars: Any, jobs: Any, tls: Any = None) -> list[dict]:
    """Prometheus ``scrape_configs`` for ``jobs``, one target group per host (per model
    for jobs with ``models_var``), labelled with ``host``, ``zone`` and ``model``.

    A job is ``{job, hosts, port | models_var, scheme, metrics_path, client_cert,
    address_var}``; jobs without targets are left out. ``tls`` gives ``ca_file``,
    ``cert_file`` and ``key_file`` for https jobs.
    """
    errors = monitoring_config_errors(hostvars, jobs)
    if errors:
        raise AnsibleFilterError("; ".join(errors))
    tls = dict(tls or {})
    configs: list[dict] = []
    for job in _as_list(jobs):
        groups: list[dict] = []
        for host in job["hosts"]:
            labels = {"host": host}
            zone = _zone(hostvars, host)
            if zone:
                labels["zone"] = zone
            if job.get("models_var"):
                address = host_address(hostvars, host, job.get("address_var"))
                for model in _models_of(hostvars, host, job["models_var"]):
                    model_labels = dict(labels, model=model["name"], engine=job.get("engine", job["job"]))
                    groups.append({"targets": [_target(address, _port(model["port"]))], "labels": model_labels})
            else:
                groups.append({"targets": [_target(host_address(hostvars, host), _port(job["port"]))],
                               "labels": labels})
        if not groups:
            continue
        config: dict[str, Any] = {"job_name": job["job"], "scheme": job.get("scheme", "http"),
                                  "metrics_path": job.get("metrics_path", "/metrics"), "static_configs": groups}
        if config["scheme"] == "https" and tls.get("ca_file"):
            tls_config = {"ca_file": tls["ca_file"]}
            if job.get("client_cert") and tls.get("cert_file") and tls.get("key_file"):
                tls_config.update(cert_file=tls["cert_file"], key_file=tls["key_file"])
            config["tls_config"] = tls_config
        configs.append(config)
    return configs


class FilterModule:
    """enclave.llm monitoring filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "monitoring_scrape_configs": monitoring_scrape_configs,
            "monitoring_config_errors": monitoring_config_errors,
        }
