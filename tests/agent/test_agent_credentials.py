"""Credential pre-checks, with real keys and certificates made by `cryptography`."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent import credentials as cr

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def make_cert(cn: str, start: dt.datetime, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def codes(problems: list[cr.CredentialProblem]) -> set[str]:
    return {p.code for p in problems}


def test_good_certificate() -> None:
    """A valid certificate for this thing raises no problem."""
    cert, _ = make_cert("robot-1", NOW - dt.timedelta(days=1), 30)
    assert cr.check_certificate(cert, "robot-1", NOW) == []


def test_expired_not_yet_valid_and_cn() -> None:
    """An expired, not-yet-valid or other-thing certificate is refused with a doctor hint."""
    old, _ = make_cert("robot-1", NOW - dt.timedelta(days=40), 30)
    future, _ = make_cert("robot-1", NOW + dt.timedelta(days=1), 30)
    other, _ = make_cert("robot-2", NOW - dt.timedelta(days=1), 30)
    assert codes(cr.check_certificate(old, "robot-1", NOW)) == {"cert_expired"}
    assert codes(cr.check_certificate(future, "robot-1", NOW)) == {"cert_not_yet_valid"}
    problems = cr.check_certificate(other, "robot-1", NOW)
    assert codes(problems) == {"cert_cn_mismatch"}
    assert "doctor" in problems[0].hint


def test_key_mode_pure() -> None:
    """A key readable by others, or owned by another user, is refused with the chmod/chown fix."""
    assert cr.check_key_mode("/k", 0o100600, 1000, 1000) == []
    problems = cr.check_key_mode("/k", 0o100644, 1000, 1000)
    assert codes(problems) == {"key_mode"} and "chmod 600 /k" in problems[0].hint
    assert codes(cr.check_key_mode("/k", 0o100600, 1000, 1001)) == {"key_owner"}


def test_files(tmp_path: Path) -> None:
    """On real files: a good pair passes; a loose key mode, a missing or unparsable certificate each get their code."""
    cert, key = make_cert("robot-1", dt.datetime.now(dt.UTC) - dt.timedelta(days=1), 30)
    cert_path, key_path = tmp_path / "device.crt", tmp_path / "device.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(key_path, 0o600)
    assert cr.check_files("robot-1", str(cert_path), str(key_path)) == []
    os.chmod(key_path, 0o640)
    assert codes(cr.check_files("robot-1", str(cert_path), str(key_path))) == {"key_mode"}
    assert codes(cr.check_files("robot-1", str(tmp_path / "nope.crt"), None)) == {"cert_missing"}
    (tmp_path / "junk.crt").write_text("not a cert")
    assert codes(cr.check_files("robot-1", str(tmp_path / "junk.crt"), None)) == {"cert_unparsable"}


def test_isolated_check_matches_in_process(tmp_path: Path) -> None:
    """The forked check finds exactly what the in-process check finds."""
    cert, _key = make_cert("robot-9", dt.datetime.now(dt.UTC) - dt.timedelta(days=1), 30)
    cert_path, key_path = tmp_path / "device.crt", tmp_path / "device.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(b"k")
    os.chmod(key_path, 0o644)
    isolated = cr.check_files_isolated("robot-1", str(cert_path), str(key_path))
    assert isolated == cr.check_files("robot-1", str(cert_path), str(key_path))
    assert codes(isolated) == {"key_mode", "cert_cn_mismatch"}
