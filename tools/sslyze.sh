#!/usr/bin/env bash
# Run sslyze from its own virtualenv (tests/output/sslyze-venv, built on first use from
# requirements-sslyze.txt): its cryptography pin differs from the controller's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/tests/output/sslyze-venv"
if [ ! -x "$venv/bin/sslyze" ] || [ "$root/requirements-sslyze.txt" -nt "$venv/.installed" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$root/requirements-sslyze.txt"
  touch "$venv/.installed"
fi
exec "$venv/bin/sslyze" "$@"
