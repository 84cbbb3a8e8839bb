#!/usr/bin/env bash
# promtool and amtool for `make promtool`, unpacked from Debian's prometheus and
# prometheus-alertmanager packages into .cache/prometheus-tools. Nothing is
# installed system-wide and no service starts; a second run does nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${PROMETHEUS_TOOLS_DIR:-$root/.cache/prometheus-tools}"
packages=(prometheus prometheus-alertmanager)
if [ -x "$dest/promtool" ] && [ -x "$dest/amtool" ]; then
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { echo "prometheus_tools: needs apt-get and dpkg-deb (Debian/Ubuntu) to fetch promtool" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt-get download needs package lists; refresh them only when it fails without.
if ! apt-get download "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  apt-get download "${packages[@]}" >/dev/null 2>&1 \
    || { echo "prometheus_tools: apt-get download ${packages[*]} failed" >&2; exit 1; }
fi
for deb in ./*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
mkdir -p "$dest"
install -m 0755 "$work/root/usr/bin/promtool" "$dest/promtool"
install -m 0755 "$work/root/usr/bin/amtool" "$dest/amtool"
echo "prometheus_tools: $("$dest/promtool" --version 2>&1 | head -1)"
