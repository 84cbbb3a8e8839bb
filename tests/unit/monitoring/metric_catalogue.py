"""Metric names each deployed exporter emits, for checking the dashboard and rules.

Sources: docs/design.md ("Metrics the platform emits"), checked against
- vLLM: vllm/v1/metrics/loggers.py (PrometheusStatLogger) and docs/design/metrics.md;
  kv_cache_usage_perc replaced gpu_cache_usage_perc (deprecated in 0.9),
  inter_token_latency_seconds replaced time_per_output_token_seconds in newer
  releases; queries read either name;
- HAProxy 2.6 (Debian 12): addons/promex/service-prometheus.c, names
  haproxy_<backend|server>_<field>, labels proxy, server, state, code;
- nvidia_gpu_exporter: names built from nvidia-smi query fields (docs/METRICS.md,
  internal/integration/testdata/*.metrics);
- node_exporter 1.5 (Debian 12): the filesystem collector;
- the gateway, audit shipping and certificate metrics are this platform's own
  (docs/design.md), the latter two through node_exporter's textfile collector;
- Prometheus itself: ``up`` per target, ``ALERTS`` for firing alerts.
Histograms are listed by family name; ``_bucket``, ``_sum`` and ``_count`` follow.
"""
from __future__ import annotations

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

CATALOGUE: dict[str, dict[str, str]] = {
    "vllm": {
        "vllm:num_requests_running": GAUGE,
        "vllm:num_requests_waiting": GAUGE,
        "vllm:gpu_cache_usage_perc": GAUGE,
        "vllm:kv_cache_usage_perc": GAUGE,
        "vllm:time_to_first_token_seconds": HISTOGRAM,
        "vllm:inter_token_latency_seconds": HISTOGRAM,
        "vllm:time_per_output_token_seconds": HISTOGRAM,
        "vllm:e2e_request_latency_seconds": HISTOGRAM,
        "vllm:prompt_tokens_total": COUNTER,
        "vllm:generation_tokens_total": COUNTER,
        "vllm:request_success_total": COUNTER,
    },
    "haproxy": {
        "haproxy_backend_active_servers": GAUGE,
        "haproxy_server_status": GAUGE,
        "haproxy_backend_current_queue": GAUGE,
        "haproxy_backend_http_responses_total": COUNTER,
        "haproxy_server_http_responses_total": COUNTER,
        "haproxy_server_check_failures_total": COUNTER,
    },
    "gateway": {
        "enclave_gateway_requests_total": COUNTER,
        "enclave_gateway_request_duration_seconds": HISTOGRAM,
        "enclave_gateway_time_to_first_token_seconds": HISTOGRAM,
        "enclave_gateway_tokens_total": COUNTER,
        "enclave_gateway_blocked_total": COUNTER,
        "enclave_gateway_dlp_findings_total": COUNTER,
        "enclave_gateway_audit_records_total": COUNTER,
        "enclave_gateway_audit_write_errors_total": COUNTER,
    },
    "audit_shipping (node_exporter textfile)": {
        "enclave_audit_queue_messages": GAUGE,
        "enclave_audit_shipping_failures_total": COUNTER,
        "enclave_audit_last_shipped_timestamp_seconds": GAUGE,
        "enclave_audit_shipped_lines_total": COUNTER,
        "enclave_audit_unrecoverable_events_total": COUNTER,
    },
    "nvidia_gpu_exporter": {
        "nvidia_smi_gpu_info": GAUGE,
        "nvidia_smi_memory_used_bytes": GAUGE,
        "nvidia_smi_memory_total_bytes": GAUGE,
        "nvidia_smi_temperature_gpu": GAUGE,
        "nvidia_smi_utilization_gpu_ratio": GAUGE,
        "nvidia_smi_ecc_errors_uncorrected_volatile_total": GAUGE,
    },
    "node_exporter": {
        "node_filesystem_avail_bytes": GAUGE,
        "node_filesystem_size_bytes": GAUGE,
        "node_filesystem_readonly": GAUGE,
    },
    "monitoring role (node_exporter textfile)": {
        "enclave_certificate_expiry_timestamp_seconds": GAUGE,
        "enclave_certificate_expiry_collector_errors": GAUGE,
        "enclave_certificate_expiry_collector_last_run_timestamp_seconds": GAUGE,
        "enclave_gpu_expected_count": GAUGE,
    },
    "prometheus": {
        "up": GAUGE,
        "ALERTS": GAUGE,
    },
}


def known_metrics() -> dict[str, str]:
    """Every series name a query may use, mapped to the exporter that emits it."""
    names: dict[str, str] = {}
    for exporter, metrics in CATALOGUE.items():
        for name, kind in metrics.items():
            names[name] = exporter
            if kind == HISTOGRAM:
                for suffix in ("_bucket", "_sum", "_count"):
                    names[name + suffix] = exporter
    return names
