# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that turn inventory names and addresses into certificate requests."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from ansible.errors import AnsibleFilterError

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_CERT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
EXTENDED_KEY_USAGES = ("serverAuth", "clientAuth")


def _as_list(value: Any, field: str) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise AnsibleFilterError(f"{field} must be a list, got {type(value).__name__}")


def dns_name_error(name: Any) -> str | None:
    """Why ``name`` is not a usable DNS subjectAltName, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a DNS name"
    labels = name.lower().rstrip(".").split(".")
    if len(name) > 253:
        return f"{name!r} is longer than 253 characters"
    if labels[0] == "*":
        if len(labels) < 3:
            return f"{name!r}: a wildcard needs at least two labels after '*'"
        labels = labels[1:]
    for label in labels:
        if not _LABEL.match(label):
            return (f"{name!r} is not a valid DNS name (label {label!r}: letters, digits and "
                    "inner hyphens only, 1-63 characters)")
    return None


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def pki_subject_alt_names(dns_names: Any = None, ip_addresses: Any = None) -> list[str]:
    """Return ``['DNS:…', 'IP:…']`` for the given names and addresses.

    Names are lower-cased and de-duplicated in order; a "DNS name" that is an IP
    address is filed as an IP entry; IPv6 addresses are written compressed.
    Raises AnsibleFilterError naming the first bad entry.
    """
    dns_out: list[str] = []
    ip_out: list[str] = []
    for name in _as_list(dns_names, "dns_names"):
        address = _ip(name)
        if address is not None:
            ip_out.append(str(address))
            continue
        error = dns_name_error(name)
        if error:
            raise AnsibleFilterError(error)
        dns_out.append(name.lower().rstrip("."))
    for value in _as_list(ip_addresses, "ip_addresses"):
        address = _ip(value)
        if address is None:
            raise AnsibleFilterError(f"{value!r} is not an IP address")
        ip_out.append(str(address))
    sans = [f"DNS:{n}" for n in dict.fromkeys(dns_out)]
    sans += [f"IP:{a}" for a in dict.fromkeys(ip_out)]
    if not sans:
        raise AnsibleFilterError("a certificate needs at least one DNS name or IP address")
    return sans


def pki_host_addresses(addresses: Any) -> list[str]:
    """Keep the addresses worth a SAN: drop loopback, link-local and unspecified ones."""
    kept = []
    for value in _as_list(addresses, "addresses"):
        address = _ip(value)
        if address is None or address.is_loopback or address.is_link_local or address.is_unspecified:
            continue
        kept.append(str(address))
    return list(dict.fromkeys(kept))


def pki_certificate_errors(certificates: Any, host: str = "", host_dns_names: Any = None,
                           host_ip_addresses: Any = None) -> list[str]:
    """Validate ``pki_certificates`` entries and the host's own names; return one
    message per problem.

    Each message names the host, the certificate and the field, so a failing
    assertion reads as a one-line fix.
    """
    where = f"{host}: " if host else ""
    errors: list[str] = []
    for field, values in (("pki_host_dns_names", host_dns_names), ("pki_host_ip_addresses", host_ip_addresses)):
        try:
            values = _as_list(values, field)
        except AnsibleFilterError as exc:
            errors.append(f"{where}{exc}")
            continue
        for value in values:
            if field.endswith("ip_addresses") and _ip(value) is None:
                errors.append(f"{where}{field} entry {value!r} is not an IP address")
            elif field.endswith("dns_names") and _ip(value) is None and dns_name_error(value):
                errors.append(f"{where}{field} entry {dns_name_error(value)}")
    if not isinstance(certificates, (list, tuple)):
        return errors + [f"{where}pki_certificates must be a list of certificate definitions"]
    seen: set[str] = set()
    for index, cert in enumerate(certificates):
        if not isinstance(cert, dict):
            errors.append(f"{where}pki_certificates[{index}] must be a mapping, got {type(cert).__name__}")
            continue
        name = cert.get("name")
        label = f"pki_certificates[{index}]" if not isinstance(name, str) else f"pki_certificates[{name}]"
        if not isinstance(name, str) or not _CERT_NAME.match(name):
            errors.append(f"{where}{label}.name {name!r} must match [a-z0-9][a-z0-9_.-]* (it names files)")
        elif name in seen:
            errors.append(f"{where}{label}.name is used twice")
        else:
            seen.add(name)
        for field in ("owner", "group"):
            value = cert.get(field, "root")
            if not isinstance(value, str) or not _USER.match(value):
                errors.append(f"{where}{label}.{field} {value!r} is not a valid user or group name")
        for field in ("dns", "ip"):
            try:
                values = _as_list(cert.get(field), f"{label}.{field}")
            except AnsibleFilterError as exc:
                errors.append(f"{where}{exc}")
                continue
            for value in values:
                if field == "ip" and _ip(value) is None:
                    errors.append(f"{where}{label}.ip entry {value!r} is not an IP address")
                elif field == "dns" and _ip(value) is None and dns_name_error(value):
                    errors.append(f"{where}{label}.dns entry {dns_name_error(value)}")
        for usage in _as_list(cert.get("extended_key_usage", ["serverAuth"]), f"{label}.extended_key_usage"):
            if usage not in EXTENDED_KEY_USAGES:
                errors.append(f"{where}{label}.extended_key_usage {usage!r} must be one of "
                              f"{', '.join(EXTENDED_KEY_USAGES)}")
    return errors


class FilterModule:
    """enclave.llm PKI filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "pki_subject_alt_names": pki_subject_alt_names,
            "pki_host_addresses": pki_host_addresses,
            "pki_certificate_errors": pki_certificate_errors,
        }
