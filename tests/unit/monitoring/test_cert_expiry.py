"""roles/monitoring/files/cert-expiry.py against certificates made here, with openssl."""
from __future__ import annotations

import datetime as dt
import importlib.util
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SCRIPT = Path(__file__).resolve().parents[3] / "roles" / "monitoring" / "files" / "cert-expiry.py"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def load():
    spec = importlib.util.spec_from_file_location("cert_expiry", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def certificate(path: Path, not_after: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_after - dt.timedelta(days=90))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_writes_the_expiry_of_each_certificate(tmp_path):
    module = load()
    certs = tmp_path / "certs"
    certs.mkdir()
    when = dt.datetime(2031, 5, 17, 12, 30, tzinfo=dt.timezone.utc)
    certificate(certs / "host.crt", when)
    certificate(certs / "monitoring.crt", when + dt.timedelta(days=1))
    # The full chain repeats the leaf of monitoring.crt: not a second series.
    shutil.copy(certs / "monitoring.crt", certs / "monitoring.fullchain.crt")
    out = tmp_path / "enclave_certificates.prom"
    assert module.run(str(out), [str(certs / "*.crt")], now=1700000000) == 0
    text = out.read_text()
    stamp = int(when.timestamp())
    assert f'enclave_certificate_expiry_timestamp_seconds{{path="{certs}/host.crt",name="host"}} {stamp}\n' in text
    assert f'name="monitoring"}} {stamp + 86400}\n' in text
    assert "fullchain" not in text
    assert "enclave_certificate_expiry_collector_errors 0\n" in text
    assert "enclave_certificate_expiry_collector_last_run_timestamp_seconds 1700000000\n" in text
    assert out.stat().st_mode & 0o777 == 0o644


def test_an_unreadable_certificate_is_counted_and_the_others_still_reported(tmp_path, capsys):
    module = load()
    good, bad = tmp_path / "good.crt", tmp_path / "bad.crt"
    certificate(good, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    out = tmp_path / "out.prom"
    assert module.run(str(out), [str(tmp_path / "*.crt")]) == 0
    text = out.read_text()
    assert 'name="good"} 1893456000' in text
    assert "enclave_certificate_expiry_collector_errors 1\n" in text
    assert "bad.crt" in capsys.readouterr().err


def test_label_values_are_escaped():
    module = load()
    text = module.render({'/etc/a"b\\c.crt': 1.0}, {}, 0)
    assert 'path="/etc/a\\"b\\\\c.crt",name="a\\"b\\\\c"' in text


def test_output_is_replaced_atomically_and_leaves_no_temporary_file(tmp_path):
    module = load()
    out = tmp_path / "x.prom"
    out.write_text("old\n")
    module.write_atomically(str(out), "new\n")
    assert out.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.prom"]


def test_main_needs_an_output_and_patterns(tmp_path):
    module = load()
    with pytest.raises(SystemExit):
        module.main([])
    assert module.main(["--output", str(tmp_path / "o.prom"), str(tmp_path / "none-*.crt")]) == 0
    assert "collector_errors 0" in (tmp_path / "o.prom").read_text()
