"""Behaviour of enclave.llm.pki on two systemd hosts, checked with openssl.

Tests that re-run the role (bad input, renewal, import) come last in the file:
pytest keeps file order, and each leaves the hosts in a state the next expects.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import labtest

PKI = "/etc/enclave/pki"
CA_DIR = labtest.EPHEMERAL_DIR / "pki"
HOSTS = labtest.hostnames("pki_hosts")
CERTS = [("pki-web", "host", "root"), ("pki-api", "host", "root"), ("pki-api", "api", "llmsvc")]


def sh(name: str, cmd: str) -> str:
    return labtest.host(name).check_output(cmd)


def ip_of(name: str) -> str:
    return sh(name, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")


def cert_digest(name: str, cert: str = "host") -> str:
    return sh(name, f"sha256sum {PKI}/certs/{cert}.crt | cut -d' ' -f1")


@pytest.mark.parametrize("name,cert,_owner", CERTS)
def test_chain_validates_against_bundle_and_system_store(name, cert, _owner):
    host = labtest.host(name)
    assert host.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/certs/{cert}.crt").rc == 0
    # The CA went into the OS trust store, so default verification passes too.
    assert host.run(f"openssl verify {PKI}/certs/{cert}.crt").rc == 0
    assert host.run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/certs/{cert}.fullchain.crt").rc == 0


@pytest.mark.parametrize("name", HOSTS)
def test_host_certificate_names_the_host(name):
    sans = sh(name, f"openssl x509 -noout -ext subjectAltName -in {PKI}/certs/host.crt")
    assert f"DNS:{name}" in sans
    assert f"IP Address:{ip_of(name)}" in sans
    assert "127.0.0.1" not in sans


def test_service_certificate_has_requested_names_and_usages():
    text = sh("pki-api", f"openssl x509 -noout -text -in {PKI}/certs/api.crt")
    assert "DNS:api.lab.internal" in text
    assert "IP Address:10.232.1.100" in text
    assert "DNS:pki-api" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    assert "CA:FALSE" in text


@pytest.mark.parametrize("name,cert,_owner", CERTS)
def test_private_key_matches_certificate(name, cert, _owner):
    key_pub = sh(name, f"openssl pkey -in {PKI}/private/{cert}.key -pubout")
    cert_pub = sh(name, f"openssl x509 -noout -pubkey -in {PKI}/certs/{cert}.crt")
    assert key_pub == cert_pub


@pytest.mark.parametrize("name,cert,owner", CERTS)
def test_private_key_permissions(name, cert, owner):
    key = labtest.host(name).file(f"{PKI}/private/{cert}.key")
    assert key.mode == 0o600
    assert key.user == owner
    assert labtest.host(name).file(f"{PKI}/private").mode == 0o711


@pytest.mark.parametrize("name,cert,_owner", CERTS)
def test_lifetime_and_algorithms(name, cert, _owner):
    pem = sh(name, f"cat {PKI}/certs/{cert}.crt").encode()
    leaf = x509.load_pem_x509_certificate(pem)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=90, minutes=5)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    ca = x509.load_pem_x509_certificate((CA_DIR / "ca.crt").read_bytes())
    assert ca.public_key().curve.name == "secp384r1"
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_tls_handshake_verifies_name_and_chain():
    """A real TLS 1.3 handshake with the issued certificate, from the other host."""
    server = labtest.host("pki-api")
    server.run(f"nohup timeout 60 openssl s_server -accept 8443 -tls1_3 -www -cert {PKI}/certs/api.fullchain.crt "
               f"-key {PKI}/private/api.key >/dev/null 2>&1 &")
    client = labtest.host("pki-web")
    base = f"echo Q | timeout 10 openssl s_client -connect 10.232.1.12:8443 -CAfile {PKI}/ca.crt -verify_return_error"
    for _attempt in range(20):
        ok = client.run(f"{base} -verify_hostname api.lab.internal")
        if ok.rc == 0:
            break
        client.run("sleep 0.5")
    assert ok.rc == 0, ok.stderr
    assert "Verification: OK" in ok.stdout + ok.stderr
    assert "TLSv1.3" in ok.stdout + ok.stderr
    wrong = client.run(f"{base} -verify_hostname other.lab.internal")
    assert wrong.rc != 0
    server.run("pkill -f 'openssl s_server' || true")


def test_ca_private_key_never_left_the_controller():
    ca_key = (CA_DIR / "ca.key").read_text()
    body = "".join(ca_key.strip().splitlines()[1:-1])[:48]
    assert body
    for name in HOSTS:
        found = labtest.host(name).run(f"grep -rlF '{body}' /etc /root /var/lib /tmp 2>/dev/null")
        assert found.stdout.strip() == "", f"CA key material found on {name}: {found.stdout}"
    assert (CA_DIR / "ca.key").stat().st_mode & 0o777 == 0o600


def test_check_mode_on_converged_hosts_changes_nothing():
    run = labtest.run_playbook(check=True)
    assert run.rc == 0, run.output[-3000:]
    assert run.changed() == 0, run.recap()


def test_invalid_san_fails_naming_host_and_field_and_keeps_certificate():
    before = cert_digest("pki-web")
    run = labtest.run_playbook(extra_vars={"pki_certificates": [{"name": "host", "dns": ["bad_name!.lab"]}]},
                               limit="pki-web")
    assert run.rc != 0
    assert "pki-web: pki_certificates[host].dns entry 'bad_name!.lab' is not a valid DNS name" in run.output
    assert cert_digest("pki-web") == before


def test_missing_key_owner_fails_naming_the_field():
    run = labtest.run_playbook(extra_vars={"pki_certificates": [{"name": "ghost", "owner": "nosuchuser"}]},
                               limit="pki-web")
    assert run.rc != 0
    assert "pki-web: pki_certificates[ghost].owner 'nosuchuser' does not exist on the host" in run.output
    assert labtest.host("pki-web").run(f"test -e {PKI}/private/ghost.key").rc != 0


def test_unreadable_ca_key_fails_and_keeps_certificates(tmp_path):
    broken = tmp_path / "ca"
    shutil.copytree(CA_DIR, broken)
    (broken / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    before = {name: cert_digest(name) for name in HOSTS}
    run = labtest.run_playbook(extra_vars={"pki_ca_dir": str(broken)})
    assert run.rc != 0
    assert f"the CA private key {broken}/ca.key cannot be read (pki_ca_dir" in run.output
    assert "no certificate was changed" in run.output
    assert {name: cert_digest(name) for name in HOSTS} == before


def test_renewal_window_reissues_with_the_same_key():
    key_before = sh("pki-web", f"sha256sum {PKI}/private/host.key")
    serial_before = sh("pki-web", f"openssl x509 -noout -serial -in {PKI}/certs/host.crt")
    # A 90-day certificate is inside a 100-day renewal window.
    run = labtest.run_playbook(extra_vars={"pki_cert_lifetime_days": 120, "pki_cert_renew_days": 100},
                               limit="pki-web")
    assert run.rc == 0, run.output[-3000:]
    assert sh("pki-web", f"openssl x509 -noout -serial -in {PKI}/certs/host.crt") != serial_before
    assert sh("pki-web", f"sha256sum {PKI}/private/host.key") == key_before
    assert labtest.host("pki-web").run(f"openssl verify -CAfile {PKI}/ca.crt {PKI}/certs/host.crt").rc == 0
    # Outside the window now: a second run issues nothing.
    again = labtest.run_playbook(limit="pki-web")
    assert again.rc == 0 and again.changed() == 0, again.recap()


def _corporate_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A stand-in corporate PKI: an offline root and an issuing intermediate."""
    now = dt.datetime.now(dt.timezone.utc)

    def make(cn, key, issuer_cn, issuer_key, pathlen):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)])
        return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=800))
                .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(issuer_key, hashes.SHA256()))

    root_key, int_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = make("Corp Root CA", root_key, "Corp Root CA", root_key, 1)
    inter = make("Corp Issuing CA", int_key, "Corp Root CA", root_key, 0)
    paths = directory / "issuing.crt", directory / "issuing.key", directory / "root.crt"
    paths[0].write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(int_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths[1].chmod(0o600)
    paths[2].write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return paths


def test_imported_corporate_ca_signs_and_chains_to_its_root(tmp_path):
    cert, key, root = _corporate_ca(tmp_path)
    run = labtest.run_playbook(extra_vars={"pki_ca_mode": "import", "pki_ca_import_certificate_path": str(cert),
                                           "pki_ca_import_privatekey_path": str(key),
                                           "pki_ca_import_chain_path": str(root), "pki_ca_name": "corp-ca"},
                               limit="pki-api")
    assert run.rc == 0, run.output[-3000:]
    api = labtest.host("pki-api")
    issuer = sh("pki-api", f"openssl x509 -noout -issuer -in {PKI}/certs/api.crt")
    assert "Corp Issuing CA" in issuer
    # Only the root as trust anchor: the chain is completed from the full chain file.
    api.run(f"cat > /tmp/root.crt <<'EOF'\n{root.read_text()}EOF")
    assert api.run(f"openssl verify -CAfile /tmp/root.crt -untrusted {PKI}/certs/api.fullchain.crt "
                   f"{PKI}/certs/api.crt").rc == 0
    assert api.run(f"openssl verify {PKI}/certs/api.crt").rc == 0
    assert hashlib.sha256(key.read_bytes()).hexdigest() not in api.run("sha256sum /etc/enclave/pki/private/*").stdout
