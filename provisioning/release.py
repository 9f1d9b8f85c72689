"""Release signing and release bundles: what a robot checks before it installs a new agent.

A bundle (``roomba-agent-<version>.bundle``) is an uncompressed POSIX tar whose members are, in order,
``manifest.json``, ``manifest.sig`` and ``wheels/<name>.whl`` (regular files only). ``manifest.sig`` is a DER
ECDSA P-256 / SHA-256 signature over the exact bytes of ``manifest.json``, which names every wheel with its
size and SHA-256. The release-signing key is separate from the device CA: a key file (``release-signing.key``,
0600) or a key that never leaves a PKCS#11 token; robots trust its certificate through a PEM file (one or more
certificates: two while a key is rotated).

The reader never hands a tar to :mod:`tarfile`'s extraction: it parses the headers itself, refuses anything
but regular files with the expected names, verifies the signature before it trusts the manifest, then every
member's size and hash, and only then extracts (hashing again while it writes, from the same open file).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import secrets
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from packaging.version import InvalidVersion, Version

from base.logs import get_logger
from provisioning import certs, hsm
from provisioning.errors import InvalidInput, KeyExists
from provisioning.fsio import atomic_write, fsync_dir

# sha256_file is part of this module's API too (bundles, the CLIs and tests use it)
from provisioning.fsio import sha256_file as sha256_file

FORMAT = 1
NAME = "roomba-agent"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
SIGNING_CERT = "release-signing.pem"
SIGNING_KEY = "release-signing.key"
SIGNING_PKCS11 = "release-signing-pkcs11.json"
DEFAULT_SIGNER_NAME = "roomba release signing"
DEFAULT_KEY_LABEL = "roomba-release"
DEFAULT_DAYS = 3650
DEFAULT_TRUST = "/etc/roomba-agent/release-trust.pem"
INSTALL_FACTOR = 3  # install_bytes: the venv is about three times the wheels
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 512
MAX_MEMBERS = 2000
BLOCK = 512
CHUNK = 1 << 20

Kind = Literal["signature", "hash", "format", "compat", "io"]
KINDS: frozenset[str] = frozenset({"signature", "hash", "format", "compat", "io"})

_HEX64 = re.compile(r"[0-9a-f]{64}")
_WHEEL_MEMBER = re.compile(r"wheels/[A-Za-z0-9][A-Za-z0-9._+-]*\.whl")
_AGENT_WHEEL = re.compile(r"wheels/roomba_agent-(?P<version>[^-]+)-[^/]+\.whl")
_ABI = re.compile(r"cp[0-9]{2,4}")
_PLATFORM = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_CREATED_AT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MANIFEST_KEYS = frozenset(
    {
        "format",
        "name",
        "version",
        "min_previous",
        "python_abi",
        "requires",
        "created_at",
        "signer",
        "install_bytes",
        "files",
    }
)
_OPTIONAL_KEYS = frozenset({"platform"})  # absent in the first format-1 bundles: any platform

log = get_logger("provisioning.release")


class ReleaseError(ValueError):
    """A bundle, signature or trust file we refuse; ``kind`` says which check failed, the message what."""

    def __init__(self, kind: Kind, message: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown ReleaseError kind {kind!r}")
        super().__init__(message)
        self.kind: Kind = kind

    def __str__(self) -> str:
        return str(self.args[0])


def current_platform() -> str:
    """The platform a bundle built here is for, as in wheel tags (``linux_x86_64``, ``linux_aarch64``)."""
    return sysconfig.get_platform().replace("-", "_").replace(".", "_").lower()


def current_abi() -> str:
    """The Python ABI a bundle built here is for (``cp311``); the robot's Python must be the same."""
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _version(text: object, what: str) -> Version:
    if not isinstance(text, str):
        raise ReleaseError("format", f"manifest {what} must be a string, not {type(text).__name__}")
    try:
        return Version(text)
    except InvalidVersion:
        raise ReleaseError("format", f"manifest {what} {text!r} is not a PEP 440 version") from None


# --- the manifest ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What the signature covers: the release's version, what it needs, and every wheel's size and hash."""

    version: str
    min_previous: str
    python_abi: str
    requires: str
    created_at: str
    signer: str
    install_bytes: int
    files: Mapping[str, FileEntry] = field(default_factory=dict)
    name: str = NAME
    format: int = FORMAT
    platform: str | None = None  # None: not said (bundles built before it was written): any platform

    def to_json(self) -> dict[str, Any]:
        platform = {} if self.platform is None else {"platform": self.platform}
        return {
            **platform,
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "min_previous": self.min_previous,
            "python_abi": self.python_abi,
            "requires": self.requires,
            "created_at": self.created_at,
            "signer": self.signer,
            "install_bytes": self.install_bytes,
            "files": {k: {"sha256": v.sha256, "size": v.size} for k, v in sorted(self.files.items())},
        }

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, compact): the exact bytes ``manifest.sig`` signs."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def wheels_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    @property
    def agent_wheel(self) -> str:
        """The member name of the agent's own wheel (``wheels/roomba_agent-V-...whl``)."""
        for name in sorted(self.files):
            if _AGENT_WHEEL.fullmatch(name):
                return name
        raise ReleaseError("format", "the manifest names no roomba_agent wheel")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ReleaseError("format", f"manifest.json has the key {key!r} twice")
        out[key] = value
    return out


def _int_field(doc: Mapping[str, Any], key: str, where: str) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReleaseError("format", f"{where} {key} must be a whole number >= 0, not {value!r}")
    return value


def parse_manifest(data: bytes) -> Manifest:
    """The manifest in ``data``, checked strictly (exact keys, types, names, versions); ReleaseError "format"."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ReleaseError("format", f"manifest.json is {len(data)} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError:
        raise ReleaseError("format", "manifest.json is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ReleaseError("format", f"manifest.json is not JSON: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(doc, dict):
        raise ReleaseError("format", "manifest.json must be a JSON object")
    missing, unknown = _MANIFEST_KEYS - doc.keys(), doc.keys() - _MANIFEST_KEYS - _OPTIONAL_KEYS
    if missing:
        raise ReleaseError("format", f"manifest.json lacks {', '.join(sorted(missing))}")
    if unknown:
        raise ReleaseError("format", f"manifest.json has unknown keys {', '.join(sorted(unknown))}")
    if doc["format"] != FORMAT or isinstance(doc["format"], bool):
        raise ReleaseError("format", f"manifest format {doc['format']!r} is not {FORMAT} (a newer bundle?)")
    if doc["name"] != NAME:
        raise ReleaseError("format", f"manifest name {doc['name']!r} is not {NAME!r}")
    version = _version(doc["version"], "version")
    _version(doc["min_previous"], "min_previous")
    if not isinstance(doc["python_abi"], str) or not _ABI.fullmatch(doc["python_abi"]):
        raise ReleaseError("format", f"manifest python_abi {doc['python_abi']!r} is not like 'cp311'")
    platform = doc.get("platform")
    if platform is not None and (not isinstance(platform, str) or not _PLATFORM.fullmatch(platform)):
        raise ReleaseError("format", f"manifest platform {platform!r} is not like 'linux_x86_64'")
    if not isinstance(doc["requires"], str) or not doc["requires"]:
        raise ReleaseError("format", "manifest requires must be a non-empty string")
    if not isinstance(doc["created_at"], str) or not _CREATED_AT.fullmatch(doc["created_at"]):
        raise ReleaseError("format", f"manifest created_at {doc['created_at']!r} is not YYYY-MM-DDTHH:MM:SSZ")
    if not isinstance(doc["signer"], str) or not _HEX64.fullmatch(doc["signer"]):
        raise ReleaseError("format", "manifest signer must be the 64 lowercase hex SHA-256 of a certificate")
    install_bytes = _int_field(doc, "install_bytes", "manifest")
    files = doc["files"]
    if not isinstance(files, dict) or not files:
        raise ReleaseError("format", "manifest files must be a non-empty object")
    if len(files) > MAX_MEMBERS:
        raise ReleaseError("format", f"manifest names {len(files)} files; at most {MAX_MEMBERS}")
    entries: dict[str, FileEntry] = {}
    for name, entry in files.items():
        if not _WHEEL_MEMBER.fullmatch(name):
            raise ReleaseError("format", f"manifest file {name!r} is not wheels/<name>.whl")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "size"}:
            raise ReleaseError("format", f"manifest entry for {name} must be exactly {{sha256, size}}")
        if not isinstance(entry["sha256"], str) or not _HEX64.fullmatch(entry["sha256"]):
            raise ReleaseError("format", f"manifest sha256 of {name} is not 64 lowercase hex digits")
        entries[name] = FileEntry(entry["sha256"], _int_field(entry, "size", f"manifest entry {name}"))
    agents = [m for n in entries if (m := _AGENT_WHEEL.fullmatch(n))]
    if len(agents) != 1:
        raise ReleaseError(
            "format", f"the manifest must name exactly one roomba_agent wheel, not {len(agents)}"
        )
    try:
        wheel_version = Version(agents[0].group("version"))
    except InvalidVersion:
        wheel_version = None
    if wheel_version != version:
        raise ReleaseError(
            "format", f"the agent wheel {agents[0].group(0)} is not version {doc['version']} of the manifest"
        )
    return Manifest(
        version=doc["version"],
        min_previous=doc["min_previous"],
        python_abi=doc["python_abi"],
        requires=doc["requires"],
        created_at=doc["created_at"],
        signer=doc["signer"],
        install_bytes=install_bytes,
        files=entries,
        platform=platform,
    )


def check_compatible(
    manifest: Manifest,
    *,
    running: str,
    python_abi: str | None = None,
    allow_downgrade: bool = False,
    platform: str | None = None,
) -> None:
    """Refuse (ReleaseError "compat") a verified release this robot must not install."""
    abi = python_abi or current_abi()
    if manifest.python_abi != abi:
        raise ReleaseError(
            "compat", f"release {manifest.version} is built for {manifest.python_abi}; this Python is {abi}"
        )
    here = platform or current_platform()
    if manifest.platform is not None and manifest.platform != here:
        raise ReleaseError(
            "compat", f"release {manifest.version} is built for {manifest.platform}; this machine is {here}"
        )
    current, target = Version(running), Version(manifest.version)
    if current < Version(manifest.min_previous):
        raise ReleaseError(
            "compat",
            f"release {manifest.version} updates only from {manifest.min_previous} or later; "
            f"this robot runs {running}",
        )
    if target <= current and not allow_downgrade:
        raise ReleaseError(
            "compat",
            f"release {manifest.version} is not newer than the running {running} "
            "(a downgrade needs allow_downgrade)",
        )


# --- signing identities ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSpec:
    """Keep the release key in a PKCS#11 token (the PIN from ``pin``, ``pin_file`` or $ROOMBA_PKCS11_PIN)."""

    module: str
    token_label: str
    key_label: str = DEFAULT_KEY_LABEL
    pin: str | None = field(default=None, repr=False)
    pin_file: str | None = None


@dataclass(frozen=True)
class SigningIdentity:
    """What ``keygen`` made: the certificate, and the key file or where the key lives in a token."""

    dir: Path
    cert_path: Path
    certificate: x509.Certificate
    key_path: Path | None
    token: hsm.TokenKeyRef | None

    @property
    def signer_id(self) -> str:
        return certs.certificate_id(self.certificate)


class Signer:
    """A release-signing key (file or token) and its certificate; close it (or ``with``) to end a session."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self._key = key

    @property
    def signer_id(self) -> str:
        """SHA-256 of the certificate's DER: the manifest's ``signer``."""
        return certs.certificate_id(self.certificate)

    @property
    def in_token(self) -> bool:
        return isinstance(self._key, hsm.TokenEcKey)

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA P-256 / SHA-256 signature over ``data``."""
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))

    def sign_file(self, path: str | os.PathLike[str]) -> bytes:
        """The same signature as ``sign(path.read_bytes())``, hashing the file as a stream."""
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return self._key.sign(digest.digest(), ec.ECDSA(Prehashed(hashes.SHA256())))

    def close(self) -> None:
        if isinstance(self._key, hsm.TokenEcKey):
            self._key.close()

    def __enter__(self) -> Signer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def build_signing_certificate(
    key: ec.EllipticCurvePrivateKey, *, name: str, days: int, now: dt.datetime
) -> x509.Certificate:
    """Self-signed code-signing certificate: digitalSignature, EKU codeSigning, CA:false."""
    public_key = key.public_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Roomba Fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(certs.random_serial())
        .not_valid_before(now - certs.CLOCK_SKEW)
        .not_valid_after(certs.validity_end(now, days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def keygen(
    out_dir: str | os.PathLike[str],
    *,
    name: str = DEFAULT_SIGNER_NAME,
    days: int = DEFAULT_DAYS,
    token: TokenSpec | None = None,
    now: dt.datetime | None = None,
) -> SigningIdentity:
    """A release-signing key (EC P-256, a 0600 file or inside a token) and its self-signed certificate.

    Refuses to replace an existing key or certificate in ``out_dir`` (made 0700 if new).
    """
    directory = Path(out_dir)
    now = now or _utcnow()
    certs.validity_end(now, days)
    if not name.strip():
        raise InvalidInput("the signing certificate needs a non-empty name")
    for existing in (SIGNING_CERT, SIGNING_KEY, SIGNING_PKCS11):
        if (directory / existing).exists():
            raise KeyExists(f"{directory / existing} already exists; refusing to replace a release key")
    key: ec.EllipticCurvePrivateKey
    ref: hsm.TokenKeyRef | None = None
    if token is not None:
        pin = hsm.resolve_pin(token.pin, token.pin_file)
        ref = hsm.TokenKeyRef(module=token.module, token_label=token.token_label, key_label=token.key_label)
        with hsm.session(token.module, token.token_label, pin, rw=True) as sess:
            hsm.generate_ec_key(sess, token.key_label)
        key = hsm.open_key(ref, pin)
        key_file = (SIGNING_PKCS11, (json.dumps(ref.to_json(), indent=2) + "\n").encode(), 0o644)
    else:
        generated = certs.generate_key("ec")
        assert isinstance(generated, ec.EllipticCurvePrivateKey)
        key = generated
        key_file = (SIGNING_KEY, certs.key_pem(generated), 0o600)
    try:
        cert = build_signing_certificate(key, name=name, days=days, now=now)
    finally:
        if isinstance(key, hsm.TokenEcKey):
            key.close()
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)
    file_name, data, mode = key_file
    atomic_write(directory / file_name, data, mode)
    atomic_write(directory / SIGNING_CERT, certs.cert_pem(cert), 0o644)
    log.info("release.keygen", dir=str(directory), in_token=token is not None)
    return SigningIdentity(
        dir=directory,
        cert_path=directory / SIGNING_CERT,
        certificate=cert,
        key_path=None if token else directory / SIGNING_KEY,
        token=ref,
    )


def load_signer(
    dir: str | os.PathLike[str],
    *,
    pin: str | None = None,
    pin_file: str | os.PathLike[str] | None = None,
) -> Signer:
    """The signer in ``dir`` (from keygen); a token key needs the PIN (argument, file or environment)."""
    directory = Path(dir)
    cert_path = directory / SIGNING_CERT
    if not cert_path.is_file():
        raise InvalidInput(
            f"{cert_path} does not exist: {directory} is not a release-signing directory "
            "(make one with `roomba-provision release keygen --out DIR`)"
        )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        raise InvalidInput(f"{cert_path} is not a PEM certificate") from None
    key: ec.EllipticCurvePrivateKey
    if (directory / SIGNING_KEY).exists():
        try:
            loaded = serialization.load_pem_private_key((directory / SIGNING_KEY).read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"{directory / SIGNING_KEY} is not an unencrypted PEM key ({exc})") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise InvalidInput(f"{directory / SIGNING_KEY} is not an EC key")
        key = loaded
    elif (directory / SIGNING_PKCS11).exists():
        try:
            raw = json.loads((directory / SIGNING_PKCS11).read_text())
            ref = hsm.TokenKeyRef(str(raw["module"]), str(raw["token_label"]), str(raw["key_label"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidInput(f"{directory / SIGNING_PKCS11} is malformed ({exc!r})") from None
        key = hsm.open_key(ref, hsm.resolve_pin(pin, pin_file))
    else:
        raise InvalidInput(f"{directory} has neither {SIGNING_KEY} nor {SIGNING_PKCS11}: the key is missing")
    if not certs.public_keys_match(key.public_key(), cert.public_key()):
        if isinstance(key, hsm.TokenEcKey):
            key.close()
        raise InvalidInput(f"the release key in {directory} does not match {SIGNING_CERT}")
    return Signer(cert, key)


def load_trust(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """The trusted release-signing certificates in a PEM file (one, or two while a key is rotated)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReleaseError("io", f"release trust file {path} does not exist") from None
    except OSError as exc:
        raise ReleaseError("io", f"cannot read release trust file {path}: {exc.strerror}") from None
    try:
        found = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ReleaseError("format", f"release trust file {path} holds no PEM certificate") from None
    for cert in found:
        if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey):
            raise ReleaseError(
                "format",
                f"release trust file {path}: certificate {certs.certificate_id(cert)[:16]} is not EC",
            )
    return found


def verify_signature(data: bytes, signature: bytes, trust: Sequence[x509.Certificate]) -> x509.Certificate:
    """The trusted certificate whose key made ``signature`` over ``data``; ReleaseError "signature" if none."""
    if not trust:
        raise ReleaseError("signature", "no trusted release certificate to verify the signature with")
    for cert in trust:
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            continue
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            continue
        return cert
    ids = ", ".join(certs.certificate_id(c)[:16] for c in trust)
    raise ReleaseError(
        "signature",
        f"the signature does not verify against any trusted release certificate ({ids}): "
        "the manifest was changed or signed by another key",
    )


def _trust_list(trust: Sequence[x509.Certificate] | str | os.PathLike[str]) -> list[x509.Certificate]:
    if isinstance(trust, str | os.PathLike):
        return load_trust(trust)
    return list(trust)


# --- the tar container -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # of its data
    size: int


def _octal(field_bytes: bytes, what: str, where: str) -> int:
    text = field_bytes.replace(b"\0", b" ").strip()
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise ReleaseError("format", f"{where}: the tar header's {what} field is not octal")
    return int(text, 8)


_TYPE_NAMES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"x": "a pax extended header",
    b"g": "a pax global header",
    b"L": "a GNU long name",
    b"K": "a GNU long link",
}


def _check_member_name(name: str) -> None:
    if name.startswith("/"):
        raise ReleaseError("format", f"bundle member {name!r} is an absolute path")
    if ".." in name.split("/") or "\\" in name:
        raise ReleaseError("format", f"bundle member {name!r} would escape the bundle ('..' in its path)")
    if name not in (MANIFEST, SIGNATURE) and not _WHEEL_MEMBER.fullmatch(name):
        raise ReleaseError(
            "format", f"bundle member {name!r} is not manifest.json, manifest.sig or wheels/<name>.whl"
        )


MAX_PAX_BYTES = 1 << 16
_PAX_KEYS_IGNORED = frozenset({"mtime", "atime", "ctime"})


@dataclass(frozen=True)
class _Header:
    name: str
    typeflag: bytes
    size: int
    data_offset: int

    @property
    def next_offset(self) -> int:
        return self.data_offset + -(-self.size // BLOCK) * BLOCK


def _read_header(f: BinaryIO, offset: int, size: int) -> _Header | None:
    """The ustar header at ``offset`` (None: the end-of-archive marker), its data known to be in the file."""
    f.seek(offset)
    header = f.read(BLOCK)
    if len(header) < BLOCK:
        raise ReleaseError(
            "format", f"the bundle is truncated: it ends at byte {size} inside a tar header (no end marker)"
        )
    if header == bytes(BLOCK):
        return None
    where = f"tar header at byte {offset}"
    stored_text = header[148:156].replace(b"\0", b" ").strip()
    computed = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if not re.fullmatch(rb"[0-7]+", stored_text) or int(stored_text, 8) != computed:
        raise ReleaseError("format", f"{where}: bad checksum (corrupted, or not an uncompressed POSIX tar)")
    if header[257:263] != b"ustar\0" or header[263:265] != b"00":
        raise ReleaseError("format", f"{where}: not a POSIX ustar header")
    try:
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8")
        prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ReleaseError("format", f"{where}: the member name is not UTF-8") from None
    result = _Header(
        f"{prefix}/{name}" if prefix else name,
        header[156:157],
        _octal(header[124:136], "size", where),
        offset + BLOCK,
    )
    if result.next_offset > size:
        raise ReleaseError(
            "format",
            f"the bundle is truncated: member {result.name!r} needs {result.size} bytes from byte "
            f"{result.data_offset}, the file ends at byte {size}",
        )
    return result


def _pax_path(f: BinaryIO, header: _Header) -> str:
    """The ``path`` record of a pax extended header (how ustar stores a name longer than 100 bytes)."""
    if header.size > MAX_PAX_BYTES:
        raise ReleaseError("format", f"a pax header of {header.size} bytes is too large for a bundle")
    f.seek(header.data_offset)
    data = f.read(header.size)
    path: str | None = None
    pos = 0
    while pos < len(data):
        length_text, sep, _ = data[pos : pos + 20].partition(b" ")
        if not sep or not length_text.isdigit() or int(length_text) <= len(length_text) + 1:
            raise ReleaseError("format", f"malformed pax header at byte {header.data_offset}")
        record = data[pos : pos + int(length_text)]
        pos += int(length_text)
        if not record.endswith(b"\n"):
            raise ReleaseError("format", f"malformed pax header at byte {header.data_offset}")
        key, eq, value = record[len(length_text) + 1 : -1].partition(b"=")
        if not eq:
            raise ReleaseError("format", f"malformed pax header at byte {header.data_offset}")
        try:
            key_text, value_text = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            raise ReleaseError("format", "a pax header record is not UTF-8") from None
        if key_text == "path":
            path = value_text
        elif key_text not in _PAX_KEYS_IGNORED:
            raise ReleaseError("format", f"a pax header sets {key_text!r}; a bundle's may set only the path")
    if path is None:
        raise ReleaseError("format", f"the pax header at byte {header.data_offset} names no path")
    return path


def read_index(f: BinaryIO, size: int) -> list[Member]:
    """The members of a bundle tar, checked: POSIX ustar regular files (a pax header may carry a long name)
    with allowed names, no duplicates, manifest.json then manifest.sig first, not truncated, nothing but
    zeros after the end-of-archive marker."""
    members: list[Member] = []
    seen: set[str] = set()
    offset = 0
    while (header := _read_header(f, offset, size)) is not None:
        name = header.name
        if header.typeflag == b"x":
            name = _pax_path(f, header)
            offset = header.next_offset
            header = _read_header(f, offset, size)
            if header is None:
                raise ReleaseError("format", "the bundle ends after a pax header, without its member")
        if header.typeflag not in (b"0", b"\0"):
            what = _TYPE_NAMES.get(header.typeflag, f"of tar type {header.typeflag!r}")
            raise ReleaseError("format", f"bundle member {name!r} is {what}; only regular files are allowed")
        _check_member_name(name)
        if name in seen:
            raise ReleaseError("format", f"bundle member {name!r} appears twice")
        seen.add(name)
        members.append(Member(name, header.data_offset, header.size))
        if len(members) > MAX_MEMBERS + 2:
            raise ReleaseError("format", f"the bundle has more than {MAX_MEMBERS + 2} members")
        offset = header.next_offset
    end = offset
    f.seek(end)
    rest = 0
    while chunk := f.read(CHUNK):
        if chunk.count(0) != len(chunk):
            raise ReleaseError("format", f"the bundle has data after its end-of-archive marker (byte {end})")
        rest += len(chunk)
    if rest < 2 * BLOCK or rest % BLOCK:
        raise ReleaseError("format", "the bundle is truncated: its end-of-archive marker is incomplete")
    names = [m.name for m in members]
    if names[:2] != [MANIFEST, SIGNATURE]:
        raise ReleaseError(
            "format",
            f"a bundle starts with manifest.json then manifest.sig, not {', '.join(names[:2]) or 'nothing'}",
        )
    if members[0].size > MAX_MANIFEST_BYTES:
        raise ReleaseError(
            "format", f"manifest.json is {members[0].size} bytes; at most {MAX_MANIFEST_BYTES}"
        )
    if not 0 < members[1].size <= MAX_SIGNATURE_BYTES:
        raise ReleaseError("format", f"manifest.sig is {members[1].size} bytes: not an ECDSA signature")
    return members


def _stream(f: BinaryIO, member: Member) -> Iterator[bytes]:
    f.seek(member.offset)
    left = member.size
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise ReleaseError("format", f"the bundle is truncated inside member {member.name!r}")
        left -= len(chunk)
        yield chunk


class BundleReader:
    """A bundle opened for checking: the index is parsed (and refused if malformed) on open; nothing is
    extracted before :meth:`verify` succeeded. Use as a context manager (it holds the file open, so verify and
    extract read the same file even if the path is replaced meanwhile)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        except FileNotFoundError:
            raise ReleaseError("io", f"bundle {self.path} does not exist") from None
        except OSError as exc:
            raise ReleaseError("io", f"cannot read bundle {self.path}: {exc.strerror}") from None
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.members = read_index(self._file, size)
            self.manifest_bytes = b"".join(_stream(self._file, self.members[0]))
            self.signature = b"".join(_stream(self._file, self.members[1]))
        except BaseException:
            self._file.close()
            raise
        self.size = size
        self._verified: Manifest | None = None

    @property
    def wheel_members(self) -> list[Member]:
        return self.members[2:]

    def verify(self, trust: Sequence[x509.Certificate] | str | os.PathLike[str]) -> Manifest:
        """Signature first, then the manifest, the member set, and each member's size and SHA-256."""
        cert = verify_signature(self.manifest_bytes, self.signature, _trust_list(trust))
        manifest = parse_manifest(self.manifest_bytes)
        signer_id = certs.certificate_id(cert)
        if manifest.signer != signer_id:
            raise ReleaseError(
                "signature",
                f"the manifest names signer {manifest.signer[:16]} but was signed by {signer_id[:16]}",
            )
        present = {m.name: m for m in self.wheel_members}
        extra = sorted(present.keys() - manifest.files.keys())
        if extra:
            raise ReleaseError(
                "format", f"bundle member {extra[0]!r} is not in the manifest (an extra member)"
            )
        missing = sorted(manifest.files.keys() - present.keys())
        if missing:
            raise ReleaseError("format", f"bundle member {missing[0]!r} is in the manifest but missing")
        for name, entry in sorted(manifest.files.items()):
            member = present[name]
            if member.size != entry.size:
                raise ReleaseError(
                    "hash", f"{name} is {member.size} bytes; the signed manifest says {entry.size}"
                )
            digest = hashlib.sha256()
            for chunk in _stream(self._file, member):
                digest.update(chunk)
            if digest.hexdigest() != entry.sha256:
                raise ReleaseError(
                    "hash",
                    f"{name} has SHA-256 {digest.hexdigest()[:16]}…; the signed manifest says "
                    f"{entry.sha256[:16]}…",
                )
        self._verified = manifest
        log.debug("release.verified", bundle=str(self.path), version=manifest.version, signer=signer_id[:16])
        return manifest

    def extract(self, dest_dir: str | os.PathLike[str]) -> Path:
        """Write manifest.json, manifest.sig and wheels/*.whl into ``dest_dir`` (new files only), re-hashing
        each wheel as it is written and fsyncing everything; only after :meth:`verify`."""
        manifest = self._verified
        if manifest is None:
            raise RuntimeError("BundleReader.extract() before verify(): nothing is extracted unverified")
        dest = Path(dest_dir)
        (dest / "wheels").mkdir(parents=True, exist_ok=True)
        for member in self.members:
            target = dest / member.name
            expected = manifest.files.get(member.name)
            digest = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in _stream(self._file, member):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if expected is not None and digest.hexdigest() != expected.sha256:
                    raise ReleaseError("hash", f"{member.name} changed while it was extracted")
            except BaseException:
                target.unlink(missing_ok=True)
                raise
        fsync_dir(dest / "wheels")
        fsync_dir(dest)
        return dest

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def verify_bundle(
    path: str | os.PathLike[str], trust: Sequence[x509.Certificate] | str | os.PathLike[str]
) -> Manifest:
    """The verified manifest of the bundle at ``path`` (ReleaseError with the reason otherwise)."""
    with BundleReader(path) as reader:
        return reader.verify(trust)


def read_manifest_unverified(path: str | os.PathLike[str]) -> Manifest:
    """The manifest of a structurally valid bundle, WITHOUT checking its signature (for listing/publishing
    tools on the build side; a robot always uses :func:`verify_bundle`)."""
    with BundleReader(path) as reader:
        return parse_manifest(reader.manifest_bytes)


# --- building --------------------------------------------------------------------------------------------


def bundle_name(version: str) -> str:
    return f"{NAME}-{version}.bundle"


def _tar_member(tar: tarfile.TarFile, name: str, data: BinaryIO, size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.type = size, 0o644, mtime, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    try:
        tar.addfile(info, data)
    except ValueError as exc:
        raise ReleaseError("format", f"cannot store {name} in a bundle: {exc}") from None


def build_bundle(
    out_path: str | os.PathLike[str],
    wheels: Iterable[str | os.PathLike[str]],
    *,
    version: str,
    min_previous: str,
    signer: Signer,
    python_abi: str | None = None,
    platform: str | None = None,
    created_at: dt.datetime | None = None,
) -> Path:
    """Write the signed bundle of ``wheels`` (the agent's own wheel among them) to ``out_path``, atomically,
    and check it reads back as valid against the signer's certificate."""
    out = Path(out_path)
    paths = [Path(w) for w in wheels]
    entries: dict[str, FileEntry] = {}
    for path in paths:
        name = f"wheels/{path.name}"
        if not _WHEEL_MEMBER.fullmatch(name):
            raise ReleaseError("format", f"{path} is not a wheel file name (<name>.whl)")
        if name in entries:
            raise ReleaseError("format", f"two wheels are named {path.name}")
        entries[name] = FileEntry(sha256_file(path), path.stat().st_size)
    when = (created_at or _utcnow()).astimezone(dt.UTC).replace(microsecond=0)
    manifest = Manifest(
        version=version,
        min_previous=min_previous,
        python_abi=python_abi or current_abi(),
        requires=f"{NAME}=={version}",
        created_at=when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        signer=signer.signer_id,
        install_bytes=INSTALL_FACTOR * sum(e.size for e in entries.values()),
        files=entries,
        platform=platform or current_platform(),
    )
    data = manifest.to_bytes()
    parse_manifest(data)  # our own output passes our own reader's rules (versions, one agent wheel)
    signature = signer.sign(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    mtime = int(when.timestamp())
    try:
        with open(tmp, "xb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _tar_member(tar, MANIFEST, io.BytesIO(data), len(data), mtime)
                _tar_member(tar, SIGNATURE, io.BytesIO(signature), len(signature), mtime)
                for path in sorted(paths, key=lambda p: p.name):
                    with open(path, "rb") as wheel:
                        _tar_member(
                            tar, f"wheels/{path.name}", wheel, entries[f"wheels/{path.name}"].size, mtime
                        )
            raw.flush()
            os.fsync(raw.fileno())
        verify_bundle(tmp, [signer.certificate])
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(out.parent)
    log.info("release.bundle.built", bundle=str(out), version=version, wheels=len(entries))
    return out
