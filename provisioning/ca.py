"""The company CA: a key file for development, or a key that never leaves a PKCS#11 token.

Layout (docs/CONTRACTS.md): ``ca.crt`` plus either ``ca.key`` (0600) or ``ca-pkcs11.json`` (module, token
label, key label; never the PIN). Everything that signs goes through ``CertificateAuthority``, which holds a
``cryptography`` private key (a file key or ``hsm.TokenEcKey``), so the certificate code is the same for both.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from base.logs import get_logger
from provisioning import certs, hsm
from provisioning.errors import CaDirMissing, CaExists, InvalidInput, OutputExists
from provisioning.fsio import atomic_write

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_PKCS11 = "ca-pkcs11.json"
DEFAULT_KEY_LABEL = "roomba-ca"

log = get_logger("provisioning.ca")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """A loaded CA: its certificate and a signer. Close it (or use ``with``) to end a token session."""

    def __init__(self, directory: Path, certificate: x509.Certificate, key: certs.PrivateKey) -> None:
        self.dir = Path(directory)
        self.certificate = certificate
        self.key = key

    @property
    def cert_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def in_token(self) -> bool:
        return isinstance(self.key, hsm.TokenEcKey)

    @property
    def certificate_pem(self) -> bytes:
        return certs.cert_pem(self.certificate)

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest | bytes,
        days: int = certs.DEFAULT_DEVICE_DAYS,
        *,
        now: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Check a device CSR (signature, thing-name CN, key) and issue its client certificate."""
        if isinstance(csr, bytes):
            csr = certs.load_csr(csr)
        info = certs.check_csr(csr)
        return self.issue_client(info.public_key, info.thing, days=days, now=now, not_before=not_before)

    def issue_client(
        self,
        public_key: certs.PublicKey,
        thing: str,
        *,
        days: int = certs.DEFAULT_DEVICE_DAYS,
        now: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        cert = certs.build_client_certificate(
            self.certificate,
            self.key,
            certs.check_public_key(public_key),
            thing,
            now=now or utcnow(),
            days=days,
            not_before=not_before,
        )
        log.debug("ca.cert.issued", thing=thing, certificate_id=certs.certificate_id(cert))
        return cert

    def verification_certificate(self, registration_code: str, *, days: int = 30) -> x509.Certificate:
        """The proof-of-possession certificate for ``aws iot register-ca-certificate``."""
        return certs.build_verification_certificate(
            self.certificate, self.key, registration_code, now=utcnow(), days=days
        )

    def close(self) -> None:
        if isinstance(self.key, hsm.TokenEcKey):
            self.key.close()

    def __enter__(self) -> CertificateAuthority:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_free(directory: Path) -> None:
    for name in (CA_CERT, CA_KEY, CA_PKCS11):
        if (directory / name).exists():
            raise CaExists(f"{directory / name} already exists; refusing to overwrite a CA")


def _make_dir(directory: Path) -> None:
    """Create the CA directory (0700) once there is something to put in it; an existing one is kept."""
    if not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        os.chmod(directory, 0o700)
    _check_free(directory)


def init_ca(
    dir: str | os.PathLike[str],
    key_type: str = "ec",
    *,
    common_name: str = "Roomba Fleet Development CA",
    organization: str = "Roomba Fleet",
    days: int = certs.DEFAULT_CA_DAYS,
    path_length: int = 0,
    pkcs11_module: str | None = None,
    token_label: str | None = None,
    key_label: str = DEFAULT_KEY_LABEL,
    pin: str | None = None,
    pin_file: str | os.PathLike[str] | None = None,
    now: dt.datetime | None = None,
) -> CertificateAuthority:
    """Create a CA in ``dir``: EC P-256 (or ``key_type="rsa"``, 2048 bits) as a key file, or in a token.

    With ``pkcs11_module`` and ``token_label`` the key pair is generated inside the token as sensitive and
    non-extractable (EC only) and ``ca-pkcs11.json`` records where it is. Refuses to overwrite a CA. A
    directory it creates is 0700 (it holds ``ca.key``); an existing one keeps its mode.
    """
    directory = Path(dir)
    now = now or utcnow()
    certs.validity_end(now, days)
    if isinstance(path_length, bool) or not isinstance(path_length, int) or path_length < 0:
        raise InvalidInput(f"CA path length must be a whole number >= 0, not {path_length!r}")
    if directory.exists():
        _check_free(directory)
    key: certs.PrivateKey
    if pkcs11_module or token_label:
        if not (pkcs11_module and token_label):
            raise InvalidInput("a PKCS#11 CA needs both the module path and the token label")
        if key_type != "ec":
            raise InvalidInput("a PKCS#11 CA key is EC P-256; RSA is only offered for key-file CAs")
        resolved_pin = hsm.resolve_pin(pin, pin_file)
        ref = hsm.TokenKeyRef(module=pkcs11_module, token_label=token_label, key_label=key_label)
        with hsm.session(pkcs11_module, token_label, resolved_pin, rw=True) as sess:
            hsm.generate_ec_key(sess, key_label)
        key = hsm.open_key(ref, resolved_pin)
        key_file = (CA_PKCS11, (json.dumps(ref.to_json(), indent=2) + "\n").encode(), 0o644)
    else:
        key = certs.generate_key(key_type)
        key_file = (CA_KEY, certs.key_pem(key), 0o600)
    cert = certs.build_ca_certificate(
        key,
        common_name=common_name,
        organization=organization,
        days=days,
        path_length=path_length,
        now=now,
    )
    _make_dir(directory)
    name, data, mode = key_file
    atomic_write(directory / name, data, mode)
    atomic_write(directory / CA_CERT, certs.cert_pem(cert), 0o644)
    log.info("ca.init", dir=str(directory), key_type=key_type, in_token=bool(pkcs11_module))
    return CertificateAuthority(directory, cert, key)


def read_certificate(path: Path) -> x509.Certificate:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidInput(f"certificate {path} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read certificate {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise InvalidInput(f"{path} is not a PEM or DER X.509 certificate") from None


def load_ca(
    dir: str | os.PathLike[str],
    pin: str | None = None,
    *,
    pin_file: str | os.PathLike[str] | None = None,
) -> CertificateAuthority:
    """Load a CA directory; a token CA needs the PIN (argument, ``pin_file`` or ``$ROOMBA_PKCS11_PIN``)."""
    directory = Path(dir)
    if not directory.is_dir():
        raise CaDirMissing(
            f"CA directory {directory} does not exist (create one with `roomba-provision ca init`)"
        )
    if not (directory / CA_CERT).exists():
        raise CaDirMissing(f"{directory} has no {CA_CERT}; it is not a CA directory")
    cert = read_certificate(directory / CA_CERT)
    key: certs.PrivateKey
    if (directory / CA_KEY).exists():
        try:
            loaded = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(
                f"{directory / CA_KEY} is not an unencrypted PEM private key ({exc})"
            ) from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise InvalidInput(f"{directory / CA_KEY} holds an unsupported key type")
        key = loaded
    elif (directory / CA_PKCS11).exists():
        try:
            raw = json.loads((directory / CA_PKCS11).read_text())
            ref = hsm.TokenKeyRef(
                module=str(raw["module"]),
                token_label=str(raw["token_label"]),
                key_label=str(raw["key_label"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{directory / CA_PKCS11} is malformed ({exc!r})") from None
        key = hsm.open_key(ref, hsm.resolve_pin(pin, pin_file))
    else:
        raise CaDirMissing(f"{directory} has neither {CA_KEY} nor {CA_PKCS11}; the CA key is missing")
    if not certs.public_keys_match(key.public_key(), cert.public_key()):
        if isinstance(key, hsm.TokenEcKey):
            key.close()
        raise InvalidInput(f"the CA key in {directory} does not match {CA_CERT}")
    return CertificateAuthority(directory, cert, key)


def issue_server_cert(
    ca: CertificateAuthority,
    out_dir: str | os.PathLike[str],
    hostnames: Sequence[str],
    ips: Sequence[str],
    *,
    days: int = certs.DEFAULT_SERVER_DAYS,
    name: str = "server",
    replace: bool = False,
) -> tuple[Path, Path]:
    """A TLS server certificate and key (``<name>.crt``, ``<name>.key`` 0600) for the local broker.

    ``replace=True`` rotates an existing pair; otherwise existing files are an error.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    if not replace:
        for path in (cert_path, key_path):
            if path.exists():
                raise OutputExists(f"{path} already exists; pass replace=True to rotate it")
    key = certs.generate_key("ec")
    cert = certs.build_server_certificate(
        ca.certificate, ca.key, key.public_key(), list(hostnames), list(ips), now=utcnow(), days=days
    )
    atomic_write(key_path, certs.key_pem(key), 0o600, overwrite=replace)
    atomic_write(cert_path, certs.cert_pem(cert), 0o644, overwrite=replace)
    log.info("ca.server_cert.issued", hostnames=list(hostnames), ips=list(ips))
    return cert_path, key_path
