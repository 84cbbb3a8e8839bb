"""A minimal Prometheus text-format registry (counters and histograms).

Small on purpose: the gateway needs eight metrics, and the exposition format is
simple, so it carries no client library. Names follow docs/design.md.
"""
from __future__ import annotations

import bisect

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    body = ",".join('{}="{}"'.format(n, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
                    for n, v in zip(names, values))
    return "{" + body + "}"


class Counter:
    def __init__(self, name: str, help_text: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help_text, labels
        self.values: dict[tuple[str, ...], float] = {}
        if not labels:
            self.values[()] = 0.0

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, value in sorted(self.values.items()):
            out.append(f"{self.name}{_labels(self.label_names, key)} {value:g}")
        return out


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                 labels: tuple[str, ...] = ()):
        self.name, self.help, self.buckets, self.label_names = name, help_text, buckets, labels
        self.series: dict[tuple[str, ...], list] = {}

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [[0] * len(self.buckets), 0.0, 0]
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.buckets):
            series[0][index] += 1
        series[1] += value
        series[2] += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, (counts, total, count) in sorted(self.series.items()):
            running = 0
            for bound, bucket in zip(self.buckets, counts):
                running += bucket
                names = self.label_names + ("le",)
                out.append(f"{self.name}_bucket{_labels(names, key + (f'{bound:g}',))} {running}")
            out.append(f"{self.name}_bucket{_labels(self.label_names + ('le',), key + ('+Inf',))} {count}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {total:.6f}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {count}")
        return out


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("enclave_gateway_requests_total", "Requests by model, HTTP status and decision.",
                                ("model", "status", "decision"))
        self.duration = Histogram("enclave_gateway_request_duration_seconds",
                                  "Time from request to the last byte of the response.")
        self.ttft = Histogram("enclave_gateway_time_to_first_token_seconds",
                              "Time from request to the first streamed event from the model.")
        self.tokens = Counter("enclave_gateway_tokens_total", "Tokens by model and kind (prompt, completion).",
                              ("model", "kind"))
        self.blocked = Counter("enclave_gateway_blocked_total", "Requests refused, by reason.", ("reason",))
        self.dlp = Counter("enclave_gateway_dlp_findings_total", "Sensitive values found in prompts, by type.",
                           ("type",))
        self.audit_records = Counter("enclave_gateway_audit_records_total", "Audit records written.")
        self.audit_errors = Counter("enclave_gateway_audit_write_errors_total",
                                    "Audit writes that failed (requests are refused while the log is unwritable).")

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in (self.requests, self.duration, self.ttft, self.tokens, self.blocked, self.dlp,
                       self.audit_records, self.audit_errors):
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()
