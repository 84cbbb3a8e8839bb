# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Draw monthly cost against requests/day, self-hosted and API, for playbooks/plan.yml.

Usage: capacity_chart.py DATA.json. DATA holds output (PNG path), selfhost_usd_per_month,
api_usd_per_request, days_per_month, breakeven_requests_per_day and optionally
planned_requests_per_day. Writes the PNG only when its bytes change; prints CHANGED or OK.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)


def draw(data: dict) -> bytes:
    days = float(data["days_per_month"])
    per_request = float(data["api_usd_per_request"])
    selfhost = float(data["selfhost_usd_per_month"])
    breakeven = float(data["breakeven_requests_per_day"])
    planned = data.get("planned_requests_per_day")
    top = max(3 * breakeven, 1.2 * float(planned or 0), 1000.0)
    xs = [top * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(xs, [x * days * per_request for x in xs], label=f"API (${per_request:.5f}/request)", color="#c0392b")
    ax.plot(xs, [selfhost] * len(xs), label=f"Self-hosted (${selfhost:,.0f}/month)", color="#2471a3")
    ax.axvline(breakeven, color="#555555", linestyle="--", linewidth=1)
    ax.annotate(f"break-even {breakeven:,.0f}/day", (breakeven, selfhost), textcoords="offset points",
                xytext=(6, 10), fontsize=9)
    if planned:
        ax.axvline(float(planned), color="#229954", linestyle=":", linewidth=1.5,
                   label=f"planned {float(planned):,.0f}/day")
    ax.set_xlabel("requests per day")
    ax.set_ylabel("USD per month")
    ax.set_title("Monthly cost: self-hosted vs API")
    ax.set_xlim(0, top)
    ax.set_ylim(0, max(top * days * per_request, selfhost) * 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out.getvalue()


def main() -> int:
    data = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    target = Path(data["output"])
    png = draw(data)
    if target.exists() and target.read_bytes() == png:
        print("OK")
        return 0
    target.write_bytes(png)
    print("CHANGED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
