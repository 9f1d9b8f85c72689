"""``roomba-provision`` end to end as a subprocess: openssl accepts what it issues, errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def cli_process(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script in a child process (what an operator runs)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "roomba-provision"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str], contains: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roomba-provision: error: ") and contains in lines[0], lines[0]


def make_csr(key: object, cn: str | None, tmp: Path, name: str = "x.csr") -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)] if cn is not None else []
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs)).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    path = tmp / name
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli") / "ca"
    result = cli_process("ca", "init", "--dir", str(directory))
    assert result.returncode == 0, result.stderr
    return directory


def test_ca_init_extensions_with_openssl(run_cli, ca_dir: Path, openssl) -> None:
    text = openssl("x509", "-in", str(ca_dir / "ca.crt"), "-noout", "-text").stdout
    for expected in (
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
        "Subject Key Identifier",
        "prime256v1",
    ):
        assert expected in text
    one_error_line(run_cli("ca", "init", "--dir", str(ca_dir)), "refusing to overwrite a CA")


def test_ca_init_rsa(run_cli, tmp_path: Path, openssl) -> None:
    assert run_cli("ca", "init", "--dir", str(tmp_path / "rsa"), "--key-type", "rsa").returncode == 0
    text = openssl("x509", "-in", str(tmp_path / "rsa" / "ca.crt"), "-noout", "-text").stdout
    assert "rsaEncryption" in text and "(2048 bit)" in text and "CA:TRUE" in text


def test_keygen_then_sign_at_station(run_cli, tmp_path: Path, ca_dir: Path, openssl) -> None:
    robot = tmp_path / "robot"
    result = run_cli("device", "keygen", "--thing", "robot-042", "--out", str(robot))
    assert result.returncode == 0, result.stderr
    assert oct(robot.stat().st_mode & 0o777) == "0o700"
    assert oct((robot / "device.key").stat().st_mode & 0o777) == "0o600"
    req = openssl("req", "-in", str(robot / "device.csr"), "-noout", "-verify", "-subject")
    assert req.returncode == 0 and "CN = robot-042" in req.stdout
    one_error_line(run_cli("device", "keygen", "--thing", "robot-042", "--out", str(robot)), "device.key")

    out = tmp_path / "station" / "robot-042.crt"
    result = run_cli(
        "sign", "--ca", str(ca_dir), "--csr", str(robot / "device.csr"), "--out", str(out), "--days", "90"
    )
    assert result.returncode == 0, result.stderr
    assert "thing: robot-042" in result.stdout
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.crt"), str(out)).returncode == 0
    text = openssl("x509", "-in", str(out), "-noout", "-text").stdout
    assert (
        "TLS Web Client Authentication" in text and "CA:FALSE" in text and "Authority Key Identifier" in text
    )
    one_error_line(
        run_cli("sign", "--ca", str(ca_dir), "--csr", str(robot / "device.csr"), "--out", str(out)), "--force"
    )

    chained = tmp_path / "chain.crt"
    result = run_cli(
        "sign", "--ca", str(ca_dir), "--csr", str(robot / "device.csr"), "--out", str(chained), "--chain"
    )
    assert result.returncode == 0
    pems = x509.load_pem_x509_certificates(chained.read_bytes())
    assert len(pems) == 2 and pems[1] == x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.crt"), str(chained)).returncode == 0

    one_error_line(run_cli("device", "install", "--dir", str(robot), "--cert", str(out)), "root-ca.crt")
    result = run_cli(
        "device", "install", "--dir", str(robot), "--cert", str(chained), "--root-ca", str(ca_dir / "ca.crt")
    )
    assert result.returncode == 0, result.stderr
    result = run_cli("verify", "--dir", str(robot), "--ca", str(ca_dir), "--thing", "robot-042")
    assert result.returncode == 0, result.stderr
    one_error_line(run_cli("device", "install", "--dir", str(robot), "--cert", str(out)), "already exists")

    other = tmp_path / "other"
    assert run_cli("device", "keygen", "--thing", "robot-042", "--out", str(other)).returncode == 0
    one_error_line(
        run_cli(
            "device", "install", "--dir", str(other), "--cert", str(out), "--root-ca", str(ca_dir / "ca.crt")
        ),
        "not for this robot's key",
    )
    assert not (other / "device.crt").exists()


def test_sign_rejects_bad_csrs(run_cli, tmp_path: Path, ca_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    out = str(tmp_path / "out.crt")

    def sign(csr: Path) -> subprocess.CompletedProcess[str]:
        return run_cli("sign", "--ca", str(ca_dir), "--csr", str(csr), "--out", out)

    one_error_line(sign(make_csr(key, "robot 7", tmp_path, "a.csr")), "thing name 'robot 7'")
    one_error_line(sign(make_csr(key, "r" * 129, tmp_path, "b.csr")), "at most 128")
    one_error_line(sign(make_csr(key, "r" * 65, tmp_path, "b2.csr")), "X.509 limits to 64")
    one_error_line(sign(make_csr(key, None, tmp_path, "c.csr")), "exactly one CN")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    one_error_line(sign(make_csr(weak, "robot-7", tmp_path, "d.csr")), "RSA key is 1024 bits")
    p192 = ec.generate_private_key(ec.SECP192R1())
    one_error_line(sign(make_csr(p192, "robot-7", tmp_path, "e.csr")), "curve secp192r1")

    good = make_csr(key, "robot-7", tmp_path, "f.csr")
    pem = good.read_bytes()
    csr = x509.load_pem_x509_csr(pem)
    der = csr.public_bytes(serialization.Encoding.DER).replace(b"robot-7", b"robot-8")
    tampered = tmp_path / "g.csr"
    tampered.write_bytes(der)
    one_error_line(sign(tampered), "CSR signature is invalid")
    (tmp_path / "h.csr").write_text("not a csr")
    one_error_line(sign(tmp_path / "h.csr"), "not a PEM or DER certificate signing request")
    one_error_line(
        run_cli("sign", "--ca", str(tmp_path / "no-ca"), "--csr", str(good), "--out", out), "does not exist"
    )
    assert not Path(out).exists()


def test_device_create_and_verify(run_cli, tmp_path: Path, ca_dir: Path, openssl) -> None:
    out = tmp_path / "sim-1"
    result = run_cli("device", "create", "--ca", str(ca_dir), "--thing", "sim-1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert openssl("verify", "-CAfile", str(out / "root-ca.crt"), str(out / "device.crt")).returncode == 0
    result = run_cli("verify", "--dir", str(out), "--ca", str(ca_dir), "--thing", "sim-1")
    assert result.returncode == 0, result.stderr


def test_verification_cert_file_ca(run_cli, tmp_path: Path, ca_dir: Path, openssl) -> None:
    out = tmp_path / "verification.pem"
    result = run_cli(
        "ca", "verification-cert", "--ca", str(ca_dir), "--registration-code", "a1b2c3d4e5", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert openssl("verify", "-CAfile", str(ca_dir / "ca.crt"), str(out)).returncode == 0
    assert "CN = a1b2c3d4e5" in openssl("x509", "-in", str(out), "-noout", "-subject").stdout
    one_error_line(
        run_cli(
            "ca", "verification-cert", "--ca", str(ca_dir), "--registration-code", "a b", "--out", str(out)
        ),
        "registration code",
    )


def test_no_pin_on_command_line(run_cli, tmp_path: Path) -> None:
    result = run_cli("ca", "init", "--dir", str(tmp_path / "never"), "--pin", "1234")
    assert result.returncode == 2 and "unrecognized arguments: --pin" in result.stderr
    assert not (tmp_path / "never").exists()
