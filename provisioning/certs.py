"""Pure builders and checks over ``cryptography`` objects: keys, CSRs, certificates.

Nothing here touches a file, a clock or a token: the caller passes ``now`` and a signer (a file key or a
PKCS#11 key behind the same ``cryptography`` private-key interface), so the same code serves the station,
the HSM and the tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning.errors import CsrInvalid, CsrSignatureInvalid, InvalidInput, UnsupportedKey
from provisioning.names import check_thing_name

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

ALLOWED_CURVES = {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}
MIN_RSA_BITS = 2048
CLOCK_SKEW = dt.timedelta(minutes=5)
DEFAULT_CA_DAYS = 3650
DEFAULT_DEVICE_DAYS = 3650
DEFAULT_SERVER_DAYS = 825
MAX_DAYS = 36500
REGISTRATION_CODE_RE = re.compile(r"[A-Za-z0-9]{1,64}")
HOSTNAME_RE = re.compile(
    r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*"
)


def validity_end(now: dt.datetime, days: int) -> dt.datetime:
    """``now + days``, refusing lifetimes that are empty or run past what X.509 dates can hold."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidInput(f"validity must be 1..{MAX_DAYS} days, not {days!r}")
    return now + dt.timedelta(days=days)


def generate_key(key_type: str = "ec") -> PrivateKey:
    """A fresh private key: EC P-256 by default (fast, small, accepted by AWS IoT), or RSA 2048."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}; use 'ec' or 'rsa'")


def hash_for(key: PrivateKey | PublicKey) -> hashes.SHA256 | hashes.SHA384:
    """SHA-384 for P-384 and bigger, SHA-256 otherwise (what the curve's strength calls for)."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def random_serial() -> int:
    """A positive 159-bit serial (RFC 5280 allows up to 20 octets; randomness defeats collisions)."""
    return secrets.randbits(159) | (1 << 64)


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certificate_id(cert: x509.Certificate) -> str:
    """The certificate id AWS IoT shows: SHA-256 of the DER, lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint in the colon form ``openssl x509 -fingerprint -sha256`` prints."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def _ski(public_key: PublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki_from(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def _leaf_key_usage(public_key: PublicKey) -> x509.KeyUsage:
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=is_rsa,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def build_ca_certificate(
    key: PrivateKey,
    *,
    common_name: str = "Roomba Fleet Development CA",
    organization: str = "Roomba Fleet",
    days: int = DEFAULT_CA_DAYS,
    path_length: int = 0,
    now: dt.datetime,
) -> x509.Certificate:
    """A self-signed root: CA basic constraints with a path length, cert/CRL signing usage, SKI and AKI.

    ``path_length=0`` because devices are issued directly by this CA; an intermediate needs 1.
    """
    if isinstance(path_length, bool) or not isinstance(path_length, int) or path_length < 0:
        raise InvalidInput(f"CA path length must be a whole number >= 0, not {path_length!r}")
    public_key = key.public_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = _ski(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(validity_end(now, days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(key, hash_for(key))


def build_csr(key: PrivateKey, thing: str) -> x509.CertificateSigningRequest:
    """A CSR whose subject CN is the thing name (AWS IoT's JITP reads the thing name from it)."""
    check_thing_name(thing)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing)])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hash_for(key))


@dataclass(frozen=True)
class CsrInfo:
    """What a checked CSR asks for."""

    thing: str
    public_key: PublicKey
    key_description: str


def describe_key(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    return type(public_key).__name__


def check_public_key(public_key: object) -> PublicKey:
    """Accept only keys AWS IoT accepts for device certificates."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ALLOWED_CURVES:
            raise UnsupportedKey(
                f"EC curve {public_key.curve.name} is not accepted; use P-256 (secp256r1), P-384 or P-521"
            )
        return public_key
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise UnsupportedKey(
                f"RSA key is {public_key.key_size} bits; at least {MIN_RSA_BITS} are required"
            )
        return public_key
    raise UnsupportedKey(f"key type {describe_key(public_key)} is not accepted; use EC P-256 or RSA >= 2048")


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise CsrInvalid(f"not a PEM or DER certificate signing request ({exc})") from None


def check_csr(csr: x509.CertificateSigningRequest) -> CsrInfo:
    """Everything the station checks before it signs: self-signature, thing-name CN, key type and size."""
    try:
        valid = csr.is_signature_valid
    except (ValueError, TypeError, InvalidSignature):
        valid = False
    if not valid:
        raise CsrSignatureInvalid("CSR signature is invalid: the request was altered or corrupted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        subject = csr.subject
        cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise CsrInvalid(f"CSR subject must have exactly one CN (the thing name); it has {len(cns)}")
    thing = common_name(subject) or ""
    check_thing_name(thing)
    try:
        public_key = csr.public_key()
    except ValueError as exc:
        raise UnsupportedKey(f"CSR public key cannot be used ({exc})") from None
    checked = check_public_key(public_key)
    return CsrInfo(thing=thing, public_key=checked, key_description=describe_key(checked))


def build_client_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: PublicKey,
    thing: str,
    *,
    now: dt.datetime,
    days: int = DEFAULT_DEVICE_DAYS,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    """A device certificate: CN = thing, client-auth only, not a CA, SKI/AKI so chains build unambiguously."""
    check_thing_name(thing)
    start = not_before if not_before is not None else now - CLOCK_SKEW
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, thing)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(start)
        .not_valid_after(validity_end(now, days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki_from(ca_cert), critical=False)
    )
    return builder.sign(ca_key, hash_for(ca_key))


def build_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: PublicKey,
    hostnames: Sequence[str],
    ips: Sequence[str],
    *,
    now: dt.datetime,
    days: int = DEFAULT_SERVER_DAYS,
) -> x509.Certificate:
    """A TLS server certificate (server-auth) whose SANs name every host and IP clients will dial."""
    if not hostnames and not ips:
        raise ValueError("a server certificate needs at least one hostname or IP address")
    for host in hostnames:
        if len(host) > 253 or not HOSTNAME_RE.fullmatch(host):
            raise ValueError(
                f"{host!r} is not a DNS name (letters, digits, '-' and dots; '*.' prefix allowed)"
            )
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cn = hostnames[0] if hostnames else str(ips[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(validity_end(now, days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_leaf_key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki_from(ca_cert), critical=False)
    )
    return builder.sign(ca_key, hash_for(ca_key))


def build_verification_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    registration_code: str,
    *,
    now: dt.datetime,
    days: int = 30,
) -> x509.Certificate:
    """The certificate AWS IoT asks for when registering a CA: CN = registration code, signed by the CA.

    Its key pair is throwaway: AWS only checks the CA's signature over the code.
    """
    code = registration_code.strip()
    if not REGISTRATION_CODE_RE.fullmatch(code):
        raise ValueError(
            "registration code must be the 1-64 alphanumeric characters `aws iot get-registration-code` prints"
        )
    throwaway = ec.generate_private_key(ec.SECP256R1())
    public_key = throwaway.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(validity_end(now, days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_ski(public_key), critical=False)
        .add_extension(_aki_from(ca_cert), critical=False)
    )
    return builder.sign(ca_key, hash_for(ca_key))


def public_keys_match(a: object, b: object) -> bool:
    """Whether two public keys are the same key (compared by their SubjectPublicKeyInfo)."""
    try:
        fmt = serialization.PublicFormat.SubjectPublicKeyInfo
        return bool(
            a.public_bytes(serialization.Encoding.DER, fmt)  # type: ignore[attr-defined]
            == b.public_bytes(serialization.Encoding.DER, fmt)  # type: ignore[attr-defined]
        )
    except (AttributeError, ValueError, TypeError):
        return False
