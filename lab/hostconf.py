"""Read the host's apt and pip settings, so the lab reuses whatever mirrors the
host reaches without a registry host name ever being written into the repo.

  hostconf.py mirror            first Debian mirror serving the suite (for debootstrap)
  hostconf.py apt-sources       deb822 sources for the containers (Debian suites only)
  hostconf.py pip-conf BUNDLE   a pip.conf for the containers, with BUNDLE as CA
  hostconf.py pip-paths         local paths pip settings point at (to bind-mount)
"""
from __future__ import annotations

import configparser
import glob
import os
import sys
from dataclasses import dataclass

SUITE = os.environ.get("LAB_SUITE", "bookworm")
APT_DIR = os.environ.get("LAB_APT_DIR", "/etc/apt")


@dataclass
class Source:
    uri: str
    suites: list[str]
    components: list[str]
    signed_by: str | None = None


def _deb822(path: str) -> list[Source]:
    sources, stanza = [], {}
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines() + [""]
    for line in lines:
        if not line.strip():
            if stanza and "deb" in stanza.get("types", "").split() and stanza.get("enabled", "yes") != "no":
                for uri in stanza.get("uris", "").split():
                    sources.append(Source(uri.rstrip("/"), stanza.get("suites", "").split(),
                                          stanza.get("components", "").split(), stanza.get("signed-by")))
            stanza = {}
            continue
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        stanza[key.strip().lower()] = value.strip()
    return sources


def _one_line(path: str) -> list[Source]:
    sources = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            signed_by = None
            if words and words[0].startswith("["):
                opts = []
                while words:
                    opts.append(words.pop(0))
                    if opts[-1].endswith("]"):
                        break
                for opt in " ".join(opts).strip("[]").split():
                    if opt.startswith("signed-by="):
                        signed_by = opt.split("=", 1)[1]
            if len(words) >= 2:
                sources.append(Source(words[0].rstrip("/"), [words[1]], words[2:], signed_by))
    return sources


def host_sources(apt_dir: str = APT_DIR) -> list[Source]:
    found: list[Source] = []
    main_list = os.path.join(apt_dir, "sources.list")
    if os.path.exists(main_list):
        found += _one_line(main_list)
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*"))):
        if path.endswith(".list"):
            found += _one_line(path)
        elif path.endswith(".sources"):
            found += _deb822(path)
    return found


def debian_sources(suite: str = SUITE, apt_dir: str = APT_DIR) -> list[Source]:
    """Entries serving the Debian suite family (bookworm, -updates, -security)."""
    return [s for s in host_sources(apt_dir)
            if any(x == suite or x.startswith(suite + "-") for x in s.suites)]


def mirror(suite: str = SUITE, apt_dir: str = APT_DIR) -> str:
    for src in debian_sources(suite, apt_dir):
        if suite in src.suites and "main" in src.components:
            return src.uri
    raise SystemExit(f"lab: no apt source for Debian '{suite}' main in {apt_dir}/sources.list(.d); "
                     f"set LAB_APT_MIRROR to your Debian mirror URL")


def apt_sources(suite: str = SUITE, apt_dir: str = APT_DIR) -> str:
    out = []
    for src in debian_sources(suite, apt_dir):
        suites = [x for x in src.suites if x == suite or x.startswith(suite + "-")]
        out.append(f"Types: deb\nURIs: {src.uri}\nSuites: {' '.join(suites)}\n"
                   f"Components: {' '.join(src.components)}\n"
                   "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    return "\n".join(out)


def _pip_settings() -> dict[str, str]:
    """pip's effective global settings: config files, then PIP_* environment."""
    cfg = configparser.ConfigParser()
    cfg.read(["/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf"),
              os.path.expanduser("~/.pip/pip.conf")])
    settings = dict(cfg["global"]) if cfg.has_section("global") else {}
    for key in ("index-url", "extra-index-url", "find-links", "trusted-host", "timeout", "default-timeout"):
        env = os.environ.get("PIP_" + key.upper().replace("-", "_"))
        if env:
            settings[key] = env
    if "default-timeout" in settings:
        settings.setdefault("timeout", settings.pop("default-timeout"))
    return settings


def _local_path(value: str) -> str | None:
    path = value[len("file://"):] if value.startswith("file://") else value
    return path if path.startswith("/") else None


def pip_paths() -> list[str]:
    paths = []
    settings = _pip_settings()
    for key in ("index-url", "extra-index-url", "find-links"):
        for value in settings.get(key, "").split():
            path = _local_path(value)
            # a PEP 503 index links to ../../files: mount the index root, not simple/
            if path and os.path.basename(path.rstrip("/")) == "simple":
                path = os.path.dirname(path.rstrip("/"))
            if path and os.path.exists(path) and path not in paths:
                paths.append(path)
    return paths


def pip_conf(bundle: str) -> str:
    settings = _pip_settings()
    lines = ["[global]", f"cert = {bundle}"]
    for key in ("index-url", "extra-index-url", "find-links", "trusted-host", "timeout"):
        if settings.get(key):
            lines.append(f"{key} = {' '.join(settings[key].split())}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd = argv[0]
    if cmd == "mirror":
        print(os.environ.get("LAB_APT_MIRROR") or mirror())
    elif cmd == "apt-sources":
        print(apt_sources(), end="")
    elif cmd == "pip-conf" and len(argv) == 2:
        print(pip_conf(argv[1]), end="")
    elif cmd == "pip-paths":
        print("\n".join(pip_paths()))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
