"""A CA and device keys inside a real SoftHSM2 token: non-extractable, used for every signature.

Every PKCS#11 step runs in a child process (see ``SoftHsm`` in conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from provisioning.ca import CertificateAuthority
from provisioning.verify import check_identity

KEY_ATTRIBUTES = """
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e
from provisioning import hsm

with hsm.session(params["module"], params["token"], params["pin"]) as sess:
    priv = sess.get_key(object_class=ObjectClass.PRIVATE_KEY, label=params["label"])
    try:
        priv[Attribute.VALUE]
        value = "readable"
    except p11e.AttributeSensitive:
        value = "AttributeSensitive"
    key = hsm.TokenEcKey(sess, params["label"])
    try:
        key.private_bytes(None, None, None)
        serialise = "serialised"
    except TypeError as exc:
        serialise = str(exc)
    print(json.dumps({
        "extractable": priv[Attribute.EXTRACTABLE],
        "sensitive": priv[Attribute.SENSITIVE],
        "never_extractable": priv[Attribute.NEVER_EXTRACTABLE],
        "always_sensitive": priv[Attribute.ALWAYS_SENSITIVE],
        "value": value,
        "serialise": serialise,
    }))
"""


def one_error_line(result, contains: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roomba-provision: error: ") and contains in lines[0], lines[0]


def test_token_ca_signs_and_key_cannot_leave(tmp_path: Path, softhsm, token: str, openssl) -> None:
    """A token-made CA key is non-extractable and sensitive, yet signs identities and verification certs."""
    ca = tmp_path / "ca"
    pin = {"ROOMBA_PKCS11_PIN": softhsm.pin}
    result = softhsm.cli(
        "ca", "init", "--dir", str(ca), "--pkcs11-module", softhsm.module, "--token", token, env=pin
    )
    assert result.returncode == 0, result.stderr
    assert softhsm.pin not in result.stdout + result.stderr
    assert not (ca / "ca.key").exists()
    ref = json.loads((ca / "ca-pkcs11.json").read_text())
    assert ref == {"module": softhsm.module, "token_label": token, "key_label": "roomba-ca"}
    assert openssl("verify", "-CAfile", str(ca / "ca.crt"), str(ca / "ca.crt")).returncode == 0

    attrs = softhsm.python(
        KEY_ATTRIBUTES, module=softhsm.module, token=token, pin=softhsm.pin, label="roomba-ca"
    )
    assert attrs["extractable"] is False and attrs["never_extractable"] is True
    assert attrs["sensitive"] is True and attrs["always_sensitive"] is True
    assert attrs["value"] == "AttributeSensitive"
    assert "non-extractable" in attrs["serialise"]

    result = softhsm.cli(
        "device", "create", "--ca", str(ca), "--thing", "hsm-robot-1", "--out", str(tmp_path / "id"), env=pin
    )
    assert result.returncode == 0, result.stderr
    ident = tmp_path / "id"
    assert openssl("verify", "-CAfile", str(ident / "root-ca.crt"), str(ident / "device.crt")).returncode == 0
    text = openssl("x509", "-in", str(ident / "device.crt"), "-noout", "-text").stdout
    assert "ecdsa-with-SHA256" in text and "TLS Web Client Authentication" in text
    assert check_identity(ident / "device.crt", ident / "device.key", ca / "ca.crt", "hsm-robot-1") == []

    verification = tmp_path / "verification.pem"
    result = softhsm.cli(
        "ca",
        "verification-cert",
        "--ca",
        str(ca),
        "--registration-code",
        "XYZ789",
        "--out",
        str(verification),
        env=pin,
    )
    assert result.returncode == 0, result.stderr
    assert openssl("verify", "-CAfile", str(ca / "ca.crt"), str(verification)).returncode == 0
    assert "CN = XYZ789" in openssl("x509", "-in", str(verification), "-noout", "-subject").stdout


def test_token_ca_errors(tmp_path: Path, softhsm, token: str) -> None:
    """Wrong PIN, unknown token or module, no PIN, label clash: each a one-line reason, nothing half-made."""
    module = ["--pkcs11-module", softhsm.module]
    good, wrong = {"ROOMBA_PKCS11_PIN": softhsm.pin}, {"ROOMBA_PKCS11_PIN": "0000"}
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    d, x = str(tmp_path / "d"), str(tmp_path / "x")
    runs = softhsm.cli_runs(
        (["ca", "init", "--dir", str(tmp_path / "a"), *module, "--token", token], wrong),
        (["ca", "init", "--dir", str(tmp_path / "b"), *module, "--token", "no-such-token"], good),
        (["ca", "init", "--dir", str(tmp_path / "c"), *module, "--token", token], {}),
        (
            [
                "ca",
                "init",
                "--dir",
                str(tmp_path / "c"),
                "--pkcs11-module",
                "/nonexistent/p11.so",
                "--token",
                token,
            ],
            good,
        ),
        (["ca", "init", "--dir", d, *module, "--token", token, "--pin-file", str(tmp_path / "no-pin")], {}),
        (["ca", "init", "--dir", d, *module, "--token", token, "--pin-file", str(pin_file)], {}),
        (["ca", "init", "--dir", str(tmp_path / "e"), *module, "--token", token], good),
        (["device", "create", "--ca", d, "--thing", "x", "--out", x], wrong),
        (["device", "create", "--ca", d, "--thing", "x", "--out", x], {}),
        (["device", "create", "--ca", d, "--thing", "bad name", "--out", x, "--pin-file", str(pin_file)], {}),
        (["device", "create", "--ca", d, "--thing", "x", "--out", x, "--pin-file", str(pin_file)], {}),
        (["device", "create", "--ca", d, "--thing", "x", "--out", x, "--pin-file", str(pin_file)], {}),
    )
    expected = [
        f"token {token!r} rejected the PIN",
        "no PKCS#11 token labelled 'no-such-token'",
        "set ROOMBA_PKCS11_PIN or pass --pin-file",
        "PKCS#11 module /nonexistent/p11.so does not exist",
        "cannot read PIN file",
        None,
        "already holds a private key labelled 'roomba-ca'",
        "rejected the PIN",
        "ROOMBA_PKCS11_PIN",
        "thing name 'bad name' contains ' '",
        None,
        "already exists; refusing to overwrite a device key",
    ]
    for result, contains in zip(runs, expected, strict=True):
        if contains is None:
            assert result.returncode == 0, result.stderr
        else:
            one_error_line(result, contains)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ca-pkcs11.json", "ca.crt"]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == [
        "device.crt",
        "device.csr",
        "device.key",
        "root-ca.crt",
    ]


def test_device_key_in_token(
    tmp_path: Path, softhsm, token: str, file_ca: CertificateAuthority, openssl
) -> None:
    """A device key generated in a token never leaves it: only a CSR and a key reference are written."""
    robot = tmp_path / "robot"
    pin = {"ROOMBA_PKCS11_PIN": softhsm.pin}
    p11 = ["--pkcs11-module", softhsm.module, "--token", token]
    result = softhsm.cli("device", "keygen", "--thing", "token-robot", "--out", str(robot), *p11, env=pin)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in robot.iterdir()) == ["device-pkcs11.json", "device.csr"]
    assert json.loads((robot / "device-pkcs11.json").read_text())["key_label"] == "token-robot"
    assert openssl("req", "-in", str(robot / "device.csr"), "-noout", "-verify").returncode == 0

    attrs = softhsm.python(
        KEY_ATTRIBUTES, module=softhsm.module, token=token, pin=softhsm.pin, label="token-robot"
    )
    assert attrs["extractable"] is False and attrs["value"] == "AttributeSensitive"

    cert_file = tmp_path / "token-robot.crt"
    cert_file.write_bytes(file_ca.sign_csr((robot / "device.csr").read_bytes()).public_bytes(Encoding.PEM))
    result = softhsm.cli(
        "device",
        "install",
        "--dir",
        str(robot),
        "--cert",
        str(cert_file),
        "--root-ca",
        str(file_ca.cert_path),
    )
    assert result.returncode == 0, result.stderr
    assert check_identity(robot / "device.crt", None, file_ca.cert_path, "token-robot") == []
    result = softhsm.cli("verify", "--dir", str(robot), "--ca", str(file_ca.dir), "--thing", "token-robot")
    assert result.returncode == 0, result.stderr
    assert (
        x509.load_pem_x509_certificate((robot / "device.crt").read_bytes()).subject.rfc4514_string()
        == "CN=token-robot"
    )

    one_error_line(
        softhsm.cli(
            "device", "keygen", "--thing", "token-robot", "--out", str(tmp_path / "r2"), *p11, env=pin
        ),
        "already holds a private key labelled 'token-robot'",
    )


def test_no_pin_in_any_output_even_at_debug_level(tmp_path: Path, softhsm, token: str) -> None:
    """Success and failure paths, JSON and console logs at debug level: the PIN never appears."""
    wrong_pin = "Wrong-Pin-vX9q"
    module = ["--pkcs11-module", softhsm.module, "--token", token]
    debug = ["--log-level", "debug"]
    ca = str(tmp_path / "ca")
    runs: list[tuple[list[str], dict[str, str]]] = []
    for fmt in ("json", "console"):
        good = {"ROOMBA_LOG_FORMAT": fmt, "ROOMBA_LOG_LEVEL": "debug", "ROOMBA_PKCS11_PIN": softhsm.pin}
        wrong = {**good, "ROOMBA_PKCS11_PIN": wrong_pin}
        create = ["device", "create", "--ca", ca, "--thing", f"leak-{fmt}", "--out", str(tmp_path / fmt)]
        if fmt == "json":
            runs.append(([*debug, "ca", "init", "--dir", ca, *module], good))
        runs += [
            ([*debug, *create], wrong),
            ([*debug, *create], good),
            ([*debug, "ca", "init", "--dir", ca + "-" + fmt, *module], wrong),
            (
                [
                    *debug,
                    "ca",
                    "verification-cert",
                    "--ca",
                    ca,
                    "--registration-code",
                    "C0DE",
                    "--out",
                    str(tmp_path / f"v-{fmt}.pem"),
                ],
                good,
            ),
        ]
    results = softhsm.cli_runs(*runs)
    assert [r.returncode for r in results] == [0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert '"event": "ca.init"' in results[0].stderr  # debug logging really was on, as JSON
    assert "ca.cert.issued" in results[2].stderr and "ca.cert.issued" in results[6].stderr
    for result in results:
        text = result.stdout + result.stderr
        assert softhsm.pin not in text and wrong_pin not in text


SECOND_SESSION = """
from provisioning import certs
from provisioning.ca import load_ca
from provisioning.errors import ProvisioningError

first = load_ca(params["ca"], pin=params["pin"])
try:
    load_ca(params["ca"], pin=params["pin"])
    second = "opened"
except ProvisioningError as exc:
    second = str(exc)
issued = first.sign_csr(certs.build_csr(certs.generate_key(), "after-second-open"))
issued.verify_directly_issued_by(first.certificate)  # the first session still signs
first.close()
with load_ca(params["ca"], pin=params["pin"]) as again:
    reopened = again.in_token
print(json.dumps({"second": second, "reopened": reopened}))
"""


def test_second_open_of_the_same_token_is_a_clear_error(tmp_path: Path, softhsm, token: str) -> None:
    """Opening a token twice in one process is a clear error, and it can be reopened once closed."""
    ca = tmp_path / "ca"
    result = softhsm.cli(
        "ca",
        "init",
        "--dir",
        str(ca),
        "--pkcs11-module",
        softhsm.module,
        "--token",
        token,
        env={"ROOMBA_PKCS11_PIN": softhsm.pin},
    )
    assert result.returncode == 0, result.stderr
    outcome = softhsm.python(SECOND_SESSION, ca=str(ca), pin=softhsm.pin)
    assert "is already open in this process" in outcome["second"]
    assert outcome["reopened"] is True
