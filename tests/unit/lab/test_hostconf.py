"""lab/hostconf.py reads mirrors from the host's apt and pip settings."""
from __future__ import annotations

import pytest

import hostconf


@pytest.fixture
def apt_dir(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_sources_pick_debian_suites(apt_dir):
    (apt_dir / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.internal/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.internal/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.internal/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.internal/debian\nSuites: bookworm\nComponents: main\n")
    (apt_dir / "sources.list.d" / "vendor.list").write_text("deb [signed-by=/k.gpg] https://vendor.internal/apt stable main\n")
    (apt_dir / "sources.list.d" / "ignored.list.disabled").write_text("deb http://x.internal/debian bookworm main\n")
    assert hostconf.mirror("bookworm", str(apt_dir)) == "http://mirror.internal/debian"
    text = hostconf.apt_sources("bookworm", str(apt_dir))
    assert "URIs: http://mirror.internal/debian\nSuites: bookworm bookworm-updates" in text
    assert "Suites: bookworm-security" in text
    assert "vendor" not in text and "off.internal" not in text and "src.internal" not in text


def test_one_line_sources(apt_dir):
    (apt_dir / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/usr/share/keyrings/d.gpg] http://m.internal/debian bookworm main contrib\n"
        "deb http://m.internal/debian-security bookworm-security main\n")
    assert hostconf.mirror("bookworm", str(apt_dir)) == "http://m.internal/debian"


def test_no_debian_source_names_the_fix(apt_dir):
    with pytest.raises(SystemExit, match="LAB_APT_MIRROR"):
        hostconf.mirror("bookworm", str(apt_dir))


def test_pip_conf_and_paths(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    index = tmp_path / "pypi" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    monkeypatch.setattr(hostconf, "_pip_settings", lambda: {
        "extra-index-url": f"file://{index} https://pypi.internal/simple",
        "find-links": str(wheels), "timeout": "60"})
    conf = hostconf.pip_conf("/etc/ssl/lab/ca.crt")
    assert conf.startswith("[global]\ncert = /etc/ssl/lab/ca.crt\n")
    assert f"find-links = {wheels}" in conf
    # A PEP 503 index links to ../../files: the index root is mounted, not simple/.
    assert hostconf.pip_paths() == [str(tmp_path / "pypi"), str(wheels)]
