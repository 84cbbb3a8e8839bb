"""Write certificates the nginx_edge role must refuse: an ECDSA certificate for
edge.lab.internal signed by the platform CA but expired, and one signed by a
foreign CA. Usage: badcerts.py CA_DIR OUT_DIR (CA_DIR holds ca.crt and ca.key)."""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NAME = "edge.lab.internal"


def leaf(issuer_cert, issuer_key, not_before, not_after):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
            .issuer_name(issuer_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def write(out: Path, name: str, cert, key) -> None:
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))


def main() -> None:
    ca_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    write(out, "expired", *leaf(ca_cert, ca_key, now - datetime.timedelta(days=30), now - datetime.timedelta(days=1)))
    foreign_key = ec.generate_private_key(ec.SECP256R1())
    foreign_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    foreign_ca = (x509.CertificateBuilder().subject_name(foreign_name).issuer_name(foreign_name)
                  .public_key(foreign_key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                  .sign(foreign_key, hashes.SHA256()))
    (out / "foreign-ca.crt").write_bytes(foreign_ca.public_bytes(serialization.Encoding.PEM))
    write(out, "foreign", *leaf(foreign_ca, foreign_key, now - datetime.timedelta(days=1),
                                now + datetime.timedelta(days=30)))


if __name__ == "__main__":
    main()
