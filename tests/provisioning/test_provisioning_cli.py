"""``roomba-provision`` end to end as a subprocess: openssl accepts what it issues, errors are one line."""

from __future__ import annotations

import os
import re
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
    """``ca init`` makes a root openssl reads as CA:TRUE pathlen 0; a second init refuses to overwrite it."""
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
    """``--key-type rsa`` gives an RSA-2048 CA."""
    assert run_cli("ca", "init", "--dir", str(tmp_path / "rsa"), "--key-type", "rsa").returncode == 0
    text = openssl("x509", "-in", str(tmp_path / "rsa" / "ca.crt"), "-noout", "-text").stdout
    assert "rsaEncryption" in text and "(2048 bit)" in text and "CA:TRUE" in text


def test_keygen_then_sign_at_station(run_cli, tmp_path: Path, ca_dir: Path, openssl) -> None:
    """The key stays on the robot: keygen, the station signs, install; overwrites, foreign certs refused."""
    robot = tmp_path / "robot"
    result = run_cli("device", "keygen", "--thing", "robot-042", "--out", str(robot))
    assert result.returncode == 0, result.stderr
    assert oct(robot.stat().st_mode & 0o777) == "0o700"
    assert oct((robot / "device.key").stat().st_mode & 0o777) == "0o600"
    req = openssl("req", "-in", str(robot / "device.csr"), "-noout", "-verify", "-subject")
    assert req.returncode == 0 and "CN = robot-042" in req.stdout
    key_before = (robot / "device.key").read_bytes()
    one_error_line(run_cli("device", "keygen", "--thing", "robot-042", "--out", str(robot)), "device.key")
    assert (robot / "device.key").read_bytes() == key_before

    out = tmp_path / "station" / "robot-042.crt"
    result = run_cli(
        "sign", "--ca", str(ca_dir), "--csr", str(robot / "device.csr"), "--out", str(out), "--days", "90"
    )
    assert result.returncode == 0, result.stderr
    assert "thing: robot-042" in result.stdout
    issued = x509.load_pem_x509_certificate(out.read_bytes())
    lifetime = issued.not_valid_after_utc - issued.not_valid_before_utc
    assert lifetime.days == 90 and issued.subject.rfc4514_string() == "CN=robot-042"
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
    root_before = (robot / "root-ca.crt").read_bytes()
    other_root = tmp_path / "other-root.crt"
    other_root.write_bytes(
        x509.load_pem_x509_certificates(chained.read_bytes())[0].public_bytes(serialization.Encoding.PEM)
    )
    one_error_line(
        run_cli("device", "install", "--dir", str(robot), "--cert", str(out), "--root-ca", str(other_root)),
        "already exists; pass --force",
    )
    assert (robot / "root-ca.crt").read_bytes() == root_before

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
    """Bad names, weak keys, tampered or unreadable CSRs are one-line errors and no certificate is written."""
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
    """``device create`` then ``verify`` on the same CA and thing succeeds (the one-step path)."""
    out = tmp_path / "sim-1"
    result = run_cli("device", "create", "--ca", str(ca_dir), "--thing", "sim-1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert openssl("verify", "-CAfile", str(out / "root-ca.crt"), str(out / "device.crt")).returncode == 0
    result = run_cli("verify", "--dir", str(out), "--ca", str(ca_dir), "--thing", "sim-1")
    assert result.returncode == 0, result.stderr


def test_verification_cert_file_ca(run_cli, tmp_path: Path, ca_dir: Path, openssl) -> None:
    """AWS's CA-registration verification certificate: CN is the registration code, a bad code is refused."""
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


def test_no_pin_on_command_line_and_never_echoed(run_cli, tmp_path: Path) -> None:
    """A PIN option on the command line is refused without echoing it; unknown options are not echoed."""
    secret = "Zq-do-not-echo-7"
    for args in (["--pin", secret], [f"--pin={secret}"], ["--so-pin", secret]):
        result = run_cli("ca", "init", "--dir", str(tmp_path / "never"), *args)
        assert result.returncode == 2
        assert secret not in result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "is not accepted: a PIN never goes on the command line" in lines[0]
    result = run_cli("sign", "--ca", "x", "--csr", "y", "--out", "z", "--frobnicate=" + secret, secret)
    assert result.returncode == 2 and secret not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "roomba-provision: error: unrecognized option(s): --frobnicate (see roomba-provision --help)"
    ]
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["ca", "init", "--dir", "D", "--days", "0"], "argument --days: 0 is outside 1..36500"),
        (["ca", "init", "--dir", "D", "--days", "-5"], "argument --days: -5 is outside"),
        (["ca", "init", "--dir", "D", "--days", "99999999999"], "is outside 1..36500"),
        (["ca", "init", "--dir", "D", "--days", "ten"], "'ten' is not a whole number"),
        (["ca", "init", "--dir", "D", "--path-length", "-1"], "argument --path-length: -1 is outside"),
        (["device", "create", "--ca", "C", "--thing", "t", "--out", "D", "--days", "0"], "--days"),
        (["sign", "--ca", "C", "--csr", "c", "--out", "o", "--days", "-1"], "--days"),
        (["batch", "--ca", "C", "--count", "0", "--out", "D"], "argument --count: 0 is outside"),
        (["verify", "--dir", "D", "--ca", "C", "--warn-days", "-1"], "--warn-days"),
        (["ca", "init"], "the following arguments are required: --dir"),
        (["ca", "init", "--dir", "D", "--key-type", "dsa"], "invalid choice: 'dsa'"),
    ],
    ids=[
        "ca-days-zero",
        "ca-days-negative",
        "ca-days-huge",
        "ca-days-text",
        "path-length-negative",
        "create-days",
        "sign-days",
        "batch-count",
        "warn-days",
        "missing-required",
        "bad-choice",
    ],
)
def test_usage_errors_are_one_line(run_cli, tmp_path: Path, args: list[str], contains: str) -> None:
    """Every usage error is one ``roomba-provision: error:`` line, exit 2, and creates nothing."""
    result = run_cli(*[str(tmp_path / a) if a in ("D", "C") else a for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roomba-provision: error: ") and contains in lines[0], lines[0]
    assert not (tmp_path / "D").exists()


def test_api_refuses_empty_or_absurd_validity(tmp_path: Path) -> None:
    """The API too refuses 0 or negative validity and a negative path length, writing nothing."""
    from provisioning.ca import init_ca
    from provisioning.device import create_identity
    from provisioning.errors import InvalidInput

    with pytest.raises(InvalidInput, match=r"validity must be 1\.\.36500 days"):
        init_ca(tmp_path / "ca0", days=0)
    with pytest.raises(InvalidInput, match="path length"):
        init_ca(tmp_path / "ca1", path_length=-1)
    assert not (tmp_path / "ca0").exists() and not (tmp_path / "ca1").exists()
    ca = init_ca(tmp_path / "ca")
    with pytest.raises(InvalidInput, match="validity"):
        create_identity(ca, "robot-x", tmp_path / "id", days=-1)
    assert not (tmp_path / "id").exists()


def test_unexpected_exception_is_one_line(run_cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A bug surfaces as one line saying how to get the traceback, not as a traceback."""
    from provisioning import cli

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(cli, "init_ca", boom)
    result = run_cli("ca", "init", "--dir", str(tmp_path / "ca"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "roomba-provision: error: unexpected RuntimeError: simulated bug (a bug: rerun with --log-level debug "
        "for the traceback and report it)"
    ]


def test_ca_dir_modes(tmp_path: Path, run_cli) -> None:
    """The CA directory is 0700, its key 0600, its certificate world-readable 0644."""
    assert run_cli("ca", "init", "--dir", str(tmp_path / "new" / "ca")).returncode == 0
    assert oct((tmp_path / "new" / "ca").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "new" / "ca" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "new" / "ca" / "ca.crt").stat().st_mode & 0o777) == "0o644"


def test_verify_reports_how_soon_and_checks_cn_without_thing(run_cli, tmp_path: Path, ca_dir: Path) -> None:
    """``verify`` says when it expires; without --thing it still refuses a CN AWS would refuse."""
    out = tmp_path / "id"
    assert (
        run_cli(
            "device", "create", "--ca", str(ca_dir), "--thing", "soon-1", "--out", str(out), "--days", "90"
        ).returncode
        == 0
    )
    result = run_cli("verify", "--dir", str(out), "--ca", str(ca_dir))
    assert result.returncode == 0, result.stderr
    assert "valid identity for soon-1" in result.stdout
    assert re.search(r", in (89|90) days\)$", result.stdout.strip()), result.stdout

    key = ec.generate_private_key(ec.SECP256R1())
    from provisioning.ca import load_ca

    bad = tmp_path / "bad"
    bad.mkdir(mode=0o700)
    ca = load_ca(ca_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "robot 9", _validate=False)])
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=300))
        .sign(ca.key, hashes.SHA256())
    )
    (bad / "device.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (bad / "device.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(bad / "device.key", 0o600)
    result = run_cli("verify", "--dir", str(bad), "--ca", str(ca_dir))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "roomba-provision: error: cn.invalid: certificate CN cannot be a thing name: thing name 'robot 9' "
        "contains ' '; AWS IoT allows only [a-zA-Z0-9:_-]"
    ]


def test_verification_code_must_be_ascii(run_cli, tmp_path: Path, ca_dir: Path) -> None:
    """Non-ASCII digits, an over-long or punctuated registration code are refused; nothing is written."""
    out = tmp_path / "v.pem"
    for code in ("\u0663\u0663\u0663", "a" * 65, "abc-123"):
        result = run_cli(
            "ca", "verification-cert", "--ca", str(ca_dir), "--registration-code", code, "--out", str(out)
        )
        one_error_line(result, "registration code must be")
    assert not out.exists()


def test_server_cert_rejects_bad_names(run_cli, tmp_path: Path, ca_dir: Path) -> None:
    """Invalid hostnames or IPs, or none at all, are one-line errors; wildcards and IPv6 are fine."""
    base = ["ca", "server-cert", "--ca", str(ca_dir), "--out", str(tmp_path / "srv")]
    one_error_line(
        run_cli(*base, "--hostname", "bad host!"), "bad --hostname/--ip: 'bad host!' is not a DNS name"
    )
    one_error_line(run_cli(*base, "--ip", "300.1.2.3"), "bad --hostname/--ip")
    one_error_line(run_cli(*base), "at least one --hostname or --ip")
    assert not (tmp_path / "srv" / "server.key").exists()
    result = run_cli(*base, "--hostname", "broker.local", "--hostname", "*.fleet.example", "--ip", "::1")
    assert result.returncode == 0, result.stderr


def test_json_output_of_ca_init_sign_verify_and_the_device_commands(run_cli, tmp_path: Path) -> None:
    """``--json`` prints one document with the same facts as the text (paths, thing, certificate id, expiry)."""
    import json

    ca = tmp_path / "ca"
    result = run_cli("ca", "init", "--dir", str(ca), "--days", "400", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["certificate"] == str(ca / "ca.crt") and doc["key"] == str(ca / "ca.key")
    assert doc["token"] is None and re.fullmatch(r"[0-9a-f]{64}", doc["certificate_id"])
    issued = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    assert doc["not_after"] == issued.not_valid_after_utc.isoformat()

    robot = tmp_path / "robot"
    doc = json.loads(run_cli("device", "keygen", "--thing", "json-1", "--out", str(robot), "--json").stdout)
    assert doc == {
        "thing": "json-1",
        "dir": str(robot),
        "csr": str(robot / "device.csr"),
        "key": str(robot / "device.key"),
        "token": None,
        "key_label": None,
    }
    out = tmp_path / "json-1.crt"
    result = run_cli(
        "sign",
        "--ca",
        str(ca),
        "--csr",
        str(robot / "device.csr"),
        "--out",
        str(out),
        "--days",
        "30",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert (doc["certificate"], doc["thing"], doc["chain"]) == (str(out), "json-1", False)
    assert doc["key"].startswith("EC") and doc["not_after"] == cert.not_valid_after_utc.isoformat()

    result = run_cli(
        "device",
        "install",
        "--dir",
        str(robot),
        "--cert",
        str(out),
        "--root-ca",
        str(ca / "ca.crt"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    installed = json.loads(result.stdout)
    assert installed["thing"] == "json-1" and installed["certificate_id"] == doc["certificate_id"]

    result = run_cli("verify", "--dir", str(robot), "--ca", str(ca), "--thing", "json-1", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["ok"], doc["thing"], doc["dir"]) == (True, "json-1", str(robot))
    assert doc["days_left"] in (29, 30) and doc["not_after"] == cert.not_valid_after_utc.isoformat()
    assert [f["code"] for f in doc["findings"]] == ["cert.expires_soon"]

    result = run_cli("verify", "--dir", str(robot), "--ca", str(ca), "--thing", "json-2", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["days_left"] is None
    assert any(f["severity"] == "error" for f in doc["findings"])

    created = tmp_path / "created"
    result = run_cli(
        "device", "create", "--ca", str(ca), "--thing", "json-3", "--out", str(created), "--json"
    )
    doc = json.loads(result.stdout)
    assert (doc["thing"], doc["dir"], doc["certificate"]) == (
        "json-3",
        str(created),
        str(created / "device.crt"),
    )

    result = run_cli(
        "ca", "server-cert", "--ca", str(ca), "--out", str(tmp_path / "srv"), "--ip", "127.0.0.1", "--json"
    )
    assert json.loads(result.stdout) == {
        "certificate": str(tmp_path / "srv" / "server.crt"),
        "key": str(tmp_path / "srv" / "server.key"),
    }
    vpem = tmp_path / "verification.pem"
    result = run_cli(
        "ca",
        "verification-cert",
        "--ca",
        str(ca),
        "--registration-code",
        "abc123",
        "--out",
        str(vpem),
        "--json",
    )
    assert json.loads(result.stdout) == {"verification_certificate": str(vpem)}


def test_completion_and_version(run_cli) -> None:
    """``completion bash`` prints the script for every sub-command; ``--version`` works at every level."""
    from base import __version__

    result = run_cli("completion", "bash")
    assert (
        result.returncode == 0
        and "complete -o default -F _roomba_provision roomba-provision" in result.stdout
    )
    assert '"ca") words="--help --version init server-cert verification-cert" ;;' in result.stdout
    for argv in (["--version"], ["ca", "init", "--version"], ["aws", "policy", "--version"]):
        result = run_cli(*argv)
        assert (result.returncode, result.stdout) == (0, f"roomba-provision {__version__}\n")
