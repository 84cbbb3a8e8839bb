#!/usr/bin/env bash
# The enclave.llm test lab: privileged systemd containers under podman, on a
# Debian 12 host, as root. Hosts and networks are created by Ansible
# (lab/up.yml, molecule/shared/create.yml); this script prepares the machine.
#
#   lab.sh prereqs   install podman, runc, debootstrap... from Debian's packages
#   lab.sh check     verify the prerequisites; name what is missing
#   lab.sh image     build (once) the Debian 12 base image, reuse it afterwards
#   lab.sh hostfiles write the CA bundle and pip.conf the containers mount
#   lab.sh assets    build (once) what the lab's hosts mount read-only: the vLLM
#                    wheelhouse, the generated tiny model (the lab's model store)
#                    and the oauth2-proxy STAND-IN archive
#   lab.sh env       print the environment the lab needs (eval "$(lab.sh env)")
set -euo pipefail

LAB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$LAB_DIR/containers.conf}"
LAB_STATE_DIR="${LAB_STATE_DIR:-/var/lib/enclave-llm-lab}"
LAB_IMAGE_NAME="${LAB_IMAGE_NAME:-localhost/enclave-llm-lab/debian12}"
LAB_SUITE="${LAB_SUITE:-bookworm}"
# Bump when the image recipe changes; the tag also hashes the apt sources.
LAB_IMAGE_RECIPE=1
LAB_IMAGE_PACKAGES="systemd,systemd-sysv,python3,python3-apt,sudo,iproute2,procps,ca-certificates"
PREREQ_PACKAGES=(podman runc debootstrap containernetworking-plugins uidmap slirp4netns
                 fuse-overlayfs iptables debian-archive-keyring python3-venv openssl curl)
PREREQ_COMMANDS=(podman runc debootstrap openssl curl)

die() { echo "lab: $*" >&2; exit 1; }
log() { echo "lab: $*" >&2; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root: the lab runs privileged systemd containers (sudo make lab)"
}

cmd_check() {
  local missing=() pkgs=()
  [ -r /etc/debian_version ] || die "the lab needs a Debian 12 host (no /etc/debian_version)"
  for c in "${PREREQ_COMMANDS[@]}"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  for p in "${PREREQ_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ] || [ ${#pkgs[@]} -gt 0 ]; then
    die "missing prerequisites: ${missing[*]:-} (packages: ${pkgs[*]:-}); install them with 'make lab-prereqs' or 'apt-get install ${pkgs[*]:-${missing[*]}}'"
  fi
  echo "lab: prerequisites present ($(podman --version), runc $(runc --version | awk 'NR==1{print $3}'))"
}

cmd_prereqs() {
  need_root
  local pkgs=()
  for p in "${PREREQ_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  fi
  cmd_check
}

image_tag() {
  {
    echo "$LAB_IMAGE_RECIPE $LAB_IMAGE_PACKAGES $LAB_SUITE"
    python3 "$LAB_DIR/hostconf.py" apt-sources
  } | sha256sum | cut -c1-12
}

cmd_image() {
  need_root
  cmd_check >/dev/null
  local tag; tag="$(image_tag)"
  if podman image exists "$LAB_IMAGE_NAME:$tag"; then
    podman tag "$LAB_IMAGE_NAME:$tag" "$LAB_IMAGE_NAME:latest"
    log "base image $LAB_IMAGE_NAME:$tag present, reused"
    return 0
  fi
  local mirror start
  mirror="$(python3 "$LAB_DIR/hostconf.py" mirror)"
  rootfs="$(mktemp -d /var/tmp/enclave-lab-rootfs.XXXXXX)"
  trap 'rm -rf "${rootfs:-}"' EXIT
  start=$(date +%s)
  log "debootstrap $LAB_SUITE (minbase) from the host's apt mirror into $rootfs"
  debootstrap --variant=minbase --include="$LAB_IMAGE_PACKAGES" "$LAB_SUITE" "$rootfs" "$mirror" \
    > "$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log: $rootfs.log)"; }
  rm -f "$rootfs/etc/apt/sources.list"
  python3 "$LAB_DIR/hostconf.py" apt-sources > "$rootfs/etc/apt/sources.list.d/debian.sources"
  # systemd creates a fresh machine-id per container; units that need real
  # hardware or a console are masked, as in Debian's own container images.
  : > "$rootfs/etc/machine-id"
  for unit in getty.target console-getty.service systemd-udevd.service \
              systemd-udev-trigger.service systemd-modules-load.service \
              sys-kernel-config.mount sys-kernel-debug.mount; do
    ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
  done
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  tar -C "$rootfs" --numeric-owner -c . | podman import \
      --change 'CMD ["/lib/systemd/systemd"]' \
      --change 'STOPSIGNAL SIGRTMIN+3' \
      --change 'ENV container=podman' \
      - "$LAB_IMAGE_NAME:$tag" >/dev/null
  podman tag "$LAB_IMAGE_NAME:$tag" "$LAB_IMAGE_NAME:latest"
  rm -f "$rootfs.log"
  log "built $LAB_IMAGE_NAME:$tag in $(( $(date +%s) - start )) s"
}

cmd_hostfiles() {
  need_root
  mkdir -p "$LAB_STATE_DIR"
  local bundle
  bundle="$(python3 - <<'PY'
import os
for p in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), os.environ.get("REQUESTS_CA_BUNDLE"),
          "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"):
    if p and os.path.isfile(p):
        print(p); break
PY
)"
  [ -n "$bundle" ] || die "no CA bundle found on this host (looked at PIP_CERT, SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt)"
  install -m 0644 "$bundle" "$LAB_STATE_DIR/host-ca-bundle.crt"
  python3 "$LAB_DIR/hostconf.py" pip-conf /etc/ssl/lab/host-ca-bundle.crt > "$LAB_STATE_DIR/pip.conf"
  python3 "$LAB_DIR/hostconf.py" pip-paths > "$LAB_STATE_DIR/pip-paths"
  chmod 0644 "$LAB_STATE_DIR/pip.conf" "$LAB_STATE_DIR/pip-paths"
  echo "$LAB_STATE_DIR"
}

# The lab's model store: a tiny Llama generated here (tests/models/make_tiny_llama.py,
# random weights, never downloaded) by a throwaway venv with torch and
# transformers from the wheelhouse; r2 is a second revision for rolling updates.
# The inference hosts mount it read-only, as they would an NFS model share.
cmd_assets() {
  need_root
  local root wheelhouse store venv start
  root="$(cd "$LAB_DIR/.." && pwd)"
  wheelhouse="$LAB_STATE_DIR/wheelhouse/vllm"
  store="$LAB_STATE_DIR/model-store/tiny-llama"
  venv="$LAB_STATE_DIR/model-venv"
  bash "$root/tools/vllm_wheelhouse.sh" "$wheelhouse" | grep -v '^WARNING' >&2 || true
  [ -e "$wheelhouse/.complete-"* ] || die "the vLLM wheelhouse at $wheelhouse is incomplete; run tools/vllm_wheelhouse.sh"
  if [ ! -e "$store/r1/config.json" ]; then
    start=$(date +%s)
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
      rm -rf "$venv"
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q --no-index --find-links "$wheelhouse" torch transformers
    fi
    rm -rf "$store.tmp" && mkdir -p "$store.tmp"
    HF_HUB_OFFLINE=1 "$venv/bin/python" "$root/tests/models/make_tiny_llama.py" "$store.tmp/r1" >&2
    cp -a "$store.tmp/r1" "$store.tmp/r2"
    rm -rf "$store" && mv "$store.tmp" "$store"
    log "generated the tiny test model into $store (r1, r2) in $(( $(date +%s) - start )) s"
  fi
  chmod -R a+rX "$LAB_STATE_DIR/model-store"
  python3 "$root/tests/doubles/oauth2_proxy_standin_archive.py" "$LAB_STATE_DIR/standin" 7.15.5 >/dev/null
  log "assets in $LAB_STATE_DIR: wheelhouse/vllm, model-store/tiny-llama (r1, r2), standin (oauth2-proxy STAND-IN)"
}

cmd_env() {
  echo "export CONTAINERS_CONF='$CONTAINERS_CONF'"
  echo "export LAB_STATE_DIR='$LAB_STATE_DIR'"
  echo "export LAB_IMAGE='$LAB_IMAGE_NAME:latest'"
}

case "${1:-}" in
  prereqs) cmd_prereqs ;;
  check) cmd_check ;;
  image) cmd_image ;;
  hostfiles) cmd_hostfiles ;;
  assets) cmd_assets ;;
  env) cmd_env ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
