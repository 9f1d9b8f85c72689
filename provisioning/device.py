"""Device identities: the robot's key pair, its CSR and its certificate, laid out as CONTRACTS.md says.

``keygen`` runs on the robot (the private key never leaves it); ``create_identity`` does keygen and signing
in one step for simulation, development and factory batches. Both write an identity directory atomically
and never replace an existing key.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from base.logs import get_logger
from provisioning import certs, hsm
from provisioning.ca import CertificateAuthority, read_certificate
from provisioning.errors import InvalidInput, KeyExists, OutputExists
from provisioning.fsio import atomic_write, write_directory
from provisioning.names import check_thing_name

DEVICE_KEY = "device.key"
DEVICE_CSR = "device.csr"
DEVICE_CERT = "device.crt"
ROOT_CA = "root-ca.crt"
DEVICE_PKCS11 = "device-pkcs11.json"

log = get_logger("provisioning.device")


@dataclass(frozen=True)
class Identity:
    """One provisioned identity on disk (``key_path`` is None when the key lives in a token)."""

    thing: str
    dir: Path
    cert_path: Path
    key_path: Path | None
    ca_path: Path
    csr_path: Path
    certificate_id: str
    fingerprint: str
    serial_number: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_certificate(cls, directory: Path, cert: x509.Certificate, thing: str) -> Identity:
        key_path = directory / DEVICE_KEY
        return cls(
            thing=thing,
            dir=directory,
            cert_path=directory / DEVICE_CERT,
            key_path=key_path if key_path.exists() else None,
            ca_path=directory / ROOT_CA,
            csr_path=directory / DEVICE_CSR,
            certificate_id=certs.certificate_id(cert),
            fingerprint=certs.fingerprint(cert),
            serial_number=f"{cert.serial_number:x}",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )


@dataclass(frozen=True)
class KeygenResult:
    """What ``keygen`` left on the robot: the CSR to carry to the station, and where the key is."""

    thing: str
    dir: Path
    csr_path: Path
    key_path: Path | None
    token_key: hsm.TokenKeyRef | None


def _root_ca_pem(ca: CertificateAuthority, root_ca: str | os.PathLike[str] | bytes | None) -> bytes:
    if root_ca is None:
        return ca.certificate_pem
    if isinstance(root_ca, bytes):
        return root_ca
    return certs.cert_pem(read_certificate(Path(root_ca)))


def create_identity(
    ca: CertificateAuthority,
    thing: str,
    out_dir: str | os.PathLike[str],
    days: int = certs.DEFAULT_DEVICE_DAYS,
    *,
    root_ca: str | os.PathLike[str] | bytes | None = None,
    chain: bool = False,
    now: dt.datetime | None = None,
    not_before: dt.datetime | None = None,
) -> Identity:
    """Make a device key (EC P-256), its CSR and certificate in ``out_dir`` (0700, appears all at once).

    ``root-ca.crt`` is the CA certificate unless ``root_ca`` (a path or PEM bytes, e.g. Amazon Root CA 1 for
    real AWS) says otherwise. ``chain=True`` writes ``device.crt`` as certificate + CA certificate, which
    AWS IoT just-in-time provisioning wants on the first connection. Raises ``KeyExists`` if ``out_dir``
    already holds an identity.
    """
    check_thing_name(thing)
    directory = Path(out_dir)
    if (directory / DEVICE_KEY).exists():
        raise KeyExists(f"{directory / DEVICE_KEY} already exists; refusing to overwrite a device key")
    key = certs.generate_key("ec")
    csr = certs.build_csr(key, thing)
    cert = ca.sign_csr(csr, days=days, now=now, not_before=not_before)
    cert_bytes = certs.cert_pem(cert) + (ca.certificate_pem if chain else b"")
    write_directory(
        directory,
        {
            DEVICE_CSR: (csr.public_bytes(serialization.Encoding.PEM), 0o644),
            DEVICE_CERT: (cert_bytes, 0o644),
            ROOT_CA: (_root_ca_pem(ca, root_ca), 0o644),
            DEVICE_KEY: (certs.key_pem(key), 0o600),
        },
    )
    return Identity.from_certificate(directory, cert, thing)


def keygen(
    thing: str,
    out_dir: str | os.PathLike[str],
    *,
    key_type: str = "ec",
    pkcs11_module: str | None = None,
    token_label: str | None = None,
    key_label: str | None = None,
    pin: str | None = None,
    pin_file: str | os.PathLike[str] | None = None,
) -> KeygenResult:
    """On the robot: make the device key (a 0600 file, or non-extractable in a token) and its CSR.

    With a token, ``device-pkcs11.json`` (module, token label, key label; no PIN) replaces ``device.key``.
    """
    check_thing_name(thing)
    directory = Path(out_dir)
    if pkcs11_module or token_label:
        if not (pkcs11_module and token_label):
            raise InvalidInput("a token device key needs both --pkcs11-module and --token")
        ref = hsm.TokenKeyRef(pkcs11_module, token_label, key_label or thing)
        resolved = hsm.resolve_pin(pin, pin_file)
        if (directory / DEVICE_PKCS11).exists() or (directory / DEVICE_KEY).exists():
            raise KeyExists(f"{directory} already holds a device key; refusing to overwrite it")
        with hsm.session(ref.module, ref.token_label, resolved, rw=True) as sess:
            hsm.generate_ec_key(sess, ref.key_label)
        token_key = hsm.open_key(ref, resolved)
        try:
            csr = certs.build_csr(token_key, thing)
        finally:
            token_key.close()
        write_directory(
            directory,
            {
                DEVICE_CSR: (csr.public_bytes(serialization.Encoding.PEM), 0o644),
                DEVICE_PKCS11: ((json.dumps(ref.to_json(), indent=2) + "\n").encode(), 0o644),
            },
            guard=DEVICE_PKCS11,
        )
        log.info("device.keygen", thing=thing, in_token=True)
        return KeygenResult(thing, directory, directory / DEVICE_CSR, None, ref)
    key = certs.generate_key(key_type)
    csr = certs.build_csr(key, thing)
    write_directory(
        directory,
        {
            DEVICE_CSR: (csr.public_bytes(serialization.Encoding.PEM), 0o644),
            DEVICE_KEY: (certs.key_pem(key), 0o600),
        },
    )
    log.info("device.keygen", thing=thing, in_token=False)
    return KeygenResult(thing, directory, directory / DEVICE_CSR, directory / DEVICE_KEY, None)


def install_certificate(
    out_dir: str | os.PathLike[str],
    cert_pem: bytes,
    *,
    root_ca: str | os.PathLike[str] | bytes | None = None,
    force: bool = False,
) -> Identity:
    """On the robot: install the certificate the station issued for this robot's CSR.

    Refuses a certificate whose public key or CN differs from ``device.csr`` (someone else's certificate,
    or one for a key that was since regenerated), so a robot never ends up with a key/cert mismatch.
    """
    directory = Path(out_dir)
    if not (directory / DEVICE_KEY).exists() and not (directory / DEVICE_PKCS11).exists():
        raise InvalidInput(f"{directory} holds no device key; run `roomba-provision device keygen` first")
    try:
        csr = certs.load_csr((directory / DEVICE_CSR).read_bytes())
    except FileNotFoundError:
        raise InvalidInput(
            f"{directory / DEVICE_CSR} is missing; cannot match the certificate to this robot"
        ) from None
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise InvalidInput("the certificate to install is not a PEM certificate") from None
    if not certs.public_keys_match(cert.public_key(), csr.public_key()):
        raise InvalidInput("certificate is not for this robot's key (public key differs from device.csr)")
    thing = certs.common_name(cert.subject) or ""
    if thing != certs.common_name(csr.subject):
        raise InvalidInput(
            f"certificate CN {thing!r} differs from the CSR's {certs.common_name(csr.subject)!r}"
        )
    if (directory / DEVICE_CERT).exists() and not force:
        raise OutputExists(f"{directory / DEVICE_CERT} already exists; pass --force to replace it")
    if root_ca is None and not (directory / ROOT_CA).exists():
        raise InvalidInput(f"{directory} has no {ROOT_CA}; pass the server root CA (e.g. AmazonRootCA1.pem)")
    if root_ca is not None:
        root_pem = root_ca if isinstance(root_ca, bytes) else certs.cert_pem(read_certificate(Path(root_ca)))
        atomic_write(directory / ROOT_CA, root_pem, 0o644, overwrite=True)
    atomic_write(directory / DEVICE_CERT, cert_pem, 0o644, overwrite=force)
    log.info("device.cert.installed", thing=thing, certificate_id=certs.certificate_id(cert))
    return Identity.from_certificate(directory, cert, thing)
