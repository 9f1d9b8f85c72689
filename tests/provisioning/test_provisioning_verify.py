"""``check_identity`` and ``roomba-provision verify`` name each broken identity with the right reason."""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioning.ca import CertificateAuthority, init_ca
from provisioning.device import create_identity
from provisioning.verify import check_identity

NOW = dt.datetime.now(dt.UTC)  # for certificates dated relative to it; checks use the time they run at


def codes(findings: list) -> list[str]:
    return [f.code for f in findings]


def cli_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioning.cli", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def good(tmp_path: Path, file_ca: CertificateAuthority) -> Path:
    create_identity(file_ca, "robot-ok", tmp_path / "robot-ok")
    return tmp_path / "robot-ok"


def check(directory: Path, ca: CertificateAuthority, thing: str | None = "robot-ok", **kw) -> list:
    return check_identity(
        directory / "device.crt", directory / "device.key", ca.cert_path, thing, dt.datetime.now(dt.UTC), **kw
    )


def test_good_identity_has_no_findings(good: Path, file_ca: CertificateAuthority) -> None:
    """A fresh identity verifies with no findings and a one-line ok."""
    assert check(good, file_ca) == []
    result = cli_verify("--dir", str(good), "--ca", str(file_ca.dir), "--thing", "robot-ok")
    assert result.returncode == 0 and "ok:" in result.stdout and result.stderr == ""


def test_tampered_certificate(good: Path, file_ca: CertificateAuthority) -> None:
    """A certificate edited after signing is ``chain.signature_invalid``, reported as tampered in one line."""
    cert = x509.load_pem_x509_certificate((good / "device.crt").read_bytes())
    der = cert.public_bytes(serialization.Encoding.DER)
    tampered = der.replace(b"robot-ok", b"robot-ko")
    assert tampered != der
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(tampered) + b"-----END CERTIFICATE-----\n"
    (good / "device.crt").write_bytes(pem)
    assert "chain.signature_invalid" in codes(check(good, file_ca, thing="robot-ko"))
    result = cli_verify("--dir", str(good), "--ca", str(file_ca.cert_path), "--thing", "robot-ko")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "roomba-provision: error: chain.signature_invalid: certificate signature does not verify with the CA key"
        " (tampered)"
    ]


def test_corrupt_certificate(good: Path, file_ca: CertificateAuthority) -> None:
    """An unparseable certificate is ``cert.corrupt``, not an exception."""
    (good / "device.crt").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    assert codes(check(good, file_ca)) == ["cert.corrupt"]


def test_expired_and_expiring_and_future(tmp_path: Path, file_ca: CertificateAuthority) -> None:
    """Expired is an error, expiring within the warning window a warning, not yet valid an error."""
    past = NOW - dt.timedelta(days=400)
    create_identity(file_ca, "robot-ok", tmp_path / "old", days=10, now=past)
    assert codes(check(tmp_path / "old", file_ca)) == ["cert.expired"]
    result = cli_verify("--dir", str(tmp_path / "old"), "--ca", str(file_ca.dir), "--thing", "robot-ok")
    assert result.returncode == 1 and "cert.expired" in result.stderr and "ago" in result.stderr

    create_identity(file_ca, "robot-ok", tmp_path / "soon", days=10)
    findings = check(tmp_path / "soon", file_ca)
    assert codes(findings) == ["cert.expires_soon"] and findings[0].severity == "warning"
    result = cli_verify("--dir", str(tmp_path / "soon"), "--ca", str(file_ca.dir))
    assert result.returncode == 0 and "warning: cert.expires_soon" in result.stderr

    create_identity(file_ca, "robot-ok", tmp_path / "future", not_before=NOW + dt.timedelta(days=2))
    assert codes(check(tmp_path / "future", file_ca)) == ["cert.not_yet_valid"]


def test_key_mismatch(tmp_path: Path, good: Path, file_ca: CertificateAuthority) -> None:
    """A key that does not match the certificate is ``key.mismatch``; no PEM is echoed."""
    create_identity(file_ca, "robot-other", tmp_path / "other")
    shutil.copy(tmp_path / "other" / "device.key", good / "device.key")
    assert codes(check(good, file_ca)) == ["key.mismatch"]
    result = cli_verify("--dir", str(good), "--ca", str(file_ca.dir), "--thing", "robot-ok")
    assert result.returncode == 1 and "key.mismatch" in result.stderr
    assert "BEGIN" not in result.stderr + result.stdout


def test_wrong_ca(tmp_path: Path, good: Path) -> None:
    """A certificate from another CA is ``chain.wrong_ca``, naming that CA."""
    other = init_ca(tmp_path / "other-ca", common_name="Someone Else CA")
    findings = check(good, other)
    assert codes(findings) == ["chain.wrong_ca"]
    assert "Someone Else CA" in findings[0].message


def test_same_name_other_ca_key(tmp_path: Path, good: Path) -> None:
    """A CA with the same name but another key does not verify it (the signature counts, not the name)."""
    impostor = init_ca(tmp_path / "impostor")
    assert codes(check(good, impostor)) == ["chain.signature_invalid"]


def test_bad_thing_name_and_cn_mismatch(good: Path, file_ca: CertificateAuthority) -> None:
    """An illegal expected thing name and a CN for another thing are separate findings."""
    assert codes(check(good, file_ca, thing="robot ok")) == ["thing.invalid", "cn.mismatch"]
    assert codes(check(good, file_ca, thing="robot-other")) == ["cn.mismatch"]
    result = cli_verify("--dir", str(good), "--ca", str(file_ca.dir), "--thing", "robot/ok")
    assert result.returncode == 1 and "thing.invalid" in result.stderr


def test_file_modes(good: Path, file_ca: CertificateAuthority) -> None:
    """A readable key or directory is a finding that says the chmod to run."""
    os.chmod(good / "device.key", 0o644)
    os.chmod(good, 0o755)
    findings = check(good, file_ca)
    assert codes(findings) == ["mode.key", "mode.dir"]
    assert "chmod 600" in findings[0].message and "chmod 700" in findings[1].message


def test_missing_files(good: Path, file_ca: CertificateAuthority, tmp_path: Path) -> None:
    """A missing key or CA file is a finding (``key.missing``, ``ca.missing``), not a crash."""
    (good / "device.key").unlink()
    assert codes(check(good, file_ca)) == ["key.missing"]
    assert codes(
        check_identity(good / "device.crt", None, tmp_path / "nope.crt", "robot-ok", dt.datetime.now(dt.UTC))
    ) == ["ca.missing"]
