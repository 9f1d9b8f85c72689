"""Checks an installed identity the way the agent will before it connects; pure apart from reading files.

``check_identity`` returns one ``Finding`` per problem (empty = ready to connect), each with a stable code,
so the CLI prints them, the agent's doctor reuses them and tests assert on them.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioning import certs
from provisioning.names import thing_name_problem

EXPIRY_WARNING = dt.timedelta(days=30)


@dataclass(frozen=True)
class Finding:
    """One problem with an identity: ``code`` is stable (e.g. ``cert.expired``), ``message`` is for people."""

    code: str
    severity: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def _error(code: str, message: str) -> Finding:
    return Finding(code, "error", message)


def _warning(code: str, message: str) -> Finding:
    return Finding(code, "warning", message)


def _load_certs(path: Path, what: str) -> tuple[list[x509.Certificate], Finding | None]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], _error(f"{what}.missing", f"{what} file {path} does not exist")
    except OSError as exc:
        return [], _error(f"{what}.unreadable", f"cannot read {what} file {path}: {exc.strerror}")
    try:
        if b"-----BEGIN" in data:
            loaded = x509.load_pem_x509_certificates(data)
        else:
            loaded = [x509.load_der_x509_certificate(data)]
    except ValueError:
        return [], _error(
            f"{what}.corrupt", f"{what} file {path} is not a valid certificate (corrupted or tampered)"
        )
    return loaded, None


def _days(delta: dt.timedelta) -> str:
    days = delta.total_seconds() / 86400
    return f"{days:.0f} days" if abs(days) >= 2 else f"{delta.total_seconds() / 3600:.1f} hours"


def _check_validity(cert: x509.Certificate, now: dt.datetime, what: str, warn: dt.timedelta) -> list[Finding]:
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < start:
        return [
            _error(
                f"{what}.not_yet_valid", f"{what} is not valid until {start.isoformat()} (check the clock)"
            )
        ]
    if now >= end:
        return [_error(f"{what}.expired", f"{what} expired on {end.isoformat()}, {_days(now - end)} ago")]
    if end - now < warn:
        return [
            _warning(f"{what}.expires_soon", f"{what} expires on {end.isoformat()}, in {_days(end - now)}")
        ]
    return []


def _check_mode(path: Path, wanted: int, code: str, what: str) -> list[Finding]:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return []
    if mode & 0o077:
        return [
            _error(
                code, f"{what} {path} has mode {mode:04o}; it must be {wanted:04o} (chmod {wanted:o} {path})"
            )
        ]
    return []


def _check_chain(cert: x509.Certificate, ca: x509.Certificate) -> list[Finding]:
    if cert.issuer != ca.subject:
        return [
            _error(
                "chain.wrong_ca",
                f"certificate was issued by '{cert.issuer.rfc4514_string()}', not by this CA "
                f"'{ca.subject.rfc4514_string()}'",
            )
        ]
    try:
        cert.verify_directly_issued_by(ca)
    except InvalidSignature:
        return [
            _error(
                "chain.signature_invalid", "certificate signature does not verify with the CA key (tampered)"
            )
        ]
    except (ValueError, TypeError) as exc:
        return [
            _error(
                "chain.signature_invalid", f"certificate signature cannot be checked against the CA ({exc})"
            )
        ]
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            return [
                _error("ca.not_ca", "the CA file holds a certificate that is not a CA (basic constraints)")
            ]
    except x509.ExtensionNotFound:
        return [
            _error("ca.not_ca", "the CA certificate has no basic constraints; it cannot issue certificates")
        ]
    return []


def _check_usage(cert: x509.Certificate) -> list[Finding]:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return [_error("cert.not_client", "certificate's extended key usage does not allow TLS client auth")]
    return []


def _check_key(cert: x509.Certificate, key_path: Path) -> list[Finding]:
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        return [_error("key.missing", f"private key file {key_path} does not exist")]
    except OSError as exc:
        return [_error("key.unreadable", f"cannot read private key {key_path}: {exc.strerror}")]
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return [_error("key.corrupt", f"{key_path} is not an unencrypted PEM private key")]
    if not certs.public_keys_match(key.public_key(), cert.public_key()):
        return [_error("key.mismatch", f"private key {key_path} does not match the certificate's public key")]
    return []


def check_identity(
    cert_path: str | os.PathLike[str],
    key_path: str | os.PathLike[str] | None,
    ca_path: str | os.PathLike[str],
    thing: str | None,
    now: dt.datetime | None = None,
    *,
    check_modes: bool = True,
    expiry_warning: dt.timedelta = EXPIRY_WARNING,
) -> list[Finding]:
    """Everything that would make the first connection fail, one finding per problem.

    Checks: files readable and parseable, chain (issuer and signature) to ``ca_path``, CA and certificate
    validity windows (warning under ``expiry_warning``), client-auth usage, key matches certificate (skipped
    when ``key_path`` is None, i.e. the key is in a token), CN == ``thing`` (and a legal thing name; with
    ``thing=None`` the CN itself must be one), key file
    0600 and its directory 0700. ``ca_path`` is the CA that issued the device certificate.
    """
    now = now or dt.datetime.now(dt.UTC)
    findings: list[Finding] = []
    cert_file, ca_file = Path(cert_path), Path(ca_path)
    chain, problem = _load_certs(cert_file, "cert")
    if problem:
        findings.append(problem)
    cas, ca_problem = _load_certs(ca_file, "ca")
    if ca_problem:
        findings.append(ca_problem)
    if thing is not None:
        name_problem = thing_name_problem(thing)
        if name_problem:
            findings.append(_error("thing.invalid", name_problem))
    if chain:
        cert = chain[0]
        findings += _check_validity(cert, now, "cert", expiry_warning)
        findings += _check_usage(cert)
        cn = certs.common_name(cert.subject)
        if cn is None:
            findings.append(
                _error("cn.missing", "certificate subject has no single CN (it must be the thing name)")
            )
        elif thing is not None and cn != thing:
            findings.append(
                _error("cn.mismatch", f"certificate CN is {cn!r} but the thing name is {thing!r}")
            )
        elif thing is None and (cn_problem := thing_name_problem(cn)):
            findings.append(_error("cn.invalid", f"certificate CN cannot be a thing name: {cn_problem}"))
        if cas:
            findings += _check_chain(cert, cas[0])
        if key_path is not None:
            findings += _check_key(cert, Path(key_path))
    if cas:
        findings += _check_validity(cas[0], now, "ca", expiry_warning)
    if check_modes and key_path is not None:
        key_file = Path(key_path)
        findings += _check_mode(key_file, 0o600, "mode.key", "private key")
        findings += _check_mode(key_file.parent, 0o700, "mode.dir", "identity directory")
    return findings
