"""A CA and device keys inside a real SoftHSM2 token: non-extractable, used for every signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11e

from provisioning import certs, hsm
from provisioning.ca import init_ca, load_ca
from provisioning.device import create_identity, install_certificate, keygen
from provisioning.errors import KeyExists, PinMissing, TokenNotFound, WrongPin
from provisioning.verify import check_identity


def test_token_ca_signs_and_key_cannot_leave(
    tmp_path: Path, softhsm: dict[str, str], token: str, openssl
) -> None:
    ca = init_ca(tmp_path / "ca", pkcs11_module=softhsm["module"], token_label=token, pin=softhsm["pin"])
    try:
        assert not (tmp_path / "ca" / "ca.key").exists()
        assert (tmp_path / "ca" / "ca-pkcs11.json").exists()
        assert softhsm["pin"] not in (tmp_path / "ca" / "ca-pkcs11.json").read_text()
        assert ca.in_token
        assert openssl("verify", "-CAfile", str(ca.cert_path), str(ca.cert_path)).returncode == 0
        priv = ca.key.pkcs11_private_key  # type: ignore[union-attr]
        assert priv[Attribute.EXTRACTABLE] is False
        assert priv[Attribute.SENSITIVE] is True
        assert priv[Attribute.NEVER_EXTRACTABLE] is True
        with pytest.raises(p11e.AttributeSensitive):
            priv[Attribute.VALUE]
        with pytest.raises(TypeError):
            ca.key.private_bytes(None, None, None)  # type: ignore[arg-type]
    finally:
        ca.close()

    with load_ca(tmp_path / "ca", pin=softhsm["pin"]) as loaded:
        ident = create_identity(loaded, "hsm-robot-1", tmp_path / "id")
    assert openssl("verify", "-CAfile", str(ident.ca_path), str(ident.cert_path)).returncode == 0
    assert check_identity(ident.cert_path, ident.key_path, tmp_path / "ca" / "ca.crt", "hsm-robot-1") == []


def test_token_ca_errors(tmp_path: Path, softhsm: dict[str, str], token: str, monkeypatch) -> None:
    monkeypatch.delenv(hsm.PIN_ENV, raising=False)
    with pytest.raises(WrongPin, match="rejected the PIN"):
        init_ca(tmp_path / "a", pkcs11_module=softhsm["module"], token_label=token, pin="0000")
    with pytest.raises(TokenNotFound, match="no-such-token"):
        init_ca(tmp_path / "b", pkcs11_module=softhsm["module"], token_label="no-such-token", pin="1")
    with pytest.raises(PinMissing, match=hsm.PIN_ENV):
        init_ca(tmp_path / "c", pkcs11_module=softhsm["module"], token_label=token)
    init_ca(tmp_path / "d", pkcs11_module=softhsm["module"], token_label=token, pin=softhsm["pin"]).close()
    with pytest.raises(KeyExists, match="roomba-ca"):
        init_ca(tmp_path / "e", pkcs11_module=softhsm["module"], token_label=token, pin=softhsm["pin"])
    with pytest.raises(WrongPin):
        load_ca(tmp_path / "d", pin="9999")
    with pytest.raises(PinMissing):
        load_ca(tmp_path / "d")
    monkeypatch.setenv(hsm.PIN_ENV, softhsm["pin"])
    load_ca(tmp_path / "d").close()


def test_device_key_in_token(tmp_path: Path, softhsm: dict[str, str], token: str, file_ca, openssl) -> None:
    result = keygen(
        "token-robot",
        tmp_path / "robot",
        pkcs11_module=softhsm["module"],
        token_label=token,
        pin=softhsm["pin"],
    )
    assert result.key_path is None and not (tmp_path / "robot" / "device.key").exists()
    assert (tmp_path / "robot" / "device-pkcs11.json").exists()
    assert openssl("req", "-in", str(result.csr_path), "-noout", "-verify").returncode == 0
    cert = file_ca.sign_csr(result.csr_path.read_bytes())
    with hsm.session(softhsm["module"], token, softhsm["pin"]) as sess:
        priv = sess.get_key(object_class=ObjectClass.PRIVATE_KEY, label="token-robot")
        assert priv[Attribute.EXTRACTABLE] is False
        key = hsm.TokenEcKey(sess, "token-robot")
        assert cert.public_key() == key.public_key()
    ident = install_certificate(tmp_path / "robot", certs.cert_pem(cert), root_ca=file_ca.cert_path)
    assert ident.key_path is None
    assert check_identity(ident.cert_path, None, file_ca.cert_path, "token-robot") == []
    with pytest.raises(KeyExists):
        keygen(
            "token-robot", tmp_path / "robot2", pkcs11_module=softhsm["module"], token_label=token, pin="4321"
        )
