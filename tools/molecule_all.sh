#!/usr/bin/env bash
# Run Molecule scenarios, MOLECULE_JOBS at a time (each scenario has its own
# podman network and hosts, so they do not meet), one log per scenario under
# tests/output/molecule/, a duration per scenario, and the log of any failure.
#   tools/molecule_all.sh scenario...
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
jobs="${MOLECULE_JOBS:-1}"
logs="$root/tests/output/molecule"
mkdir -p "$logs"
[ $# -gt 0 ] || { echo "molecule_all: no scenario given" >&2; exit 2; }

run_one() {
  local s="$1" start rc
  start=$(date +%s)
  if [ "$jobs" = 1 ]; then
    "$root/.venv/bin/molecule" test -s "$s" 2>&1 | tee "$logs/$s.log"
    rc=${PIPESTATUS[0]}
  else
    "$root/.venv/bin/molecule" test -s "$s" > "$logs/$s.log" 2>&1
    rc=$?
  fi
  echo "$s $rc $(( $(date +%s) - start ))" >> "$results"
  echo "=== $s: $([ $rc -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
  return $rc
}
export -f run_one
# One results file per invocation: two runs at once in one checkout keep their own.
results="$(mktemp "$logs/results.XXXXXX")"
trap 'rm -f "$results"' EXIT
export root logs jobs results

start=$(date +%s)
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {}
cp "$results" "$logs/results"
failed=$(awk '$2 != 0 {print $1}' "$results")
echo "=== molecule: $(wc -l < "$results") scenario(s) in $(( $(date +%s) - start )) s with $jobs at a time"
sort -k3 -n -r "$results" | awk '{printf "    %-16s %4d s  %s\n", $1, $3, ($2 == 0 ? "ok" : "FAILED")}'
if [ -n "$failed" ]; then
  for s in $failed; do
    echo "=== log of $s (last 150 lines; whole log: tests/output/molecule/$s.log)"
    tail -n 150 "$logs/$s.log"
  done
  # Last, so that a CI page showing only the end of the output still says why.
  for s in $failed; do
    echo "=== why $s failed (failed tests, fatal tasks; whole log: tests/output/molecule/$s.log):"
    sed 's/\x1b\[[0-9;]*m//g' "$logs/$s.log" \
      | grep -E "FAILED [^ ]+::|^[^A-Za-z]*E +[A-Za-z]*(Error|Exception)|fatal: \[" \
      | cut -c1-400 | tail -n 12
  done
  exit 1
fi
